"""A throw-away single-node Slurm with accounting, for the Slurm adapters' integration tests.

`SlurmCluster(root)` writes slurm.conf, gres.conf and slurmdbd.conf under `root`, creates a
database of its own on the local MariaDB (127.0.0.1:3306, root without password), and starts
slurmdbd, slurmctld and slurmd on free ports with state, pid and log files under `root`, so it
runs beside a system Slurm or another harness. munge is the machine's: Slurm's client commands
only use munge's default socket (munged is started, as user munge, if it is not running).
`stop()` cancels the jobs, stops the daemons it started (by their pids) and drops its database.

    with SlurmCluster(tmp_path) as cluster:       # about 6 s
        workload = cluster.run_workload()         # real jobs, about 25 s; cached
        url = cluster.start_slurmrestd()          # http://127.0.0.1:PORT, about 1 s

The expectations (`Workload.runs`) come from what was submitted (GPUs and CPUs requested) and
sacct's ElapsedRaw and epoch Start, never from the Start/End strings the adapter parses. A
daemon that dies or a wait that times out raises `HarnessError` with the daemons' log tails.
Needs root. `python -m tests.integration.slurm_harness` re-captures tests/fixtures/slurm/.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Self

from adapters.config import ProviderConfig
from adapters.slurm import SHORT_FIELDS

REPO_ROOT = Path(__file__).resolve().parents[2]
ENSURE_SCRIPT = REPO_ROOT / "scripts" / "ensure-slurm.sh"
NEEDED_BINARIES = (
    "munged",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "slurmrestd",
    "sacctmgr",
    "sacct",
    "sbatch",
    "scontrol",
    "mysql",
)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

CLUSTER_NAME = "cvtest"
GPU_TYPE = "a100"
GPUS_ON_NODE = 4
NODE_CPUS = 4  # whatever this machine has (SlurmdParameters=config_overrides): jobs only sleep
ACCOUNTS = ("ent-a", "ent-b", "lab-x")  # give tests no tenant for lab-x: "unmapped"
RESTD_API = "v0.0.38"  # what Debian 12's slurmrestd 22.05 serves
MUNGE_SOCKET_DIR = Path("/run/munge")
SACCT_TIME = "%Y-%m-%dT%H:%M:%S"


class HarnessError(RuntimeError):
    """The test cluster could not be brought up or did not do what was asked."""


def ensure_installed() -> None:
    """Install Slurm with scripts/ensure-slurm.sh when a binary is missing (fails, never skips)."""
    if all(shutil.which(b, path=SEARCH_PATH) for b in NEEDED_BINARIES):
        return
    proc = subprocess.run(["sh", str(ENSURE_SCRIPT)], check=False, capture_output=True, text=True)
    missing = [b for b in NEEDED_BINARIES if not shutil.which(b, path=SEARCH_PATH)]
    if proc.returncode != 0 or missing:
        raise HarnessError(
            f"Slurm is not installed ({', '.join(missing)} missing) and {ENSURE_SCRIPT} "
            f"failed ({proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
        )


@dataclass(frozen=True)
class JobRun:
    """One accounting row the adapter must bill: a job, an array task or one requeued run."""

    label: str
    job_id_raw: str
    account: str
    gpus: int  # as requested with --gres=gpu:a100:N
    cpus: int  # as requested with -c (SelectTypeParameters=CR_CPU allocates exactly that)
    start_epoch: int
    elapsed: int  # sacct ElapsedRaw, seconds
    state: str

    @property
    def resource(self) -> str:
        return f"gpu.{GPU_TYPE}" if self.gpus else "cpu"

    @property
    def unit(self) -> str:
        return "gpu_hour" if self.gpus else "core_hour"

    @property
    def unit_seconds(self) -> int:
        """GPU-seconds (GPU jobs) or core-seconds (CPU jobs)."""
        return (self.gpus or self.cpus) * self.elapsed

    @property
    def quantity(self) -> Decimal:
        hours = Decimal(self.unit_seconds) / Decimal(3600)
        return hours.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


@dataclass
class Workload:
    """What `SlurmCluster.run_workload` did and what sacct then said."""

    sacct_text: str  # TZ=UTC sacct -a -P -X --noheader --duplicates --format=SHORT_FIELDS
    sacct_steps_text: str  # the same without -X: step rows included
    runs: list[JobRun]  # rows that must become records
    unmapped: list[str]  # job ids of account lab-x
    not_ended: list[str]  # job ids still running or pending when sacct_text was taken
    zero_duration: list[str]  # cancelled while pending: Slurm sets its Start to its End
    window: tuple[datetime, datetime]  # the -S/-E window of sacct_text (UTC)
    job_ids: dict[str, str] = field(default_factory=dict)  # label -> sbatch job id

    def to_json(self) -> dict[str, Any]:
        """The expectations, as in tests/fixtures/slurm/own-cluster.expected.json."""
        return {
            "format": list(SHORT_FIELDS),
            "window": [t.isoformat() for t in self.window],
            "runs": [asdict(r) for r in self.runs],
            "unmapped": self.unmapped,
            "not_ended": self.not_ended,
            "zero_duration": self.zero_duration,
            "job_ids": self.job_ids,
        }


def expected_records(runs: Iterable[JobRun], config: ProviderConfig) -> list[dict[str, Any]]:
    """The records the adapter must produce for `runs`, computed without the adapter.

    Fields: record_id, enterprise_uscc, resource, unit, quantity (decimal string), started_at,
    ended_at, amount, currency — compare with `{k: r[k] for k in these}` of adapter records, or
    use them to check what ingest stored.
    """
    out = []
    for run in runs:
        price = config.prices.get(run.resource, config.prices.get(run.resource.split(".")[0]))
        if price is None:
            raise ValueError(f"no price for {run.resource} in the test config")
        amount = int((run.quantity * price).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        end_epoch = run.start_epoch + run.elapsed
        out.append(
            {
                "record_id": f"{config.cluster}:{run.job_id_raw}:{run.start_epoch}",
                "enterprise_uscc": config.tenants[run.account],
                "resource": run.resource,
                "unit": run.unit,
                "quantity": format(run.quantity.normalize(), "f"),
                "started_at": datetime.fromtimestamp(run.start_epoch, UTC).isoformat(),
                "ended_at": datetime.fromtimestamp(end_epoch, UTC).isoformat(),
                "amount": amount,
                "currency": "CNY",
            }
        )
    return out


# The billed jobs: label -> (account, GPUs, CPUs, extra sbatch arguments, script).
JOBS: dict[str, tuple[str, int, int, str, str]] = {
    "gpu2": ("ent-a", 2, 1, "", "sleep 4"),
    "gpu1": ("ent-b", 1, 1, "", "sleep 3"),
    "cpu2": ("ent-a", 0, 2, "", "sleep 3"),
    "array": ("ent-b", 1, 1, "--array=1-3", "sleep 2"),
    "steps": ("ent-a", 2, 1, "", "srun -n1 sleep 1 && srun -n1 sleep 1"),
    "unmapped": ("lab-x", 1, 1, "", "sleep 1"),
}
REQUEUE = ("ent-b", 3, 1)  # runs ~2 s, is requeued, then runs 2 s again
EXPECTED_ROWS = {"gpu2": 1, "gpu1": 1, "cpu2": 1, "array": 3, "steps": 1, "requeue": 2}


class SlurmCluster:
    """slurmdbd + slurmctld + slurmd (+ slurmrestd on demand) on this host, under `root`."""

    def __init__(self, root: Path, *, cluster_name: str = CLUSTER_NAME) -> None:
        self.root = Path(root)
        self.cluster_name = cluster_name
        self.host = socket.gethostname().split(".")[0]
        self.conf_dir = self.root / "etc"
        self.conf_path = self.conf_dir / "slurm.conf"
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "log"
        self.job_dir = self.root / "jobs"
        suffix = secrets.token_hex(4)
        self.db_name = self.db_user = f"cv_slurm_{suffix}"
        self.db_pass = secrets.token_hex(12)
        self.ctld_port, self.slurmd_port, self.dbd_port = _free_ports(3)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._db_created = False
        self._workload: Workload | None = None
        self._restd: tuple[str, _UnixForwarder, Path] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()  # a test run inside a Slurm job must not leak in
            if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))
        }
        return env | {"SLURM_CONF": str(self.conf_path), "TZ": "UTC", "PATH": SEARCH_PATH}

    def start(self) -> None:
        ensure_installed()
        for name in ("etc", "run", "log", "jobs", "state", "spool", "dev"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._create_database()
        self._write_configs()
        self._start_munged()
        self._start("slurmdbd", ["slurmdbd", "-D"])
        self._wait(lambda: self._ok("sacctmgr -n -P list cluster"), 60, "slurmdbd to answer")
        self.run(f"sacctmgr -i add cluster {self.cluster_name}")
        for account in ACCOUNTS:
            self.run(f"sacctmgr -i add account {account} cluster={self.cluster_name}")
        self.run(
            f"sacctmgr -i add user root account={','.join(ACCOUNTS)} "
            f"defaultaccount={ACCOUNTS[0]} cluster={self.cluster_name}"
        )
        self._start("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait(lambda: "UP" in self._out("scontrol ping"), 60, "slurmctld to answer")
        self._start("slurmd", ["slurmd", "-D", "-N", self.host])
        self._wait(self._node_idle, 60, f"node {self.host} to be idle")

    def stop(self) -> None:
        if self._restd:
            self._restd[1].close()
            shutil.rmtree(self._restd[2], ignore_errors=True)
            self._restd = None
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._ok("scancel --full -u root")
            self._wait_quietly(lambda: not self._out("squeue -h -o %i").strip(), 15)
        for name in ("slurmrestd", "slurmd", "slurmctld", "slurmdbd", "munged"):
            proc = self._procs.pop(name, None)
            if proc:
                _terminate(proc)
        if self._db_created:
            self._mysql(
                f"DROP DATABASE IF EXISTS `{self.db_name}`; DROP USER IF EXISTS "
                f"'{self.db_user}'@'localhost', '{self.db_user}'@'127.0.0.1';",
                check=False,
            )
            self._db_created = False

    # --- commands ----------------------------------------------------------------------------

    def run(self, cmd: str | list[str], *, env: dict[str, str] | None = None) -> str:
        """Run a Slurm client command against this cluster; its stdout, or HarnessError."""
        args = shlex.split(cmd) if isinstance(cmd, str) else cmd
        proc = subprocess.run(
            args,
            env=env or self.env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.job_dir,
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"{shlex.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}{self._logs()}"
            )
        return proc.stdout

    def sacct(self, start: datetime, end: datetime, *, steps: bool = False) -> str:
        """`TZ=UTC sacct -a -P [-X] --noheader --duplicates --format=SHORT_FIELDS -S -E`."""
        return self.run(
            [
                "sacct",
                "-a",
                "-P",
                *([] if steps else ["-X"]),
                "--noheader",
                "--duplicates",
                f"--format={','.join(SHORT_FIELDS)}",
                "-S",
                start.astimezone(UTC).strftime(SACCT_TIME),
                "-E",
                end.astimezone(UTC).strftime(SACCT_TIME),
            ]
        )

    def sbatch(
        self, label: str, account: str, gpus: int, cpus: int, extra: str, script: str
    ) -> str:
        gres = [f"--gres=gpu:{GPU_TYPE}:{gpus}"] if gpus else []
        out = self.run(
            [
                "sbatch",
                "--parsable",
                "-o",
                str(self.job_dir / "%j.out"),
                "-J",
                label,
                "-A",
                account,
                "-c",
                str(cpus),
                *gres,
                *shlex.split(extra),
                "--wrap",
                script,
            ]
        )
        return out.strip().split(";")[0]

    def provider_config(
        self, tenants: dict[str, str], prices: dict[str, int], *, provider_id: str = "cvtest"
    ) -> ProviderConfig:
        """A sacct provider config pointing at this cluster (SLURM_CONF via `slurm_conf`)."""
        return ProviderConfig(
            provider_id=provider_id,
            type="sacct",
            cluster=self.cluster_name,
            settings={"slurm_conf": str(self.conf_path)},
            tenants=dict(tenants),
            prices=dict(prices),
        )

    def start_slurmrestd(self) -> str:
        """Start slurmrestd and return its base URL (`http://127.0.0.1:PORT`; API `RESTD_API`).

        Debian's Slurm has no auth/jwt, so slurmrestd runs with rest_auth/local: as user
        nobody (it refuses root) on a unix socket, which accepts root's connections; a small
        TCP forwarder gives HTTP clients (requests) a URL. Token headers are ignored.
        """
        if self._restd:
            return self._restd[0]
        public = Path(tempfile.mkdtemp(prefix="cv-slurmrestd-"))
        public.chmod(0o755)  # nobody must read slurm.conf; `root` itself is private
        for name in ("slurm.conf", "gres.conf"):
            shutil.copy(self.conf_dir / name, public / name)
            (public / name).chmod(0o644)
        nobody = pwd.getpwnam("nobody")
        sock_dir = public / "sock"
        sock_dir.mkdir()
        os.chown(sock_dir, nobody.pw_uid, nobody.pw_gid)
        sock = sock_dir / "slurmrestd.socket"
        self._start(
            "slurmrestd",
            ["slurmrestd", "-a", "rest_auth/local", "-s", f"openapi/db{RESTD_API}", f"unix:{sock}"],
            env=self.env | {"SLURM_CONF": str(public / "slurm.conf")},
            user=nobody.pw_uid,
            group=nobody.pw_gid,
        )
        forwarder = _UnixForwarder(sock)
        url = f"http://127.0.0.1:{forwarder.port}"
        self._restd = (url, forwarder, public)

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/openapi/v3", timeout=10) as resp:
                    return resp.status == 200
            except urllib.error.HTTPError:
                return True  # an HTTP answer, even an error, means it is serving
            except OSError:
                return False

        self._wait(answers, 30, "slurmrestd to answer")
        return url

    # --- the workload ------------------------------------------------------------------------

    def run_workload(self) -> Workload:
        """Submit real jobs, wait until they ended, and return sacct's view of them (cached).

        GPU jobs with --gres=gpu:a100:N, a CPU-only job, a job array, a job with srun steps,
        a job requeued while running (two rows, one JobIDRaw), a job of an unmapped account;
        and, when sacct is read, one job running, one pending, a pending array and one job
        cancelled while pending. About 25 s.
        """
        if self._workload is not None:
            return self._workload
        begin = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        ids: dict[str, str] = {}
        # Requeued first, so that it runs at once and is requeued while the rest wait.
        rerun = 'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then sleep 2; else sleep 60; fi'
        ids["requeue"] = self.sbatch("requeue", *REQUEUE, "--requeue", rerun)
        self._wait(lambda: self._squeue_state(ids["requeue"]) == "RUNNING", 60, "job to run")
        time.sleep(2)
        self.run(f"scontrol requeue {ids['requeue']}")
        for label, spec in JOBS.items():
            ids[label] = self.sbatch(label, *spec)
        self._wait(lambda: self._all_ended(ids.values()), 120, "the jobs to end in sacct")

        # Unfinished when sacct is read: one running; one pending behind it (it wants every
        # CPU); an array waiting behind that (a `_[1-3]` placeholder row); and one cancelled
        # while pending (ended, never started: Slurm gives it Start = End).
        # It must outlive the whole test session (stop() cancels it): were it to end, the jobs
        # queued behind it would run and finish inside the pull windows the tests compare.
        ids["running"] = self.sbatch("running", "ent-a", 0, 1, "", "sleep 7200")
        self._wait(lambda: self._squeue_state(ids["running"]) == "RUNNING", 60, "job to run")
        ids["pending"] = self.sbatch("pending", "ent-b", 1, NODE_CPUS, "", "sleep 1")
        ids["pending_array"] = self.sbatch("pending_array", "ent-a", 0, 1, "--array=1-3", "true")
        ids["cancelled"] = self.sbatch("cancelled", "ent-a", 0, NODE_CPUS, "", "sleep 1")
        self.run(f"scancel {ids['cancelled']}")
        last = {
            ids["running"]: "RUNNING",
            ids["pending"]: "PENDING",
            ids["pending_array"]: "PENDING",
            ids["cancelled"]: "CANCELLED",
        }
        self._wait(lambda: self._sacct_states(last) == last, 60, "sacct to show unfinished jobs")

        end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
        text = self.sacct(begin, end)
        steps_text = self.sacct(begin, end, steps=True)
        facts = self._facts(ids.values())
        shapes = {label: spec[:3] for label, spec in JOBS.items()} | {"requeue": REQUEUE}
        runs = [
            JobRun(
                label, row["raw"], account, gpus, cpus, row["start"], row["elapsed"], row["state"]
            )
            for label, (account, gpus, cpus) in shapes.items()
            if label != "unmapped"
            for row in facts.get(ids[label], [])
        ]
        self._check_shape(runs, ids)
        self._workload = Workload(
            sacct_text=text,
            sacct_steps_text=steps_text,
            runs=runs,
            unmapped=[r["raw"] for r in facts[ids["unmapped"]]],
            not_ended=[ids["running"], ids["pending"], ids["pending_array"]],
            zero_duration=[ids["cancelled"]],
            window=(begin, end),
            job_ids=ids,
        )
        return self._workload

    def _facts(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Per submitted id: its finished allocation rows (array tasks, requeued runs)."""
        out = self.run(
            [
                "sacct",
                "-a",
                "-P",
                "-X",
                "--noheader",
                "--duplicates",
                "--format=JobID,JobIDRaw,Start,ElapsedRaw,State",
                "-j",
                ",".join(job_ids),
            ],
            env=self.env | {"SLURM_TIME_FORMAT": "%s"},
        )
        facts: dict[str, list[dict[str, Any]]] = {}
        for line in out.splitlines():
            job_id, raw, start, elapsed, state = line.split("|")
            state = state.split()[0]
            if start.isdigit() and state not in ("PENDING", "RUNNING"):
                row = {"raw": raw, "start": int(start), "elapsed": int(elapsed), "state": state}
                facts.setdefault(job_id.split("_")[0], []).append(row)
        return facts

    def _check_shape(self, runs: list[JobRun], ids: dict[str, str]) -> None:
        got = {label: sum(r.label == label for r in runs) for label in EXPECTED_ROWS}
        if got != EXPECTED_ROWS:
            raise HarnessError(
                f"accounting rows per job {got}, expected {EXPECTED_ROWS}; "
                f"job ids {ids}{self._logs()}"
            )
        for run in runs:
            if run.elapsed <= 0:
                raise HarnessError(f"job {run.job_id_raw} ({run.label}) ran 0 s{self._logs()}")

    def _all_ended(self, job_ids: Iterable[str]) -> bool:
        """sacct (latest run of each job, every array task) shows every job finished."""
        wanted = set(job_ids)
        out = self._out(
            [
                "sacct",
                "-a",
                "-P",
                "-X",
                "--noheader",
                "--format=JobID,State",
                "-j",
                ",".join(wanted),
            ]
        )
        rows = [line.split("|") for line in out.splitlines() if "|" in line]
        seen = {job_id.split("_")[0] for job_id, _ in rows}
        states = {state.split()[0] if state else "" for _, state in rows}
        unfinished = {"", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING"}
        return wanted <= seen and not states & unfinished

    def _sacct_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        out = self._out(
            [
                "sacct",
                "-a",
                "-P",
                "-X",
                "--noheader",
                "--format=JobIDRaw,State",
                "-j",
                ",".join(job_ids),
            ]
        )
        rows = [line.split("|") for line in out.splitlines() if "|" in line]
        return {raw: state.split()[0] for raw, state in rows if state}

    def _squeue_state(self, job_id: str) -> str:
        out = self._out(["squeue", "-h", "-j", job_id, "-o", "%T"]).strip()
        return out.splitlines()[0] if out else ""

    def _node_idle(self) -> bool:
        state = self._out(["sinfo", "-h", "-n", self.host, "-o", "%T"]).strip()
        if state.startswith(("drain", "down", "fail")):
            reason = self._out(["sinfo", "-h", "-R", "-n", self.host])
            raise HarnessError(f"node {self.host} is {state}: {reason}{self._logs()}")
        return state == "idle"

    # --- plumbing ----------------------------------------------------------------------------

    def _ok(self, cmd: str) -> bool:
        try:
            return (
                subprocess.run(
                    shlex.split(cmd), env=self.env, check=False, capture_output=True, timeout=30
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _out(self, cmd: str | list[str]) -> str:
        args = shlex.split(cmd) if isinstance(cmd, str) else cmd
        try:
            proc = subprocess.run(
                args, env=self.env, check=False, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout if proc.returncode == 0 else ""

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if check():
                return
            time.sleep(0.5)
        raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}{self._logs()}")

    @staticmethod
    def _wait_quietly(check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not check():
            time.sleep(0.5)

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode}{self._logs(name)}")

    def _logs(self, first: str | None = None) -> str:
        names = ["munged", "slurmdbd", "slurmctld", "slurmd", "slurmrestd"]
        names.sort(key=lambda n: n != first)
        return "".join(
            f"\n--- {path} (tail) ---\n{_file_tail(path)}"
            for name in names
            for path in (self.log_dir / f"{name}.log", self.log_dir / f"{name}.out")
            if path.exists() and path.stat().st_size
        )

    def _start(
        self,
        name: str,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        user: int | str | None = None,
        group: int | str | None = None,
    ) -> None:
        with (self.log_dir / f"{name}.out").open("wb") as out:
            self._procs[name] = subprocess.Popen(
                cmd,
                env=env or self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
                user=user,
                group=group,
            )

    def _start_munged(self) -> None:
        """Use the machine's munged, starting it (as user munge) when none answers."""
        if _munge_works():
            return
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        MUNGE_SOCKET_DIR.chmod(0o755)
        self._start("munged", ["munged", "-F"], user="munge", group="munge")
        self._wait(_munge_works, 30, "munged")

    def _mysql(self, sql: str, *, check: bool = True) -> None:
        cmd = [
            "mysql",
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
            "--batch",
            "-e",
            sql,
        ]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            if check:
                raise HarnessError(f"mysql: {exc}") from exc
            return
        if check and proc.returncode != 0:
            raise HarnessError(
                "MariaDB at 127.0.0.1:3306 (root, no password) refused "
                f"{sql[:60]!r}…: {proc.stderr.strip()}"
            )

    def _create_database(self) -> None:
        db, user, password = self.db_name, self.db_user, self.db_pass
        self._mysql(
            f"CREATE DATABASE `{db}`; "
            f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'; "
            f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"GRANT ALL ON `{db}`.* TO '{user}'@'localhost'; "
            f"GRANT ALL ON `{db}`.* TO '{user}'@'127.0.0.1';"
        )
        self._db_created = True

    def _write_configs(self) -> None:
        r, host = self.root, self.host
        for i in range(GPUS_ON_NODE):
            (r / "dev" / f"gpu{i}").touch()  # gres.conf needs one File per GPU; any file will do
        (self.conf_dir / "plugstack.conf").write_text("")
        (self.conf_dir / "gres.conf").write_text(
            f"NodeName={host} Name=gpu Type={GPU_TYPE} File={r}/dev/gpu[0-{GPUS_ON_NODE - 1}]\n"
        )
        self.conf_path.write_text(f"""\
ClusterName={self.cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire (default 120 s) before it may start again
AuthInfo=cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.run_dir}/slurmctld.pid
SlurmdPidFile={self.run_dir}/slurmd.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
PlugStackConfig={self.conf_dir}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
AccountingStorageTRES=gres/gpu,gres/gpu:{GPU_TYPE}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=2
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory=1000 \
Gres=gpu:{GPU_TYPE}:{GPUS_ON_NODE} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        dbd = self.conf_dir / "slurmdbd.conf"
        dbd.touch(mode=0o600)  # slurmdbd refuses a readable file with a password in it
        dbd.write_text(f"""\
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost={host}
DbdPort={self.dbd_port}
SlurmUser=root
DebugLevel=info
LogFile={self.log_dir}/slurmdbd.log
PidFile={self.run_dir}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser={self.db_user}
StoragePass={self.db_pass}
StorageLoc={self.db_name}
""")


class _UnixForwarder(socketserver.ThreadingTCPServer):
    """127.0.0.1:<free port> → a unix socket, one connection per client connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: Path) -> None:
        self.target = target
        super().__init__(("127.0.0.1", 0), _ForwardHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ForwardHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, _UnixForwarder)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            pair = {self.request: upstream, upstream: self.request}
            try:
                upstream.connect(str(self.server.target))
                with selectors.DefaultSelector() as sel:
                    for end in pair:
                        sel.register(end, selectors.EVENT_READ)
                    while events := sel.select(timeout=120):
                        for key, _ in events:
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            pair[key.fileobj].sendall(data)  # type: ignore[index]
            except OSError:
                return  # either side went away: the connection is over


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _file_tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(unreadable)"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], check=False, capture_output=True, timeout=10)
        decoded = subprocess.run(
            ["unmunge"], input=cred.stdout, check=False, capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cred.returncode == 0 and decoded.returncode == 0


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group of a daemon we started, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(5)


def capture(dest: Path) -> None:
    """Run the workload once and write it as fixtures into `dest` (tests/fixtures/slurm)."""
    dest.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="slurm-harness-") as tmp,
        SlurmCluster(Path(tmp)) as cluster,
    ):
        workload = cluster.run_workload()
        start, end = (int(t.timestamp()) for t in workload.window)
        query = f"start_time=uts{start}&end_time=uts{end}"
        url = f"{cluster.start_slurmrestd()}/slurmdb/{RESTD_API}/jobs?{query}"
        with urllib.request.urlopen(url, timeout=60) as resp:
            restd = json.load(resp)
    (dest / "own-cluster.sacct").write_text(workload.sacct_text)
    (dest / "own-cluster-steps.sacct").write_text(workload.sacct_steps_text)
    expected = json.dumps(workload.to_json(), indent=2)
    (dest / "own-cluster.expected.json").write_text(expected + "\n")
    (dest / f"own-cluster.slurmrestd-{RESTD_API}.json").write_text(json.dumps(restd, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Re-capture the own-cluster Slurm fixtures.")
    parser.add_argument("dest", nargs="?", type=Path, default=REPO_ROOT / "tests/fixtures/slurm")
    capture(parser.parse_args().dest)
