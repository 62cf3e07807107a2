"""Slurm adapters: finished jobs from `sacct` text or slurmrestd JSON → usage records (docs/API.md#adapters).

One allocation row (never its steps) of a finished job gives one record:
- with GPUs: `resource` `gpu.<type>` (or `gpu` when the type is unknown or mixed), `unit`
  `gpu_hour`, quantity = GPUs × (End − Start) hours;
- without GPUs: `resource` `cpu`, `unit` `core_hour`, quantity = allocated CPUs × hours.
Quantities are rounded half-up to 6 decimals and emitted as decimal strings; `amount` (fen) is
`round_half_up(quantity × price)` from the rounded quantity. Counts come from AllocTRES, never
ReqTRES (ReqTRES misses GPUs that an exclusive allocation brought along).

`record_id` is `"{cluster}:{JobIDRaw}:{start epoch}"`: job ids wrap and requeued jobs keep their
id, the start tells the runs apart, and a re-pull of an overlapping window yields the same ids,
which ingest reports as duplicates.

Rows that give no record become `Skipped` with one of these reasons:
`step_row` (`.batch`, `.extern`, `.0`: the allocation row already counts them),
`array_placeholder` (`123_[1-3]`: tasks not yet split off), `not_ended` (pending, running,
suspended…: billed once they end), `never_started` (ended without a Start), `revoked` (a
federated sibling that ran elsewhere), `zero_duration` (Start == End, as Slurm records a job
cancelled while pending: nothing to bill, so no zero record is emitted), `no_allocation` (neither GPUs nor CPUs), `unmapped_tenant` (account
not in `[tenants]`), `no_price`, `duplicate_row` (same record_id twice in one input), `bad_row`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import requests

from adapters.base import Extracted, Skipped
from adapters.config import ConfigError, ProviderConfig, amount_for, round_quantity
from config.settings import child_environment

SHORT_FIELDS: tuple[str, ...] = tuple(
    "JobIDRaw,Account,User,Partition,AllocTRES,ElapsedRaw,Start,End,State".split(",")
)
"""What `SacctAdapter` asks sacct for (`--format`), and what `parse_sacct` assumes by default."""

XDMOD_FIELDS: tuple[str, ...] = tuple(
    "jobid,jobidraw,cluster,partition,qos,account,group,gid,user,uid,submit,eligible,start,end,"
    "elapsed,exitcode,state,nnodes,ncpus,reqcpus,reqmem,reqtres,alloctres,timelimit,nodelist,"
    "jobname".split(",")
)
"""Open XDMoD's sacct field list (shared/fixtures/slurm/xdmod/README.md)."""

DEFAULT_OVERLAP = timedelta(days=1)
DEFAULT_FIRST_PULL = timedelta(days=31)
DEFAULT_RESTD_VERSION = "v0.0.39"

# Base states of a job that has not finished yet (or whose row stands for a pending requeue).
ACTIVE_STATES = frozenset(
    "PENDING RUNNING SUSPENDED COMPLETING CONFIGURING REQUEUE_HOLD REQUEUE_FED RESV_DEL_HOLD "
    "SIGNALING STAGE_OUT STOPPED".split()
)
_MISSING_TIMES = frozenset({"", "unknown", "none", "n/a", "0"})
_FREE_TEXT_FIELDS = frozenset({"jobname", "comment", "constraints", "workdir", "submitline"})
_SACCT_TIME = "%Y-%m-%dT%H:%M:%S"


class SlurmError(RuntimeError):
    """sacct or slurmrestd could not be queried; the message carries what they said."""


class SacctFormatError(ValueError):
    """The sacct text's field list cannot be told (neither given nor recognisable)."""


@dataclass(frozen=True)
class GpuAllocation:
    """GPUs of one job: the total, and the GPU type when all of them are of one known type."""

    count: int
    type: str | None = None

    @property
    def resource(self) -> str:
        return f"gpu.{self.type}" if self.type else "gpu"


def parse_tres(text: str) -> dict[str, str]:
    """`"cpu=2,gres/gpu:a100=2,mem=4000M"` → `{"cpu": "2", "gres/gpu:a100": "2", ...}`."""
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"malformed TRES entry {part!r}")
        out[key.strip()] = value.strip()
    return out


