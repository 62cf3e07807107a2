"""A throw-away Prometheus holding backfilled kube-state-metrics history, for the adapter's tests.

`Dataset` describes pods (namespace, GPUs per container, when each was Pending, Running,
then Succeeded or Failed) over whole UTC hours, renders them as the OpenMetrics text
kube-state-metrics would have been scraped into every 60 s at whole minutes
(`kube_pod_container_resource_requests`/`_limits` for `nvidia_com_gpu` and `cpu`, and
`kube_pod_status_phase` with all five phases at 0/1), and computes independently, from the pod
descriptions alone, the GPU-minutes of Running pods per (namespace, hour) and the expected
quantities (rounded half-up with integer arithmetic). As in a real cluster, a finished pod's
requests series continues; only its phase changes.

`PrometheusServer(root, dataset)` writes `data.om`, runs
`promtool tsdb create-blocks-from openmetrics data.om tsdb` and starts
`prometheus --storage.tsdb.path=tsdb --web.listen-address=127.0.0.1:<free port>` with an empty
`scrape_configs`, waits for `/-/ready` and stops it (by its pid) on exit:

    dataset = default_dataset(datetime.now(UTC))   # ends whole hours, ≥ 4 h before now
    with PrometheusServer(tmp_path, dataset) as prom:   # about 2 s once installed
        prom.url                                   # http://127.0.0.1:PORT
        prom.provider_config(tenants, prices)      # a ProviderConfig pointing at it

Prometheus and promtool come from Debian's `prometheus` package; `ensure_installed()` runs
scripts/ensure-prometheus.sh when either is missing and raises `HarnessError` if that fails.
Samples must be older than the head block, hence data ending hours before now.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

from adapters.config import ProviderConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
ENSURE_SCRIPT = REPO_ROOT / "scripts" / "ensure-prometheus.sh"
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
SCRAPE_SECONDS = 60
CLUSTER = "jx-k8s"


class HarnessError(RuntimeError):
    """Prometheus could not be installed, backfilled or started; carries its output."""


def ensure_installed() -> None:
    """Install Debian's prometheus (with promtool) through scripts/ensure-prometheus.sh if missing."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    proc = subprocess.run(["sh", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not (shutil.which("prometheus") and shutil.which("promtool")):
        raise HarnessError(
            f"{ENSURE_SCRIPT} exited {proc.returncode}; prometheus/promtool still missing\n"
            f"{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
        )


@dataclass(frozen=True)
class Pod:
    """One pod over the dataset's minutes (0 = the dataset's first whole minute).

    Its series exist from minute `first` to the dataset's end; it is Pending before
    `running_from`, Running in [running_from, running_until), then `ended_as`.
    """

    namespace: str
    name: str
    gpus: tuple[int, ...]  # GPUs requested per container; 0 = a container without GPUs
    first: int
    running_from: int
    running_until: int
    ended_as: str = "Succeeded"

    def phase_at(self, minute: int) -> str | None:
        if minute < self.first:
            return None
        if minute < self.running_from:
            return "Pending"
        return "Running" if minute < self.running_until else self.ended_as


