"""The placement helpers of ``bench.rates``: a process tree is found whole and pinned whole
(a missed backend or faust child would run on the writer's cores and blur the comparison)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bench import procstat
from bench.e2e import Sampler, paused
from bench.rates import main, pin
from tests.helpers.waiting import wait_until


def allowed_cpus(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f
                    if line.startswith("Cpus_allowed_list"))


def test_a_process_tree_is_found_and_pinned_with_its_grandchildren() -> None:
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "print('up', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "up"
        tree = procstat.process_tree(parent.pid)
        assert tree[0] == parent.pid and len(tree) == 2
        pin(tree, {0})
        assert [allowed_cpus(pid) for pid in tree] == ["0", "0"]
        every = set(range(os.cpu_count() or 1))
        pin(tree, every)
        assert all(allowed_cpus(pid) != "0" or every == {0} for pid in tree)
    finally:
        for pid in reversed(procstat.process_tree(parent.pid)):
            os.kill(pid, 9)
        parent.wait()


def test_an_unknown_placement_is_refused_before_any_service_starts() -> None:
    with pytest.raises(SystemExit, match="unknown placement 'spread'"):
        main(["--placements", "shared,spread"])


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_pausing_some_processes_stops_those_groups_alone_and_continues_them() -> None:
    # make bench's source-only writer runs: the worker, learner and sink stopped, the source not
    procs = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                    start_new_session=True) for name in ("source", "worker", "sink")}
    try:
        pipeline = SimpleNamespace(procs=procs)
        with paused(pipeline, ["worker", "sink"]):
            wait_until(lambda: state(procs["worker"].pid) == "T" == state(procs["sink"].pid),
                       10, message="the worker and the sink stopped")
            assert state(procs["source"].pid) != "T"
        wait_until(lambda: all(state(p.pid) != "T" for p in procs.values()), 10,
                   message="every process continued")
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_peaks_are_reset_so_the_load_is_measured_alone_and_the_earlier_peak_is_kept() -> None:
    # a process that once held ~150 MB and let it go: its lifetime peak is not the load's
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; b = bytearray(150 << 20); del b; "
                              "print('freed', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "freed"
        sampler = Sampler(SimpleNamespace(procs={"learner": child}), "", "")
        before = sampler.reset_peaks()
        assert before["learner"] >= 150
        assert sampler.stats()["learner"]["peak_rss_mb"] < 100
    finally:
        child.kill()
        child.wait()