def gpu_allocation(tres: str | Mapping[str, Any]) -> GpuAllocation:
    """GPUs in an AllocTRES string (or parsed mapping).

    Slurm lists the untyped total (`gres/gpu=4`) beside per-type counts (`gres/gpu:a100=4`)
    when both are tracked: they are the same GPUs, so the untyped total wins and typed
    entries only name the type. Without an untyped entry the typed counts add up.
    `gres/gpumem`, `gres/gpuutil`, `gres/shard` and `gres/mps` are not GPUs.
    """
    entries = parse_tres(tres) if isinstance(tres, str) else tres
    untyped: int | None = None
    typed: dict[str, int] = {}
    for key, value in entries.items():
        if key == "gres/gpu":
            untyped = _int(value)
        elif key.startswith("gres/gpu:"):
            count = _int(value)
            if count > 0:
                name = key.removeprefix("gres/gpu:").lower()
                typed[name] = typed.get(name, 0) + count
    typed_total = sum(typed.values())
    total = untyped if untyped is not None else typed_total
    kind = next(iter(typed)) if len(typed) == 1 and typed_total == total else None
    return GpuAllocation(total, kind if total > 0 else None)


def pull_window(
    last_end: datetime | None,
    now: datetime,
    overlap: timedelta = DEFAULT_OVERLAP,
    first_pull: timedelta = DEFAULT_FIRST_PULL,
) -> tuple[datetime, datetime]:
    """The [start, end) window for the next pull, in UTC.

    It reaches `overlap` back before the previous window's end, so jobs whose accounting
    arrived late (slurmdbd down, long jobs) are still seen; their record_ids make the
    overlap come back as duplicates. The first pull reaches back `first_pull`.
    """
    if now.tzinfo is None or (last_end is not None and last_end.tzinfo is None):
        raise ValueError("pull_window needs timezone-aware datetimes")
    start = last_end - overlap if last_end is not None else now - first_pull
    return min(start, now).astimezone(UTC), now.astimezone(UTC)


# --- the common row → record step -------------------------------------------------------------


@dataclass
class _Job:
    """One accounting row, whatever its source, before the billing rules are applied."""

    job_id: str  # JobIDRaw: the id slurmdbd keys the row on
    account: str
    user: str
    partition: str
    state: str  # base state, upper case, without "by <uid>"
    start: datetime | None
    end: datetime | None
    tres: Mapping[str, Any]
    cpus_fallback: int | None = None  # NCPUS, for old rows without AllocTRES
    line: int | None = None
    where: str = ""


def _int(value: Any) -> int:
    if isinstance(value, Mapping):  # slurmrestd v0.0.40 numbers: {"set", "infinite", "number"}
        if not value.get("set", True) or value.get("infinite"):
            raise ValueError(f"no number in {value!r}")
        value = value.get("number")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"not a count: {value!r}")
    return int(text)


def _hours_quantity(count: int, seconds: int) -> Decimal:
    return round_quantity(Decimal(count * seconds) / Decimal(3600))


def _quantity_str(quantity: Decimal) -> str:
    text = format(quantity, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _base_state(raw: str) -> str:
    # "CANCELLED by 1234" → "CANCELLED"; a truncated "CANCELLED+" → "CANCELLED"
    words = raw.strip().split()
    return words[0].rstrip("+").upper() if words else ""


def _job_to_record(job: _Job, config: ProviderConfig) -> dict[str, Any] | Skipped:
    def skip(reason: str, detail: str = "", tenant: str | None = None) -> Skipped:
        text = f"{job.where}job {job.job_id}" + (f": {detail}" if detail else "")
        return Skipped(reason, text, job.line, tenant)

    if job.state in ACTIVE_STATES or job.end is None:
        return skip("not_ended", job.state or "no end time")
    if job.state == "REVOKED":
        return skip("revoked", "federated sibling; it ran on another cluster")
    if job.start is None:
        return skip("never_started", job.state)
    seconds = int((job.end - job.start).total_seconds())
    if seconds < 0:
        return skip("bad_row", "End before Start")
    if seconds == 0:
        return skip("zero_duration")
    try:
        gpus = gpu_allocation(job.tres)
        cpus = _int(job.tres["cpu"]) if "cpu" in job.tres else (job.cpus_fallback or 0)
    except ValueError as exc:
        return skip("bad_row", f"AllocTRES: {exc}")
    if gpus.count > 0:
        resource, unit, quantity = gpus.resource, "gpu_hour", _hours_quantity(gpus.count, seconds)
    elif cpus > 0:
        resource, unit, quantity = "cpu", "core_hour", _hours_quantity(cpus, seconds)
    else:
        return skip("no_allocation", "neither GPUs nor CPUs in AllocTRES")
    uscc = config.uscc_for(job.account)
    if uscc is None:
        return skip("unmapped_tenant", f"account {job.account!r}", tenant=job.account)
    price = config.price_for(resource)
    if price is None:
        return skip("no_price", f"no price for {resource!r}", tenant=job.account)
    start_epoch = int(job.start.timestamp())
    return {
        "record_id": f"{config.cluster}:{job.job_id}:{start_epoch}",
        "enterprise_uscc": uscc,
        "resource": resource,
        "unit": unit,
        "quantity": _quantity_str(quantity),
        "started_at": _iso(job.start),
        "ended_at": _iso(job.end),
        "amount": amount_for(quantity, price),
        "currency": "CNY",
        "metadata": {
            "job_id": job.job_id,
            "partition": job.partition,
            "user": job.user,
            "cluster": config.cluster,
            "state": job.state,
        },
    }


def _collect(items: Iterable[dict[str, Any] | Skipped]) -> Extracted:
    out = Extracted()
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Skipped):
            out.skipped.append(item)
        elif item["record_id"] in seen:
            out.skipped.append(Skipped("duplicate_row", f"record {item['record_id']} again"))
        else:
            seen.add(item["record_id"])
            out.records.append(item)
    return out


