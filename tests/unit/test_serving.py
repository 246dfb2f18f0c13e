"""The pure scoring path: features, catalog, score-then-learn, routing and rejections."""

from __future__ import annotations

import numbers

import pytest
from river import compose, linear_model, preprocessing

from rowcast.core.envelope import ChangeEvent, SourceInfo
from rowcast.core.errors import ConfigError, DecodeError
from rowcast.core.prediction import PredictionRecord
from rowcast.models.catalog import get_model
from rowcast.models.deployment import Deployment, Feature, LabelSource
from rowcast.models.features import FeatureError, build_features
from rowcast.models.learning import DeploymentLearner, MemoryPending
from rowcast.models.scoring import OnlineModel
from rowcast.models.serving import ServingSet

FEATURES = (Feature("age", "number"), Feature("income", "number"), Feature("city", "category"))


def deployment(model: str = "linear_regression", target: str = "amount") -> Deployment:
    return Deployment("spend", "public", "customers", target, FEATURES, model, ("id",))


def event(i: int, after: dict, op: str = "c", table: str = "customers") -> ChangeEvent:
    src = SourceInfo("rowcast", "app", "public", table, lsn=1000 + i, tx_id=i, commit_us=10 * i)
    return ChangeEvent(op, None, after, src, {"id": i}, origin=f"{table}:0",
                       order=(1000 + i, 1000 + i, 1))


def rows(n: int) -> list[dict]:
    return [{"id": i, "age": 20 + i % 40, "income": str(1000.5 * (i % 7)),
             "city": ["Lyon", "Oslo", None][i % 3], "amount": 3.0 * (i % 11)} for i in range(n)]


def reference_pipeline():
    return (
        (compose.SelectType(numbers.Number) | preprocessing.StandardScaler())
        + (compose.SelectType(str) | preprocessing.OneHotEncoder())
    ) | linear_model.LinearRegression()


def as_x(r: dict) -> dict:
    return {k: v for k, v in {"age": float(r["age"]), "income": float(r["income"]),
                              "city": r["city"]}.items() if v is not None}


def test_learner_fed_by_the_scorer_equals_a_river_pipeline_on_the_same_rows() -> None:
    d = deployment()
    serving = ServingSet.fresh([d])
    data = rows(200)
    result = serving.handle([event(r["id"], r) for r in data], now_us=1)
    assert [e.kind for e in result.labels] == ["labelled"] * 200
    learner = DeploymentLearner.fresh(d, MemoryPending())
    assert learner.apply(result.labels) == 200

    reference, expected = reference_pipeline(), []
    for r in data:
        expected.append(reference.predict_one(as_x(r)))
        reference.learn_one(as_x(r), r["amount"])
    mae = sum(abs(p - r["amount"]) for p, r in zip(expected, data, strict=True)) / len(data)
    assert learner.progressive.values()["MAE"] == pytest.approx(mae, rel=1e-12)
    # the scorer served the untrained version 0 until the learner's snapshot is installed
    assert {p.model_version for p in result.predictions} == {0}
    serving.install("spend", d.generation, 7, learner.model.estimator)
    again = serving.handle([event(999, data[5])], now_us=2).predictions[0]
    assert again.model_version == 7
    assert again.score == pytest.approx(reference.predict_one(as_x(data[5])), rel=1e-12)


def test_rows_without_label_wait_for_an_update_that_sets_it() -> None:
    d = deployment()
    serving, learner = ServingSet.fresh([d]), DeploymentLearner.fresh(d, MemoryPending())
    first = serving.handle([event(1, {"id": 1, "age": 3, "amount": None})])
    assert [e.kind for e in first.labels] == ["scored"] and first.predictions
    assert learner.apply(first.labels) == 0 and learner.model.samples_learned == 0
    update = ChangeEvent("u", None, {"id": 1, "age": 3, "amount": 9.0},
                         SourceInfo("rowcast", "app", "public", "customers", 2000, 9, 99),
                         {"id": 1}, origin="t:0", order=(2000, 2000, 1))
    second = serving.handle([update])
    assert second.predictions == [] and [e.kind for e in second.labels] == ["label"]
    assert learner.apply(second.labels) == 1
    assert learner.state.counters["joined"] == 1
    # a later update of the same row is not a second label: its features were used up
    later = ChangeEvent("u", None, {"id": 1, "age": 4, "amount": 9.5}, update.source, {"id": 1},
                        origin="t:0", order=(3000, 3000, 1))
    assert learner.apply(serving.handle([later]).labels) == 0
    assert learner.state.counters["corrections"] == 1  # a different label: counted, once
    assert learner.state.counters["unmatched"] == 0


