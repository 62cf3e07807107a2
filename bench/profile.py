"""Where the time of a push goes: profile the server side of ingestion.

    python -m bench.profile                       # pyinstrument, in-process, PostgreSQL
    python -m bench.profile --backend sqlite
    python -m bench.profile --py-spy              # py-spy on a real gunicorn worker

In-process: the app's own request path (JSON parse, auth, validation, SQL, response) through
Flask's test client, batches of 1,000, under pyinstrument; the text report is printed and the
HTML saved. --py-spy: gunicorn with one worker, one client process pushing, and `py-spy record`
attached to the worker; writes its collapsed stacks and prints the heaviest frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.common import NO_PUSH_LIMITS, RESULTS_DIR, BenchDatabase, Server, seed_registry
from bench.ingest import Params, drive, generate


def _bodies(params: Params, providers, usccs) -> list[bytes]:
    data, _ = generate(params, providers, usccs, datetime.now(UTC))
    return [json.dumps({"records": b}, separators=(",", ":")).encode() for b in data[0]]


def in_process(bdb: BenchDatabase, params: Params, out_dir: Path) -> None:
    from pyinstrument import Profiler

    from config.settings import Settings
    from voucher.app import create_app

    seed = seed_registry(bdb.url, providers=1, enterprises=params.enterprises)
    bodies = _bodies(params, seed.providers, seed.usccs)
    app = create_app(Settings.from_env(env=NO_PUSH_LIMITS, database_url=bdb.url))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {seed.keys[seed.providers[0]]}",
               "Content-Type": "application/json"}
    client.post("/v1/usage-records", data=bodies[0], headers=headers)  # warm caches
    logging.disable(logging.INFO)  # one access-log line per push would drown the report
    profiler = Profiler(interval=0.0005)
    t0 = time.perf_counter()
    profiler.start()
    for body in bodies[1:]:
        r = client.post("/v1/usage-records", data=body, headers=headers)
        assert r.status_code == 200 and r.json["rejected"] == 0, r.json
    profiler.stop()
    logging.disable(logging.NOTSET)
    seconds = time.perf_counter() - t0
    n = params.records - len(json.loads(bodies[0])["records"])
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    html = out_dir / f"profile-ingest-{bdb.backend}.html"
    html.write_text(profiler.output_html())
    print(f"{n:,} records in {seconds:.2f} s in-process ({n / seconds:,.0f} records/s, "
          f"profiler on); HTML: {html}")


def with_py_spy(bdb: BenchDatabase, params: Params, out_dir: Path) -> None:
    seed = seed_registry(bdb.url, providers=1, enterprises=params.enterprises)
    data, _ = generate(params, seed.providers, seed.usccs, datetime.now(UTC))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client.jsonl"
        path.write_bytes(b"\n".join(json.dumps({"records": b}).encode() for b in data[0]))
        with Server(bdb.url, workers=1) as server:
            (worker,) = server.worker_pids()
            out = out_dir / f"py-spy-ingest-{bdb.backend}.txt"
            spy = subprocess.Popen([_py_spy(), "record", "--nonblocking", "-p", str(worker),
                                    "-r", "250", "-f", "raw", "-o", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(1)
            report = drive(server.url, [seed.keys[seed.providers[0]]], [path])
            spy.send_signal(signal.SIGINT)
            output, _ = spy.communicate(timeout=60)
            if not out.exists():
                raise RuntimeError(f"py-spy wrote nothing: {output}")
    print(f"load: {params.records / report['seconds']:,.0f} records/s with py-spy attached")
    print(f"collapsed stacks: {out}")
    summarize_collapsed(out)


def _py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else "py-spy"


def summarize_collapsed(path: Path, top: int = 25) -> None:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{total} samples; inclusive share of the top frames:")
    for frame, n in incl.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("self time:")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--py-spy", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="where reports are written")
    args = ap.parse_args(argv)
    params = Params(backend=args.backend, records=args.records, clients=1, enterprises=500)
    args.out.mkdir(parents=True, exist_ok=True)
    with BenchDatabase.create(args.backend) as bdb:
        (with_py_spy if args.py_spy else in_process)(bdb, params, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