# --- sacct ------------------------------------------------------------------------------------


def _sacct_time(text: str, zone: ZoneInfo) -> datetime | None:
    text = text.strip()
    if text.lower() in _MISSING_TIMES:
        return None
    if text.isdigit():  # SLURM_TIME_FORMAT=%s
        return datetime.fromtimestamp(int(text), UTC)
    return datetime.strptime(text, _SACCT_TIME).replace(tzinfo=zone)


def _detect_fields(first: list[str]) -> tuple[list[str], bool]:
    """The field list for sacct text whose first row is `first`; True when it is a header."""
    lowered = [c.strip().lower() for c in first]
    if "state" in lowered and ("jobidraw" in lowered or "jobid" in lowered):
        return lowered, True
    if len(first) == len(SHORT_FIELDS):
        return [f.lower() for f in SHORT_FIELDS], False
    if len(first) >= len(XDMOD_FIELDS):
        return list(XDMOD_FIELDS), False
    raise SacctFormatError(
        f"cannot tell the sacct field list from {len(first)} columns; expected "
        f"{len(SHORT_FIELDS)} ({','.join(SHORT_FIELDS)}) or {len(XDMOD_FIELDS)} (Open XDMoD's)"
    )


def _sacct_row(cols: list[str], fields: list[str], zone: ZoneInfo, lineno: int) -> _Job | Skipped:
    if len(cols) > len(fields) and fields[-1] in _FREE_TEXT_FIELDS:
        # --parsable2 does not escape "|" inside a job name; it can only be the last field
        cols = cols[: len(fields) - 1] + ["|".join(cols[len(fields) - 1 :])]
    if len(cols) != len(fields):
        return Skipped("bad_row", f"{len(cols)} columns, expected {len(fields)}", lineno)
    row = dict(zip(fields, cols, strict=True))
    job_id = row.get("jobidraw") or row.get("jobid") or ""
    shown_id = row.get("jobid", job_id)
    if not job_id:
        return Skipped("bad_row", "no JobIDRaw", lineno)
    if "." in job_id or "." in shown_id:
        return Skipped("step_row", f"step {shown_id}", lineno)
    if "_[" in shown_id or "_[" in job_id:
        return Skipped("array_placeholder", f"pending array tasks {shown_id}", lineno)
    if "state" not in row:
        return Skipped("bad_row", "no State column", lineno)
    try:
        start = _sacct_time(row.get("start", ""), zone)
        end = _sacct_time(row.get("end", ""), zone)
        tres = parse_tres(row.get("alloctres", ""))
        ncpus = row.get("ncpus") or row.get("alloccpus")
        cpus_fallback = _int(ncpus) if ncpus else None
    except ValueError as exc:
        return Skipped("bad_row", f"job {job_id}: {exc}", lineno)
    return _Job(
        job_id=job_id,
        account=row.get("account", ""),
        user=row.get("user", ""),
        partition=row.get("partition", ""),
        state=_base_state(row["state"]),
        start=start,
        end=end,
        tres=tres,
        cpus_fallback=cpus_fallback,
        line=lineno,
    )