def test_a_label_from_an_update_is_keyed_as_its_row_was_scored_after_a_key_rename() -> None:
    # RENAME COLUMN id TO order_id: the source keys rows by the primary key the WAL names, so
    # the row was scored (and its features kept) under {"order_id": 3}; a label keyed by the
    # deployment's key_columns ({"id": None}) matched nothing and was lost without a word
    d = deployment()
    serving, learner = ServingSet.fresh([d]), DeploymentLearner.fresh(d, MemoryPending())
    source = SourceInfo("rowcast", "app", "public", "customers", 2000, 9, 99)
    scored = serving.handle([ChangeEvent("c", None, {"order_id": 3, "age": 3, "amount": None},
                                         source, {"order_id": 3}, origin="t:0",
                                         order=(2000, 2000, 1))])
    assert [p.key for p in scored.predictions] == [{"order_id": 3}]
    update = ChangeEvent("u", None, {"order_id": 3, "age": 3, "amount": 9.0}, source,
                         {"order_id": 3}, origin="t:0", order=(3000, 3000, 1))
    labels = serving.handle([update]).labels
    assert [(e.kind, e.key) for e in labels] == [("label", {"order_id": 3})]
    assert learner.apply(scored.labels + labels) == 1
    assert learner.state.counters["unmatched"] == 0


def test_labels_table_rows_are_joined_by_key() -> None:
    d = Deployment("spend", "public", "customers", "amount", FEATURES, "linear_regression",
                   ("id",), labels=LabelSource("public", "outcomes", "customer_id", "amount"))
    serving, learner = ServingSet.fresh([d]), DeploymentLearner.fresh(d, MemoryPending())
    assert serving.tables() == [("public", "customers"), ("public", "outcomes")]
    scored = serving.handle([event(i, {"id": i, "age": i}) for i in (1, 2)])
    learner.apply(scored.labels)
    outcome = ChangeEvent("c", None, {"oid": 50, "customer_id": 2, "amount": 4.5},
                          SourceInfo("rowcast", "app", "public", "outcomes", 5000, 3, 5),
                          {"oid": 50}, origin="o:0", order=(5000, 5000, 1))
    labels = serving.handle([outcome]).labels
    assert [(e.kind, e.key, e.y) for e in labels] == [("label", {"id": 2}, 4.5)]
    assert learner.apply(labels) == 1


def test_replays_and_other_generations_are_not_learned() -> None:
    d = deployment()
    serving, learner = ServingSet.fresh([d]), DeploymentLearner.fresh(d, MemoryPending())
    events = [event(i, r) for i, r in enumerate(rows(10))]
    labels = serving.handle(events).labels
    assert learner.apply(labels[:6]) == 6
    assert learner.apply(labels[3:]) == 4  # 3..5 replayed (a scorer restart): skipped
    assert learner.state.counters["duplicates"] == 3
    redeployed = Deployment(d.name, d.schema, d.table, d.target, d.features, d.model,
                            d.key_columns, version=2)
    assert learner.apply(ServingSet.fresh([redeployed]).handle(events).labels) == 0
    assert learner.state.counters["stale"] == 10


def test_a_bad_label_is_rejected_with_its_reason() -> None:
    d = deployment("logistic_regression", target="vip")
    serving = ServingSet.fresh([d])
    update = ChangeEvent("u", None, {"id": 1, "age": 3, "vip": "maybe"},
                         SourceInfo("rowcast", "app", "public", "customers", 2000, 9, 99),
                         {"id": 1})
    out = serving.handle([update])
    assert out.labels == [] and out.rejected[0].reason == "bad_label"


def test_updates_deletes_and_other_tables_are_not_scored() -> None:
    serving = ServingSet([OnlineModel.fresh(deployment())])
    out = serving.handle([event(1, {"id": 1, "age": 3}, op="u"), event(2, {"id": 2}, op="d"),
                          event(3, {"id": 3, "age": 1}, table="orders")])
    assert out.predictions == [] and out.rejected == []


def test_bad_feature_is_rejected_with_reason_and_the_batch_goes_on() -> None:
    serving = ServingSet([OnlineModel.fresh(deployment())])
    out = serving.handle([event(1, {"id": 1, "age": "old"}), event(2, {"id": 2, "age": 40})])
    assert [p.key for p in out.predictions] == [{"id": 2}]
    assert out.rejected[0].reason == "bad_feature" and "age" in out.rejected[0].message


