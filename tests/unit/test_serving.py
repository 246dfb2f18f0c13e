"""The pure scoring path: features, catalog, score-then-learn, routing and rejections."""

from __future__ import annotations

import numbers

import pytest
from river import compose, linear_model, preprocessing

from connectors.envelope import ChangeEvent, SourceInfo
from models.catalog import CATALOG, get_model
from models.deployment import Deployment, Feature
from models.features import FeatureError, build_features
from models.prediction import PredictionRecord
from models.scoring import OnlineModel
from models.serving import ServingSet
from rowcast.errors import ConfigError, DecodeError

FEATURES = (Feature("age", "number"), Feature("income", "number"), Feature("city", "category"))


def deployment(model: str = "linear_regression", target: str = "amount") -> Deployment:
    return Deployment("spend", "public", "customers", target, FEATURES, model, ("id",))


def event(i: int, after: dict, op: str = "c", table: str = "customers") -> ChangeEvent:
    src = SourceInfo("rowcast", "app", "public", table, lsn=1000 + i, tx_id=i, commit_us=10 * i)
    return ChangeEvent(op, None, after, src, {"id": i})


def rows(n: int) -> list[dict]:
    return [{"id": i, "age": 20 + i % 40, "income": str(1000.5 * (i % 7)),
             "city": ["Lyon", "Oslo", None][i % 3], "amount": 3.0 * (i % 11)} for i in range(n)]


def test_predictions_equal_a_river_pipeline_fed_the_same_rows() -> None:
    serving = ServingSet([OnlineModel.fresh(deployment())])
    data = rows(200)
    result = serving.handle([event(r["id"], r) for r in data], now_us=1)
    reference = (
        (compose.SelectType(numbers.Number) | preprocessing.StandardScaler())
        + (compose.SelectType(str) | preprocessing.OneHotEncoder())
    ) | linear_model.LinearRegression()
    expected = []
    for r in data:
        x = {k: v for k, v in {"age": float(r["age"]), "income": float(r["income"]),
                                 "city": r["city"]}.items() if v is not None}
        expected.append(reference.predict_one(x))
        reference.learn_one(x, r["amount"])
    assert [p.score for p in result.predictions] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert [p.key for p in result.predictions] == [{"id": r["id"]} for r in data]
    assert len({p.score for p in result.predictions}) > 10  # it really learned


def test_rows_without_label_are_scored_but_not_learned() -> None:
    model = OnlineModel.fresh(deployment())
    ServingSet([model]).handle([event(1, {"id": 1, "age": 3, "amount": None})])
    assert model.samples_learned == 0


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


def test_every_catalog_model_scores_and_learns() -> None:
    for name, spec in CATALOG.items():
        target = {"regression": 1.5, "binary": True, "multiclass": "gold"}[spec.task]
        model = OnlineModel.fresh(deployment(name))
        x = model.features({"age": 30, "income": "12.5", "city": "Lyon"})
        model.score(x)
        model.learn(x, target)
        assert model.score(x).score is not None, name


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


def test_update_keeps_learned_models_and_reports_new_tables() -> None:
    spend = deployment()
    serving = ServingSet.fresh([spend])
    serving.handle([event(i, {"id": i, "age": i, "amount": 2.0 * i}) for i in range(1, 20)])
    learned = serving.models()[0]
    assert learned.samples_learned == 19

    orders = Deployment("orders", "public", "orders", "amount", FEATURES, "linear_regression",
                        ("id",))
    assert serving.update([spend, orders]) == {("public", "orders")}
    assert serving.models()[0] is learned  # unchanged: same learned state

    changed = Deployment("spend", "public", "customers", "amount", FEATURES,
                         "hoeffding_tree_regressor", ("id",), version=2)
    assert serving.update([changed, orders]) == set()
    now = {m.deployment.name: m for m in serving.models()}
    assert now["spend"].deployment.model == "hoeffding_tree_regressor"
    assert now["spend"].samples_learned == 0

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
    learned = {m.deployment.name: m.samples_learned for m in serving.models()}
    assert learned == {"spend": 0, "other": 1}