def parse_sacct(
    text: str,
    config: ProviderConfig,
    fields: Sequence[str] | None = None,
    *,
    timezone: str | None = None,
) -> Extracted:
    """Records from `sacct --parsable2` output (with or without `--noheader`, `-X`, steps).

    `fields` is the `--format` list, case-insensitive. Without it a header line is used if
    present, else the column count decides: 9 → `SHORT_FIELDS`, 26 → `XDMOD_FIELDS`
    (`SacctFormatError` otherwise). Times are read in `timezone` (default: the provider's
    `timezone`, itself `UTC` by default, as `TZ=UTC sacct` prints them).
    Every non-blank line becomes a record or a `Skipped`.
    """
    zone = ZoneInfo(timezone or config.timezone or "UTC")
    names = [f.strip().lower() for f in fields] if fields else None

    def items() -> Iterable[dict[str, Any] | Skipped]:
        nonlocal names
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            cols = line.split("|")
            if names is None:
                names, is_header = _detect_fields(cols)
                if is_header:
                    continue
            elif [c.strip().lower() for c in cols] == names:
                continue  # a header line matching the given field list
            row = _sacct_row(cols, names, zone, lineno)
            yield row if isinstance(row, Skipped) else _job_to_record(row, config)

    return _collect(items())


def sacct_command(
    start: datetime, end: datetime, *, sacct: str = "sacct", extra: Sequence[str] = ()
) -> list[str]:
    """The sacct invocation for [start, end) (run it with TZ=UTC: the times are UTC)."""
    return [
        sacct,
        "-a",
        "-P",
        "-X",
        "--noheader",
        "--duplicates",
        f"--format={','.join(SHORT_FIELDS)}",
        "-S",
        start.astimezone(UTC).strftime(_SACCT_TIME),
        "-E",
        end.astimezone(UTC).strftime(_SACCT_TIME),
        *extra,
    ]