@pytest.mark.parametrize("value", ["NaN", float("inf"), [1], {"a": 1}])
def test_numbers_refuse_non_finite_and_non_scalars(value: object) -> None:
    with pytest.raises(FeatureError):
        build_features({"age": value}, (Feature("age", "number"),))


def test_binary_model_scores_probability_of_true() -> None:
    model = OnlineModel.fresh(deployment("logistic_regression", target="vip"))
    for i in range(50):
        x = {"age": float(i)}
        model.learn(x, model.label({"vip": i > 25}))
    scored = model.score({"age": 49.0})
    assert scored.prediction is True and 0.5 < scored.score <= 1.0


def test_deployment_definitions_are_validated() -> None:
    with pytest.raises(ConfigError, match="also listed as a feature"):
        Deployment("d", "public", "t", "age", FEATURES, "linear_regression", ("id",))
    with pytest.raises(ConfigError, match="lower-case"):
        Deployment("Bad Name", "public", "t", "y", FEATURES, "linear_regression", ("id",))
    with pytest.raises(ConfigError, match="primary key"):
        Deployment("d", "public", "t", "y", FEATURES, "linear_regression", ())
    with pytest.raises(ConfigError, match="catalog has"):
        get_model("gpt")


def test_prediction_record_round_trips_and_rejects_garbage() -> None:
    record = PredictionRecord("d", "m", 2, "public", "t", {"id": 5}, 1.5, 1.5, 42, 7, 9)
    assert PredictionRecord.from_json(record.to_json()) == record
    with pytest.raises(DecodeError):
        PredictionRecord.from_json(b'{"deployment": "d"}')


def test_update_keeps_served_models_and_reports_new_tables() -> None:
    spend = deployment()
    serving = ServingSet.fresh([spend])
    estimator = get_model("linear_regression").build()
    assert serving.install("spend", spend.generation, 3, estimator)
    served = serving.models()[0]

    orders = Deployment("orders", "public", "orders", "amount", FEATURES, "linear_regression",
                        ("id",))
    assert serving.update([spend, orders]) == {("public", "orders")}
    assert serving.models()[0] is served  # unchanged: same served version

    changed = Deployment("spend", "public", "customers", "amount", FEATURES,
                         "hoeffding_tree_regressor", ("id",), version=2)
    assert serving.update([changed, orders]) == set()
    now = {m.deployment.name: m for m in serving.models()}
    assert now["spend"].deployment.model == "hoeffding_tree_regressor"
    assert now["spend"].version == 0  # a new generation starts untrained
    assert not serving.install("spend", spend.generation, 4, estimator)  # old generation

    assert serving.update([orders]) == set()  # removed: its table is no longer scored
    assert serving.tables() == [("public", "orders")]
    out = serving.handle([event(1, {"id": 1, "age": 3})])
    assert out.predictions == []


def test_snapshot_events_for_one_deployment_are_scored_by_it_only() -> None:
    other = Deployment("other", "public", "customers", "amount", FEATURES, "linear_regression",
                       ("id",))
    serving = ServingSet.fresh([deployment(), other])
    backfill = ChangeEvent("r", None, {"id": 1, "age": 3, "amount": 1.0},
                           SourceInfo("rowcast", "app", "public", "customers", 1, None, 1, "true"),
                           {"id": 1}, only_for="other")
    out = serving.handle([backfill, event(2, {"id": 2, "age": 4})])
    assert sorted((p.deployment, p.key["id"]) for p in out.predictions) == [
        ("other", 1), ("other", 2), ("spend", 2)]
    assert sorted((e.deployment, e.key["id"]) for e in out.labels) == [
        ("other", 1), ("other", 2), ("spend", 2)]


# a column renamed or dropped after the deployment was defined: the rows committed since lack it
DEFINED_US = 1_000
FULL_ROW = {"id": 1, "age": 30, "income": 1000.0, "city": "Lyon", "amount": 5.0}


def defined(target: str = "amount", labels: LabelSource | None = None) -> Deployment:
    return Deployment("spend", "public", "customers", target, FEATURES, "linear_regression",
                      ("id",), labels=labels, defined_us=DEFINED_US)


def committed(after: dict, commit_us: int, op: str = "c", table: str = "customers",
              key: dict | None = None) -> ChangeEvent:
    src = SourceInfo("rowcast", "app", "public", table, lsn=5000, tx_id=9, commit_us=commit_us)
    return ChangeEvent(op, None, after, src, key or {"id": after.get("id")}, origin=f"{table}:0",
                       order=(5000, 5000, 1))


