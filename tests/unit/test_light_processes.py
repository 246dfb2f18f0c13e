"""The CDC source and the sink stay light: they import neither faust nor river (nor, through
river, numpy and scipy). Each of those costs every process that loads it tens of MB of RSS
(issue 15: every process <= 200 MB); importing the garbage-collector policy from the scorer
module once took the source from 65 to 146 MB."""

import subprocess
import sys

HEAVY = ("faust", "river", "scipy", "numpy")


def test_source_and_sink_entry_points_import_no_heavy_module():
    code = ("import sys\n"
            "import rowcast.streams.processes, rowcast.streams.memory_policy\n"
            "import rowcast.connectors.cdc_source, rowcast.connectors.pg_sink\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_check_sees_a_heavy_import():
    code = "import sys, rowcast.streams.scorer\nprint('faust' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
