"""``rowcast status`` as text: one screen from a :meth:`rowcast.ops.monitor.Monitor.sample`."""

from __future__ import annotations

from typing import Any

from rowcast.models.features import MISSING_COLUMN
from rowcast.ops.monitor import KEY_CHANGED, MISSING_TABLE, NOT_PUBLISHED, TOPIC_COLLISION


def _num(value: object, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


def _metric(d: dict[str, Any]) -> str:
    shown = list((d.get("metrics") or d.get("progressive") or {}).items())[:2]
    return ", ".join(f"{k} {v:.4g}" for k, v in shown) or "–"


def _delay(delay: dict[str, float] | None) -> str:
    """Label committed -> learned (the commit-order merge waits for every partition)."""
    return "–" if not delay else f"{delay['p50']:.0f} / {delay['p99']:.0f} ms"


def _operations(deployments: list[dict[str, Any]]) -> list[str]:
    """Drift detections and challengers, for the deployments that have any."""
    out: list[str] = []
    for d in deployments:
        drift = d.get("drift") or {}
        if drift.get("count"):
            out.append(f"DRIFT {d['name']}: {drift['count']} detection(s), the last at label "
                       f"{drift['last_label']} (version {drift['last_version']}, "
                       f"{drift['last_at']:%Y-%m-%d %H:%M:%S%z}) — `rowcast model events "
                       f"{d['name']}`")
        for name, c in sorted((d.get("challengers") or {}).items()):
            recent = c.get("recent") or {}
            verdict = ("beats the champion" if recent.get("wins") else "not better (yet)")
            out.append(f"CHALLENGER {d['name']}/{name} ({c.get('model')}): {_metric(c)} over "
                       f"{c.get('labels', 0)} labels; recent window {recent.get('n', 0)} rows, "
                       f"loss {recent.get('challenger_loss', 0):.4g} vs champion "
                       f"{recent.get('champion_loss', 0):.4g}: {verdict}")
    return [""] + out if out else []


def render(s: dict[str, Any]) -> str:
    """The operator's screen: what runs, how fast, how late, and a verdict per stage."""
    lines = ["DEPLOYMENT            TABLE                          MODEL                      "
             "MODEL VERSION  LEARNED   LEARNING DELAY p50/p99  ONLINE METRIC"]
    lines += [f"{d['name']:<21} {d['table']:<30} {d['model']:<26} "
              f"{_num(d.get('model_version')):<14} {d.get('samples', 0):<9} "
              f"{_delay(d.get('learning_delay_ms')):<23} "
              + (f"FAILED ({d['failed']['reason']})" if d.get("failed")
                 else f"PAUSED ({d['paused']['reason']})" if d.get("paused") else _metric(d))
              for d in s["deployments"]] or ["(no deployments: rowcast deploy ...)"]
    failed = [d for d in s["deployments"] if d.get("failed")]
    if failed:
        lines.append("")
    lines += [f"ERROR {d['name']}: {d['failed']['error']}" if d["failed"]["reason"]
              == "snapshot_refused" else
              f"FAILED {d['name']}: {d['failed']['error']}" if d["failed"]["reason"]
              in (MISSING_COLUMN, MISSING_TABLE, NOT_PUBLISHED, KEY_CHANGED, TOPIC_COLLISION) else
              f"FAILED {d['name']}: {d['failed']['error']} — its rows go to the dead-letter "
              f"topic as {d['failed']['reason']}; fix the model and deploy again"
              for d in failed]
    paused = [d for d in s["deployments"] if d.get("paused")]
    if paused and not failed:
        lines.append("")
    # before its first version (None) the fresh model serves, and version 0 names it
    lines += [f"PAUSED {d['name']}: learning stopped ({d['paused']['error']}); "
              + (f"version {d['model_version']}" if d.get("model_version") else "the fresh model")
              + f" keeps serving — `rowcast model rollback {d['name']} "
              f"{d.get('model_version') or 0}` resumes it" for d in paused]
    lines += _operations(s["deployments"])
    p, lat = s["predictions"], s["latency_ms"]
    lines += ["", f"predictions {p['total']}   throughput {p['per_second']:.1f} rows/s (10 s)   "
              f"commit→prediction p50 {_num(lat['p50'], ' ms')}  p95 {_num(lat['p95'], ' ms')}  "
              f"p99 {_num(lat['p99'], ' ms')} (5 min)", "",
              "STAGE     LAG              VERDICT   DETAIL"]
    slot = s["slot"]
    if slot is None:
        lines.append("slot      –                ERROR     replication slot missing")
    else:
        lag = f"{slot['behind_bytes']} B / {slot['behind_seconds']} s"
        lines.append(f"slot      {lag:<16} {slot['verdict']:<9} retains {slot['retained_bytes']} B of WAL")
    for st in s["stages"]:
        detail = (f"oldest waiting {st.get('oldest_unconsumed_s', 0)} s, group {st['group']}, "
                  f"{st.get('members', '?')} member(s)")
        if st.get("error"):
            detail = st["error"]
        lines.append(f"{st['stage']:<9} {_num(st['lag'], ' records'):<16} {st['verdict']:<9} {detail}")
    layout = s.get("topic_layout")
    if layout:
        lines += ["", f"TOPIC LAYOUT: {len(layout)} topic(s) replicated otherwise than "
                  "ROWCAST_TOPIC_REPLICATION_FACTOR / _MIN_INSYNC_REPLICAS (or the cluster's "
                  "defaults) ask; recreate or reassign them:"] + [f"  {p}" for p in layout]
    return "\n".join(lines)
