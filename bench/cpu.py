"""CPU per request by process group, from /proc (Linux): where a benchmark's cores went.

A throughput ratio says how far the service is from its reference, not why. On a machine where
the load tool, the server and PostgreSQL share the cores, the why is CPU: how many µs of it
the server's processes (gunicorn master and workers, every thread) and PostgreSQL's processes
(backends, WAL writer, checkpointer) spent per answered request while the load ran, and how
busy the machine was. Sampled before and after a measurement; a process that exits in between
loses its share (none does: connections are pooled for the whole run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _ticks(pid: int) -> tuple[str, int] | None:
    """(command name, user + system clock ticks) of a live process, all its threads included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return name, int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14 and 15)


def _machine() -> tuple[int, int]:
    """(all ticks, idle + iowait ticks) of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


@dataclass
class Sample:
    server: int
    postgres: int
    machine: tuple[int, int]


class CpuMeter:
    """`sample()` before and after the load; `per_request(before, after, n)` gives µs per request."""

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids  # the gunicorn master and its workers

    def sample(self) -> Sample:
        server = postgres = 0
        wanted = set(self.server_pids)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            got = _ticks(int(entry))
            if got is None:
                continue
            name, ticks = got
            if int(entry) in wanted:
                server += ticks
            elif name.startswith("postgres"):
                postgres += ticks
        return Sample(server, postgres, _machine())

    @staticmethod
    def per_request(before: Sample, after: Sample, requests: int) -> dict[str, Any]:
        def us(ticks: int) -> int:
            return round(ticks / HZ * 1e6 / max(requests, 1))

        total = after.machine[0] - before.machine[0]
        idle = after.machine[1] - before.machine[1]
        return {"server_us": us(after.server - before.server),
                "postgres_us": us(after.postgres - before.postgres),
                "machine_busy_pct": round(100 * (total - idle) / total) if total else 0}


def available() -> bool:
    return Path("/proc/stat").exists()