class SacctAdapter:
    """Pulls finished jobs by running `sacct` on this machine.

    Settings (`[adapter]`): `sacct` (the binary, default `sacct` on PATH), `slurm_conf`
    (exported as SLURM_CONF), `sacct_args` (extra arguments, e.g. `["-M", "jx-hpc"]`),
    `timeout` (seconds, default 300). sacct runs with TZ=UTC, so `timezone` does not apply.
    """

    def __init__(self, config: ProviderConfig, *, runner: Any = subprocess.run) -> None:
        self.config = config
        self._run = runner

    def command(self, start: datetime, end: datetime) -> list[str]:
        s = self.config.settings
        return sacct_command(
            start, end, sacct=str(s.get("sacct", "sacct")), extra=list(s.get("sacct_args", []))
        )

    def environment(self) -> dict[str, str]:
        env = child_environment(TZ="UTC")
        env.pop("SLURM_TIME_FORMAT", None)  # we parse sacct's default ISO times
        if self.config.settings.get("slurm_conf"):
            env["SLURM_CONF"] = str(self.config.settings["slurm_conf"])
        return env

    def extract(self, start: datetime, end: datetime) -> Extracted:
        cmd = self.command(start, end)
        try:
            proc = self._run(
                cmd,
                env=self.environment(),
                capture_output=True,
                text=True,
                timeout=float(self.config.settings.get("timeout", 300)),  # float ok: seconds, not money
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{cmd[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise SlurmError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return parse_sacct(proc.stdout, self.config, SHORT_FIELDS, timezone="UTC")


# --- slurmrestd -------------------------------------------------------------------------------


def _epoch(value: Any) -> datetime | None:
    """slurmrestd times: an epoch int (v0.0.38/39) or `{"set", "number"}` (v0.0.40); 0 = unset."""
    if value is None:
        return None
    try:
        number = _int(value)
    except ValueError:
        return None
    return datetime.fromtimestamp(number, UTC) if number > 0 else None


def _restd_state(job: Mapping[str, Any]) -> str:
    state = job.get("state")
    current = state.get("current") if isinstance(state, Mapping) else state
    if isinstance(current, list):  # v0.0.39+: ["COMPLETED"], flags may follow the base state
        current = current[0] if current else ""
    return _base_state(str(current or ""))


def _restd_tres(job: Mapping[str, Any]) -> dict[str, Any]:
    tres = job.get("tres") or {}
    allocated = tres.get("allocated") if isinstance(tres, Mapping) else None
    out: dict[str, Any] = {}
    for entry in allocated or []:
        kind, name = entry.get("type") or "", entry.get("name") or ""
        key = f"{kind}/{name}" if name else kind
        out[key] = entry.get("count", 0)
    return out


def _restd_row(job: Mapping[str, Any], index: int) -> _Job | Skipped:
    where = f"jobs[{index}] "
    try:
        job_id = str(_int(job.get("job_id")))
    except ValueError:
        return Skipped("bad_row", f"{where}no job_id")
    array = job.get("array") if isinstance(job.get("array"), Mapping) else {}
    task = array.get("task")
    try:
        task_id = _int(array.get("task_id")) if array.get("task_id") is not None else None
    except ValueError:
        task_id = None
    if task and task_id is None:
        return Skipped("array_placeholder", f"{where}job {job_id}: pending tasks {task}")
    times = job.get("time") if isinstance(job.get("time"), Mapping) else {}
    try:
        tres = _restd_tres(job)
    except (ValueError, AttributeError) as exc:
        return Skipped("bad_row", f"{where}job {job_id}: {exc}")
    return _Job(
        job_id=job_id,
        account=str(job.get("account") or ""),
        user=str(job.get("user") or ""),
        partition=str(job.get("partition") or ""),
        state=_restd_state(job),
        start=_epoch(times.get("start")),
        end=_epoch(times.get("end")),
        tres=tres,
        where=where,
    )


def parse_slurmrestd(body: Mapping[str, Any] | Sequence[Any], config: ProviderConfig) -> Extracted:
    """Records from a slurmrestd `/slurmdb/v0.0.38…40/jobs` reply (or its `jobs` list).

    Each job is the allocation; its `steps` are never counted. Times are epochs (UTC).
    """
    jobs = body.get("jobs", []) if isinstance(body, Mapping) else body

    def items() -> Iterable[dict[str, Any] | Skipped]:
        for index, job in enumerate(jobs):
            if not isinstance(job, Mapping):
                yield Skipped("bad_row", f"jobs[{index}] is not an object")
                continue
            row = _restd_row(job, index)
            yield row if isinstance(row, Skipped) else _job_to_record(row, config)

    return _collect(items())


class SlurmrestdAdapter:
    """Pulls finished jobs from slurmrestd's accounting endpoint.

    Settings (`[adapter]`): `url` (e.g. `http://slurm-rest:6820`), `api_version` (default
    `v0.0.39`), `token_env` (names the variable holding the JWT for X-SLURM-USER-TOKEN),
    `user_name` (X-SLURM-USER-NAME, when the token is not bound to a user), `timeout`.
    """

    def __init__(self, config: ProviderConfig, *, session: Any = None) -> None:
        if not config.settings.get("url"):
            raise ConfigError(f"{config.path or config.provider_id}: [adapter.url] missing")
        self.config = config
        self._session = session

    def url(self) -> str:
        version = self.config.settings.get("api_version", DEFAULT_RESTD_VERSION)
        return f"{str(self.config.settings['url']).rstrip('/')}/slurmdb/{version}/jobs"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.bearer_token()
        if token:
            headers["X-SLURM-USER-TOKEN"] = token
        if self.config.settings.get("user_name"):
            headers["X-SLURM-USER-NAME"] = str(self.config.settings["user_name"])
        return headers

    def extract(self, start: datetime, end: datetime) -> Extracted:
        get = self._session.get if self._session is not None else requests.get
        # "uts<epoch>" is Slurm's time syntax for an epoch: no server time zone involved.
        params = {
            "start_time": f"uts{int(start.timestamp())}",
            "end_time": f"uts{int(end.timestamp())}",
        }
        try:
            resp = get(
                self.url(),
                headers=self.headers(),
                params=params,
                timeout=float(self.config.settings.get("timeout", 60)),  # float ok: seconds, not money
            )
        except requests.RequestException as exc:
            raise SlurmError(f"slurmrestd {self.url()}: {exc}") from exc
        if resp.status_code != 200:
            raise SlurmError(f"slurmrestd {self.url()}: HTTP {resp.status_code}: {resp.text[:500]}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise SlurmError(f"slurmrestd {self.url()}: reply is not JSON") from exc
        errors = body.get("errors") if isinstance(body, Mapping) else None
        if errors:
            raise SlurmError(f"slurmrestd {self.url()}: {errors}")
        return parse_slurmrestd(body, self.config)
