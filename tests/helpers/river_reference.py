"""river's own ``progressive_val_score``, computed the way rowcast's learner runs: in a process
with ``PYTHONHASHSEED=0``.

river's tree and forest models iterate sets of class labels (tie-breaking between equally good
splits and classes, the per-class sums of MacroF1), and Python orders sets of strings by a hash
that is randomised per process; two runs of the same stream can then disagree in the last
decisions. rowcast's learner and workers run with the hash seed fixed (see
``rowcast.ops.cli.deterministic``), so the reference is computed the same way here."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

_SCRIPT = """
import pickle, sys
from river import evaluate, metrics
from rowcast.models.catalog import get_model
stream, model, names = pickle.load(sys.stdin.buffer)
out = {n: evaluate.progressive_val_score(stream, get_model(model).build(),
                                         getattr(metrics, n)()).get() for n in names}
sys.stdout.buffer.write(pickle.dumps(out))
"""


def progressive(stream: list[tuple[dict, Any]], model: str, metric_names: list[str]
                ) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _SCRIPT],
                          input=pickle.dumps((stream, model, metric_names)),
                          env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True,
                          check=True, timeout=300)
    return pickle.loads(done.stdout)
