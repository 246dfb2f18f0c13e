"""Long-running processes cap glibc's malloc arenas (threads allocating in arenas of their own
kept the learner above 200 MB of RSS, issue 15); an operator's MALLOC_ARENA_MAX wins."""

import os
import subprocess
import sys

import pytest

COUNT_ARENAS = """
import ctypes, os, sys, tempfile, threading
sys.argv = ["rowcast", "learner"]
from rowcast.ops.cli import yield_cores
yield_cores(sys.argv)  # what `rowcast learner` does first
def work():
    kept = [bytearray(1000) for _ in range(20000)]
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
out = tempfile.TemporaryFile()
fp = libc.fdopen(os.dup(out.fileno()), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fflush(ctypes.c_void_p(fp))
out.seek(0)
print(out.read().count(b"<heap nr="))
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def arenas(env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", COUNT_ARENAS], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout.strip())


@glibc
def test_a_long_running_process_keeps_two_arenas():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert arenas(env) <= 2


@glibc
def test_the_check_sees_more_arenas_and_the_operator_wins():
    assert arenas({**os.environ, "MALLOC_ARENA_MAX": "8"}) > 2
