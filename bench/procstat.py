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


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (the postmaster's backends, the worker's faust child)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += _children(current)
    return out


def read_tree(pid: int) -> ProcStat | None:
    """A process with its descendants (``rowcast worker`` is a supervisor and a faust child):
    CPU summed, peak RSS of the largest one (each is its own process, with its own memory)."""
    stats, todo = [], [pid]
    while todo:
        current = todo.pop()
        stat = read(current)
        if stat is not None:
            stats.append(stat)
            todo += _children(current)
    if not stats:
        return None
    return ProcStat(sum(s.cpu_s for s in stats), max(s.peak_rss_mb for s in stats),
                    max(s.rss_mb for s in stats))