def test_a_row_without_a_feature_column_is_dead_lettered_not_scored_without_it() -> None:
    serving = ServingSet.fresh([defined()])
    renamed = {k: v for k, v in FULL_ROW.items() if k != "income"} | {"salary": 1000.0}
    out = serving.handle([committed(renamed, DEFINED_US + 1),
                          committed({**FULL_ROW, "id": 2, "income": None}, DEFINED_US + 2)])
    # NULL is "unknown" and scored; a column the row does not have at all is not
    assert [p.key for p in out.predictions] == [{"id": 2}]
    [letter] = out.rejected
    assert letter.reason == "missing_column" and letter.deployment == "spend"
    assert "'income'" in letter.message and "renamed or dropped" in letter.message


def test_a_row_committed_before_its_deployment_was_defined_may_lack_a_column() -> None:
    # the column was added (and the model deployed on it) after this row was written: for
    # such a row it reads as NULL
    serving = ServingSet.fresh([defined()])
    older = {k: v for k, v in FULL_ROW.items() if k != "city"}
    out = serving.handle([committed(older, DEFINED_US - 1)])
    assert [p.key for p in out.predictions] == [{"id": 1}] and out.rejected == []


def test_a_row_without_the_target_column_is_scored_and_its_label_dead_lettered() -> None:
    serving = ServingSet.fresh([defined()])
    no_target = {k: v for k, v in FULL_ROW.items() if k != "amount"}
    out = serving.handle([committed(no_target, DEFINED_US + 1),
                          committed(no_target | {"id": 2}, DEFINED_US + 1, op="u")])
    assert [p.key for p in out.predictions] == [{"id": 1}]
    assert [(r.reason, r.event.op) for r in out.rejected] == [("missing_column", "c"),
                                                             ("missing_column", "u")]
    assert all("'amount'" in r.message for r in out.rejected)
    # the scored row still waits for a label, as one whose target is NULL does
    assert [e.kind for e in out.labels] == ["scored"]


def test_a_labels_table_row_without_its_label_column_is_dead_lettered() -> None:
    d = defined(labels=LabelSource("public", "outcomes", "customer_id", "amount"))
    serving = ServingSet.fresh([d])
    outcome = committed({"oid": 50, "customer_id": 2, "paid": 4.5}, DEFINED_US + 1,
                        table="outcomes", key={"oid": 50})
    out = serving.handle([outcome])
    assert out.labels == [] and [r.reason for r in out.rejected] == ["missing_column"]
    assert "'amount'" in out.rejected[0].message


def test_a_snapshot_reads_label_is_not_read_so_a_bad_or_missing_one_is_no_dead_letter() -> None:
    # a snapshot read (deploy, backfill) is scored, never learned from: its label is not used
    serving = ServingSet.fresh([defined()])
    bad = committed({**FULL_ROW, "amount": "lots"}, DEFINED_US + 1, op="r")
    gone = committed({k: v for k, v in FULL_ROW.items() if k != "amount"} | {"id": 2},
                     DEFINED_US + 1, op="r")
    out = serving.handle([bad, gone])
    assert [p.key for p in out.predictions] == [{"id": 1}, {"id": 2}] and out.rejected == []


@pytest.mark.parametrize("amount", [1e300, -1e300, 2e154, "1e200", 1e77, -1.01e50])
def test_a_regression_label_whose_square_overflows_is_a_bad_label_and_the_row_is_scored(
        amount: object) -> None:
    """A finite label beyond ~1.3e154 cannot be learned: river's own squared error of it
    raises OverflowError, which paused learning of the whole deployment until an operator
    rolled back (found by hand: one row of a double column at 1e308); and a tree regressor's
    sum of squared errors was broken by a label of 1e77. Beyond 1e50 it is refused at the
    scorer, with the row's prediction still made, and the next labels are learned."""
    serving = ServingSet.fresh([deployment()])
    row = {"id": 1, "age": 30, "income": "10", "city": "Lyon", "amount": amount}
    out = serving.handle([event(1, row), event(2, {**row, "id": 2, "amount": 1e50})])
    assert [(r.reason, "cannot be learned" in r.message) for r in out.rejected] == [
        ("bad_label", True)]
    assert [p.key for p in out.predictions] == [{"id": 1}, {"id": 2}]
    assert [(e.kind, e.y) for e in out.labels] == [("scored", None), ("labelled", 1e50)]
    learner = DeploymentLearner.fresh(deployment(), MemoryPending())
    assert learner.apply(out.labels) == 1 and learner.broken is None
