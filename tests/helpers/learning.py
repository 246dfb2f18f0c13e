"""What the learner has checkpointed, read from ``rowcast.model_versions``."""

from __future__ import annotations


def latest_version(conn, deployment: str) -> tuple[int, int, dict] | None:
    return conn.execute("SELECT version, samples, metrics FROM rowcast.model_versions "
                        "WHERE deployment = %s ORDER BY version DESC LIMIT 1",
                        (deployment,)).fetchone()


def learned(conn, deployment: str) -> int:
    v = latest_version(conn, deployment)
    return 0 if v is None else v[1]


def counters(conn, deployment: str) -> dict:
    return conn.execute("SELECT state->'counters' FROM rowcast.model_versions WHERE deployment = %s "
                        "ORDER BY version DESC LIMIT 1", (deployment,)).fetchone()[0]


def fast(settings):
    return settings.model_copy(update={"learner_checkpoint_s": 0.3, "deployment_refresh_s": 0.5})
