"""CPU seconds and peak resident memory of a process, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    cpu_s: float
    peak_rss_mb: float
    rss_mb: float


def read(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    kb = lambda key: int(status.get(key, "0 kB").split()[0])  # noqa: E731
    return ProcStat(cpu, kb("VmHWM") / 1024, kb("VmRSS") / 1024)


def postgres_backends_cpu_s(pids: list[int]) -> float:
    return sum(s.cpu_s for s in (read(p) for p in pids) if s is not None)
