"""The dev stack's process helpers on real child processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rowcast.ops.devstack.process import terminate_all

# a node that, once told to stop, waits for its peers to be told too (a KRaft quorum), then
# exits cleanly and says so (its exit code is not seen: terminate_all reaps it)
PEER = """
import os, signal, sys, time
from pathlib import Path
here, peers = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
def stop(*_):
    here.touch()
    while not all(p.exists() for p in peers):
        time.sleep(0.01)
    Path(str(here) + ".clean").touch()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
Path(str(here) + ".ready").touch()
while True:
    time.sleep(0.1)
"""


def test_processes_that_stop_only_together_are_all_stopped_cleanly(tmp_path: Path) -> None:
    """A 3-broker dev cluster stopped one node after the other: the last one waited for a
    quorum that was gone and was SIGKILLed after 30 s. Told all at once, they all exit."""
    marks = [tmp_path / f"node{i}" for i in range(3)]
    nodes = [subprocess.Popen([sys.executable, "-c", PEER, str(mark), *map(str, marks)],
                              start_new_session=True) for mark in marks]
    try:
        while not all(Path(f"{m}.ready").exists() for m in marks):
            for node in nodes:
                assert node.poll() is None
        terminate_all([n.pid for n in nodes], timeout_s=20)
        assert [Path(f"{m}.clean").exists() for m in marks] == [True] * 3  # none SIGKILLed
    finally:
        for node in nodes:
            node.kill()
