"""What to print when a pipeline test fails: offsets, topic contents and every process's log."""

from __future__ import annotations

from rowcast.connectors.kafka_clients import make_admin
from rowcast.connectors.lag import consumer_lag
from tests.helpers.kafka_reading import drain


def logs(pipeline) -> str:
    """Every process's log tail and each group's offsets: enough to tell which stage stalled."""
    settings = pipeline.settings
    admin = make_admin(settings)
    try:
        topics = [t for t in admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
        offsets = [f"{group}: {p.topic}[{p.partition}] end={p.log_end} committed={p.committed}"
                   for group in (settings.scorer_group, settings.sink_group)
                   for p in consumer_lag(admin, group, topics) if p.log_end]
    finally:
        admin.close()
    for topic in topics:
        if ".predictions." in topic or ".public." in topic:
            for r in drain(settings, topic, 0, timeout_s=2):
                offsets.append(f"{topic}[{r.partition}]@{r.offset} key={r.key!r} {r.value[:160]!r}")
    tails = [f"--- {name}\n{pipeline.log_tail(name, 60)}" for name in pipeline.procs]
    return "\n".join(["--- offsets", *offsets, *tails])
