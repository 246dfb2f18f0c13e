"""Model operations go into every checkpoint's snapshot: they must survive a pickle round trip
(a challenger's catalog spec holds a lambda, which pickle refuses)."""

from __future__ import annotations

import dataclasses

from rowcast.models.deployment import Deployment, Feature
from rowcast.models.operations import Challenger, ModelOperations
from rowcast.models.scoring import OnlineModel
from rowcast.models.snapshot import dump_snapshot, load_snapshot

D = Deployment("spend", "public", "t", "y", (Feature("x", "number"),), "linear_regression", ("id",))
KEY = b"k" * 32


def test_operations_with_challengers_round_trip_through_a_snapshot():
    ops = ModelOperations("regression")
    tree = OnlineModel.fresh(dataclasses.replace(D, model="hoeffding_tree_regressor"))
    ops.add(Challenger("tree", tree, auto_promote=True))
    for i in range(50):
        ops.observe(float(i % 3))
        ops.challengers["tree"].observe({"x": float(i)}, 2.0 * i, 1.0)
    blob = dump_snapshot({"operations": ops}, KEY)
    back = load_snapshot(blob, KEY)["operations"]
    again = back.challengers["tree"]
    assert again.model.spec.name == "hoeffding_tree_regressor" and again.auto_promote
    assert again.progressive.n == 50 and len(again.pairs) == 50 and back.labels == 50
    x = {"x": 7.0}
    assert again.model.score(x) == ops.challengers["tree"].model.score(x)
    again.observe(x, 14.0, 1.0)  # it goes on learning
    assert again.progressive.n == 51