@dataclass(frozen=True)
class Dataset:
    start: datetime  # a whole UTC hour
    hours: int
    pods: tuple[Pod, ...]
    cluster: str = CLUSTER

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours)

    @property
    def minutes(self) -> int:
        return self.hours * 60

    @property
    def namespaces(self) -> set[str]:
        return {p.namespace for p in self.pods}

    def windows(self) -> list[datetime]:
        return [self.start + timedelta(hours=h) for h in range(self.hours)]

    def epoch(self, minute: int) -> int:
        return int(self.start.timestamp()) + minute * SCRAPE_SECONDS

    # --- what Prometheus gets ----------------------------------------------------------------

    def openmetrics(self) -> str:
        """The scraped history as OpenMetrics text (timestamps in seconds), ending with `# EOF`."""
        return "".join(self._openmetrics_lines())

    def _openmetrics_lines(self) -> Iterator[str]:
        for metric, kind in (
            ("kube_pod_container_resource_requests", "requests"),
            ("kube_pod_container_resource_limits", "limits"),
        ):
            yield f"# HELP {metric} The number of {kind} resource by a container.\n"
            yield f"# TYPE {metric} gauge\n"
            for pod in self.pods:
                for i, gpus in enumerate(pod.gpus):
                    container = f"c{i}"
                    series = [("cpu", "core", 4)] + (
                        [("nvidia_com_gpu", "integer", gpus)] if gpus else []
                    )
                    for resource, unit, value in series:
                        labels = _labels(
                            namespace=pod.namespace,
                            pod=pod.name,
                            uid=_uid(pod),
                            container=container,
                            node="gpu-node-1",
                            resource=resource,
                            unit=unit,
                            job="kube-state-metrics",
                        )
                        for minute in range(pod.first, self.minutes):
                            yield f"{metric}{{{labels}}} {value} {self.epoch(minute)}\n"
        yield "# HELP kube_pod_status_phase The pods current phase.\n"
        yield "# TYPE kube_pod_status_phase gauge\n"
        for pod in self.pods:
            for phase in PHASES:
                labels = _labels(
                    namespace=pod.namespace,
                    pod=pod.name,
                    uid=_uid(pod),
                    phase=phase,
                    job="kube-state-metrics",
                )
                for minute in range(pod.first, self.minutes):
                    value = 1 if pod.phase_at(minute) == phase else 0
                    yield f"kube_pod_status_phase{{{labels}}} {value} {self.epoch(minute)}\n"
        yield "# EOF\n"

    # --- what should be billed, from the pod descriptions alone -----------------------------

    def gpu_minutes(self) -> dict[tuple[str, datetime], int]:
        """GPU-minutes of Running pods per (namespace, window start); windows without any omitted."""
        out: dict[tuple[str, datetime], int] = defaultdict(int)
        for pod in self.pods:
            for minute in range(self.minutes):
                if pod.phase_at(minute) == "Running" and sum(pod.gpus):
                    window = self.start + timedelta(hours=minute // 60)
                    out[(pod.namespace, window)] += sum(pod.gpus)
        return dict(out)

    def expected_quantities(self) -> dict[tuple[str, datetime], Decimal]:
        """GPU-hours per (namespace, window): GPU-minutes / 60, rounded half-up to 6 decimals."""
        # floor(m / 60 × 10^6 + ½) with integers only
        return {
            key: Decimal((m * 2_000_000 + 60) // 120).scaleb(-6)
            for key, m in self.gpu_minutes().items()
        }


def default_dataset(now: datetime, hours: int = 6) -> Dataset:
    """Six hours ending on a whole hour 4–5 h before `now`: every case the adapter must handle.

    - ent-a: a pod with 2 GPUs Running throughout; a pod with a 4-GPU container and a CPU-only
      sidecar, Pending for 5 min, then Running from minute 30 until it Succeeds at minute 200
      (its requests series continues to the end).
    - ent-b: a pod with two 1-GPU containers throughout; a 3-GPU batch pod that appears at
      minute 61, Runs minutes 67–77 and Succeeds (11 minutes: 33 GPU-minutes).
    - ent-c: a 1-GPU notebook Running minutes 137–143 (7 GPU-minutes → 0.116667, rounded) that
      Fails, and a 2-GPU pod Pending for the whole time (never billed).
    - lab-x: an unmapped namespace with 8 GPUs throughout.
    """
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    minutes = hours * 60
    pods = (
        Pod("ent-a", "train-0", (2,), 0, 0, minutes),
        Pod("ent-a", "train-1", (4, 0), 25, 30, 200),
        Pod("ent-b", "infer-0", (1, 1), 0, 0, minutes),
        Pod("ent-b", "batch-7f9c", (3,), 61, 67, 78),
        Pod("ent-c", "notebook", (1,), 130, 137, 144, ended_as="Failed"),
        Pod("ent-c", "stuck", (2,), 0, minutes, minutes),
        Pod("lab-x", "stray", (8,), 0, 0, minutes),
    )
    return Dataset(start=end - timedelta(hours=hours), hours=hours, pods=pods)


@dataclass
class PrometheusServer:
    """A Prometheus on 127.0.0.1 serving only `dataset`, its files under `root`."""

    root: Path
    dataset: Dataset
    url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        began = time.monotonic()
        ensure_installed()
        self.timings["install"] = time.monotonic() - began
        self.root.mkdir(parents=True, exist_ok=True)
        self._backfill()
        config = self.root / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 60s\nscrape_configs: []\n")
        for attempt in range(3):
            try:
                self._launch(config)
                break
            except HarnessError:
                self.stop()
                if attempt == 2:
                    raise
        return self.url

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def provider_config(
        self, tenants: dict[str, str], prices: dict[str, int], **settings: Any
    ) -> ProviderConfig:
        return ProviderConfig(
            provider_id=self.dataset.cluster,
            type="prometheus",
            cluster=self.dataset.cluster,
            settings={"url": self.url, **settings},
            tenants=dict(tenants),
            prices=dict(prices),
        )

    def query(self, promql: str, at: datetime) -> list[dict[str, Any]]:
        """An instant query, for checks that go around the adapter."""
        params = urllib.parse.urlencode({"query": promql, "time": str(int(at.timestamp()))})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=30) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise HarnessError(f"query {promql!r}: {body}")
        return body["data"]["result"]

    # --- internals ---------------------------------------------------------------------------

    def _backfill(self) -> None:
        began = time.monotonic()
        data = self.root / "data.om"
        data.write_text(self.dataset.openmetrics())
        tsdb = self.root / "tsdb"
        if tsdb.exists():
            shutil.rmtree(tsdb)
        proc = subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(data), str(tsdb)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"promtool exited {proc.returncode}:\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
            )
        self.timings["backfill"] = time.monotonic() - began

    def _launch(self, config: Path) -> None:
        began = time.monotonic()
        port = _free_port()
        log = self.root / "prometheus.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.root / 'tsdb'}",
                    "--storage.tsdb.retention.time=30d",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HarnessError(f"prometheus exited {self._proc.returncode}:\n{_file_tail(log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        self.timings["start"] = time.monotonic() - began
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise HarnessError(f"prometheus not ready on {self.url} after 90 s:\n{_file_tail(log)}")


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _uid(pod: Pod) -> str:
    return f"{pod.namespace}-{pod.name}-uid"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return f"({path} unreadable)"
