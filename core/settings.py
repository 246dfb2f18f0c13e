"""All of rowcast's settings, declared once: type, environment variable, default, meaning.

Every process reads one :class:`Settings` from the environment (``ROWCAST_*``) and an optional
env file, and passes it down; nothing else reads the environment. The defaults point at the dev
stack that ``rowcast dev up`` starts, so the demo needs no configuration.

>>> s = Settings(postgres_dsn="postgresql://app:s3cret@db/app")
>>> "s3cret" in repr(s)
False
>>> s.source_topic("public", "customers")
'rowcast.public.customers'
>>> s.source_topic("sales", 'Odd "Table"')
'rowcast.sales.Odd__Table_'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _topic_safe(name: str) -> str:
    return _TOPIC_UNSAFE.sub("_", name)


class _Table(Protocol):
    schema: str
    table: str


class DeploymentTopics(Protocol):
    """What :meth:`Settings.stages` needs of a deployment (``rowcast.models.deployment``)."""

    name: str
    schema: str
    table: str
    labels: _Table | None


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline as Kafka sees it: a consumer group and the topics it reads."""

    name: str
    group: str
    topics: tuple[str, ...]


def _default_key_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "rowcast" / "snapshot.key"


DEV_POSTGRES_PORT = 54329
DEV_KAFKA_PORT = 19092


class Settings(BaseSettings):
    """Typed settings; environment variables are ``ROWCAST_<FIELD>`` in upper case."""

    model_config = SettingsConfigDict(
        env_prefix="ROWCAST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    postgres_dsn: SecretStr = Field(
        SecretStr(f"postgresql://postgres@127.0.0.1:{DEV_POSTGRES_PORT}/rowcast"),
        description="libpq connection string of the database whose tables are watched.",
    )
    kafka_bootstrap: str = Field(
        f"127.0.0.1:{DEV_KAFKA_PORT}", description="Kafka bootstrap servers, comma separated."
    )
    kafka_controller_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the dev stack's KRaft controller listener "
        "(`rowcast dev up`; clients never use it); default: one above the broker's port.")
    kafka_client_id: str = Field(
        "rowcast", min_length=1, description="client.id of rowcast's Kafka clients; each "
        "long-running process adds its role (rowcast-source, -worker, -learner, -sink), so the "
        "broker's request metrics, quotas and group listings tell them apart.")
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_*.")
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) for SSL / SASL_SSL.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM), mTLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (PEM), mTLS.")
    kafka_reconnect_backoff_max_ms: int = Field(
        2000, ge=50, description="Longest wait between reconnects to a broker that is down "
        "(kafka-python's default, 30 s, kept the pipeline idle long after a broker came back).")
    topic_prefix: str = Field("rowcast", description="Debezium topic.prefix: <prefix>.<schema>.<table>.")
    kafka_session_timeout_s: float = Field(
        10.0, gt=0, description="Consumer group session timeout: a silent member is dropped after it.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of topics rowcast creates.")
    topic_replication_factor: int = Field(
        -1, ge=-1, description="Replicas of every topic rowcast (and faust) creates; -1 (not 0) "
        "defers to the broker's default.replication.factor, so a 3-broker cluster configured "
        "for 3 replicas gets them without anyone asking here.")
    topic_min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas set on topics rowcast creates: with "
        "acks=all a write succeeds only once this many replicas have it. None: the broker's "
        "default (min.insync.replicas).")
    slot_name: str = Field("rowcast", description="Logical replication slot of the CDC source.")
    publication_name: str = Field("rowcast", description="Publication the slot decodes.")
    source_max_changes: int = Field(
        5000, ge=1, description="Changes peeked per poll (checked at transaction boundaries)."
    )
    source_ack_every: int = Field(
        2000, ge=1, description="Wait for Kafka's acks after this many events (and advance the "
        "slot, between transactions): bounded memory, and a kill replays at most this many.")
    source_idle_backoff_max_s: float = Field(
        0.02, gt=0, description="Longest wait between looks at the flushed WAL position while "
        "the slot is idle (a cheap query; it bounds how late a lone commit is seen)."
    )
    process_nice: int = Field(
        0, ge=0, le=19, description="Niceness the long-running processes (source, worker, "
        "learner, sink) give themselves at start: on a machine shared with PostgreSQL, a "
        "positive value lets the application's writers win the cores when both want them "
        "(rowcast then catches up when they pause).")
    source_poll_interval_s: float = Field(
        0.015, ge=0, description="Shortest time between two source rounds (read, publish, "
        "await acks, confirm): commits made in between are published together (each round "
        "costs every stage one record per partition, and peeking, the server a peek and a "
        "slot advance); adds at most this to latency.")
    source_busy_rows_per_s: float = Field(
        2000, gt=0, description="Above this commit rate the gap between source rounds stretches "
        "with the rate (twice the rate, twice the gap), up to source_poll_interval_max_s: each "
        "round costs the pipeline about the same CPU whatever it carries (rowcast.connectors."
        "cdc_source.round_gap).")
    source_poll_interval_max_s: float = Field(
        0.05, ge=0, description="The longest the gap between source rounds stretches to under "
        "load.")
    source_protocol: Literal["stream", "peek"] = Field(
        "stream", description="How the source reads its slot: 'stream' = the streaming "
        "replication protocol (a walsender decodes each WAL record once and pushes it; the "
        "source confirms with status messages), 'peek' = pg_logical_slot_peek_binary_changes "
        "and pg_replication_slot_advance over SQL, each of which decodes again from the slot's "
        "restart LSN (for servers that refuse replication connections: the role still needs "
        "REPLICATION, and max_wal_senders must leave one free).")
    source_format: Literal["rowcast", "debezium"] = Field(
        "rowcast", description="What the CDC source writes to the change topics: 'rowcast' = "
        "change batches, many rows of one table and partition per record "
        "(rowcast.core.change_batch; ~10x the rows/s), 'debezium' = one Debezium envelope per "
        "row, for other consumers of the topics. Workers read both.")
    source_batch_rows: int = Field(
        500, ge=1, description="Most rows in one change batch record.")
    source_batch_bytes: int = Field(
        512 * 1024, ge=1024, description="A change batch record is closed once its rows' "
        "estimated size reaches this many bytes.")
    source_restart_nudge_s: float = Field(
        0.25, gt=0, description="How often the source has the server log running transactions, "
        "so the slot's restart LSN keeps up and each peek re-reads less WAL (see "
        "rowcast.connectors.slot.log_running_xacts); doubles, up to 15 s, while a transaction "
        "left open makes each of them wait.")
    heartbeat_interval_s: float = Field(
        5.0, ge=0, description="How often the source writes a WAL marker so slot lag is known "
        "in seconds and an idle table's slot still advances (0 turns it off).")
    source_watermarks: bool = Field(
        True, description="Write watermarks to every partition of every change topic: after "
        "each acknowledged batch and while idle, a record saying every change committed at or "
        "before an LSN is on that partition, so learners learn in commit order across "
        "partitions. Debezium-format consumers of the change topics see these records: key "
        '{"__rowcast":"watermark"}, null value (a tombstone of that key), header '
        "rowcast.watermark = the LSN as text; rowcast's workers skip them, others should too.")
    source_position_every_s: float = Field(
        0.25, ge=0, description="Shortest time between two saves of the source's remembered "
        "position (rowcast.source_positions), and always at stop. It drops what a slot hands "
        "out again after a PostgreSQL restart or crash (the server saves a slot's position only "
        "at checkpoints, and PostgreSQL 15-16 not even at shutdown when only it moved; a killed "
        "source finds the slot where it confirmed it), so a restart replays at most this much "
        "more to the change and predictions topics (the sink's upsert and the learner's "
        "each-row-once rule drop it). Once a round cost PostgreSQL a transaction a round "
        "(65 a second at 300 rows/s); 0 saves after every round.")
    watermark_interval_s: float = Field(
        0.05, gt=0, description="The source writes watermarks at most this often (after "
        "acknowledged batches, and once caught up): it bounds their cost when transactions are "
        "small, and adds at most about this much to the learning delay.")
    deployment_refresh_s: float = Field(
        2.0, gt=0, description="How often workers re-read rowcast.deployments.")
    stall_exit_s: float = Field(
        300.0, ge=0, description="A source, worker, learner or sink whose loop has not come "
        "round for this long logs where it is stuck, with every thread's stack, and exits with "
        "code 75 so that it is started again (rowcast.core.liveness): a client call that never "
        "returns must not leave a process alive and idle. Far above any healthy wait (a send "
        "to a broker that is down fails after 120 s); 0 turns it off.")
    score_batch_size: int = Field(
        16, ge=1, description="Records a scorer takes per batch (committed together once all "
        "its predictions are acknowledged): a change batch record holds up to "
        "source_batch_rows rows, so 16 bound a batch to ~8k rows (the latency of the rows "
        "first in it; the rows in memory at once are bounded by score_chunk_rows); per-row "
        "Debezium topics may want more.")
    score_batch_within_s: float = Field(
        0.001, gt=0, description="Longest wait, after a batch's first record, for more: the "
        "records of one source round come in one fetch, so 1 ms gathers them; at a steady "
        "trickle every row waits this long (p50 at 2,000 rows/s: 21-25 ms with 1 ms, 26-27 "
        "with 3 ms); under load batches fill first. An idle worker waits for the first record "
        "without any timer (rowcast.streams.micro_batches).")
    score_chunk_rows: int = Field(
        500, ge=1, description="A scorer works through a batch in chunks of consecutive records "
        "of at least this many rows (a change batch record is never split), scoring one while "
        "the one before is published and acknowledged: what bounds the rows in memory at "
        "once (~3 kB of Python objects each), whatever score_batch_size. The batch is still "
        "committed only once every chunk of it is acknowledged.")
    sink_batch_size: int = Field(2000, ge=1, description="Predictions upserted per transaction.")
    sink_poll_timeout_ms: int = Field(50, ge=1)
    sink_linger_ms: float = Field(
        2.0, ge=0, description="Once a prediction arrives at an idle sink, how long it waits for "
        "more before writing them in one transaction. The worker's producer (librdkafka) sends "
        "one request per partition, so a round's predictions arrive as several fetches within "
        "about a millisecond; without it each became a transaction of its own. 0: write at once.")
    sink_commit_interval_s: float = Field(
        0.5, ge=0, description="Shortest time between two commits of the sink's Kafka offsets "
        "(what is in Postgres; by a batch, an idle poll, a rebalance and at stop). A kill "
        "replays at most this long of records, which the upsert ignores; 0 commits after "
        "every batch (a synchronous broker round trip each).")
    worker_web_enabled: bool = Field(
        False, description="Run faust's own web server in the worker (off: rowcast does not need "
        "it; /metrics is served separately).")
    worker_web_port: int = Field(6066, description="Port of the faust worker's web server.")
    bind_host: str = Field("127.0.0.1", description="Address network services listen on.")
    source_metrics_port: int = Field(9464, ge=0, description="/metrics of rowcast source (0: off).")
    worker_metrics_port: int = Field(9465, ge=0, description="/metrics of rowcast worker (0: off).")
    sink_metrics_port: int = Field(9466, ge=0, description="/metrics of rowcast sink (0: off).")
    dashboard_port: int = Field(8050, ge=1, description="The live dashboard (and its /metrics).")
    dashboard_token: SecretStr | None = Field(
        None, description="Required by the dashboard and every /metrics endpoint when bind_host "
        "is not a loopback address (bearer token or ?token=).")
    metrics_without_token: bool = Field(
        False, description="Explicit opt-out: serve /metrics beyond loopback without the token.")
    lag_window_s: float = Field(
        30.0, gt=0, description="Window over which consumer verdicts are judged (Burrow).")
    lag_stop_after_s: float = Field(
        60.0, gt=0, description="No offset commit for this long while lagging: verdict STOP.")
    learner_checkpoint_s: float = Field(
        1.0, gt=0, description="The learner checkpoints (a new model version) at most this often "
        "while labels arrive; scorers hot-swap to each new version.")
    learner_checkpoint_every: int = Field(
        20000, ge=1, description="...or after this many label events, whichever comes first. "
        "In a bulk load the count decides: with 5,000, a checkpoint came every ~0.35 s and "
        "checkpoints took a quarter of the learner's time (200,000 labelled rows, py-spy); "
        "20,000 learned 7 % more labels a second for ~8 MB more memory (the learner keeps "
        "what it learned since its last checkpoint, ~0.34 kB a label); at 20,000 labels/s "
        "the count and the time agree.")
    learner_write_behind: bool = Field(
        True, description="Write each checkpoint in a thread with a PostgreSQL connection of "
        "its own while learning goes on (one in flight at most; a checkpoint that applies an "
        "operator's rollback, pause or promotion, or records challengers and drift, is still "
        "written in place). The learner used to wait for each checkpoint's server work.")
    learner_batch_size: int = Field(
        2000, ge=1, description="About how many label events a learner polls at once (in "
        "records: a scorer's batch record holds hundreds, so it asks for fewer records).")
    learner_fetch_wait_ms: int = Field(
        100, ge=0, description="How long the broker may hold a learner's fetch to gather more "
        "labels (up to 1 MiB; a bulk load fills that at once): at a trickle each source round "
        "would otherwise wake the learner and the broker once. Learning is not on the "
        "prediction's path; it adds at most this much to the learning delay. 0: every fetch "
        "returns with the first record.")
    label_retention_s: float = Field(
        7 * 86400.0, gt=0, description="How long a scored row's features wait for a label; what "
        "expires unlabelled is counted (rowcast_labels_expired_total).")
    model_versions_keep: int = Field(
        100, ge=1, description="Snapshots kept per deployment (older versions keep their metrics).")
    custom_model_modules: str = Field(
        "", description="Comma-separated Python modules (and their submodules) that custom "
        "'module:factory' models may come from; catalog models are always allowed. Empty: no "
        "custom models. Checked by rowcast deploy, by every worker and learner, and by the SQL "
        "function rowcast.deploy against the list the last rowcast init stored.")
    snapshot_key: SecretStr | None = Field(
        None, description="HMAC key signing model snapshots; default: a random key kept in "
        "snapshot_key_file.")
    snapshot_key_file: Path = Field(
        default_factory=_default_key_file, description="Where the random snapshot key lives "
        "when snapshot_key is not set (default $XDG_CONFIG_HOME/rowcast/snapshot.key, else "
        "~/.config/rowcast/snapshot.key); made absolute, so every process of one installation "
        "shares it whatever its working directory.")
    learner_metrics_port: int = Field(9467, ge=0, description="/metrics of rowcast learner (0: off).")
    state_dir: Path = Field(Path(".rowcast"), description="Dev stack data, logs and pid files.")
    kafka_version: str = Field("3.9.1", description="Apache Kafka broker version of the dev stack.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "rowcast", description="Downloaded broker jars live here."
    )

    def source_topic(self, schema: str, table: str) -> str:
        """Debezium's topic name for a table, with characters Kafka refuses replaced by ``_``
        (as Debezium's default topic naming strategy does)."""
        return f"{self.topic_prefix}.{_topic_safe(schema)}.{_topic_safe(table)}"

    def predictions_topic(self, deployment: str) -> str:
        return f"{self.topic_prefix}.predictions.{deployment}"

    def labels_topic(self, deployment: str) -> str:
        """One partition: the deployment's single learner reads its label events in one order."""
        return f"{self.topic_prefix}.labels.{deployment}"

    @property
    def models_topic(self) -> str:
        """Compacted: the latest snapshot per deployment (and pins), read by every scorer."""
        return f"{self.topic_prefix}.models"

    @property
    def scorer_group(self) -> str:
        """The faust workers' consumer group (faust's app id)."""
        return f"{self.topic_prefix}-scorer"

    @property
    def learner_group(self) -> str:
        return f"{self.topic_prefix}-learner"

    @property
    def sink_group(self) -> str:
        return f"{self.topic_prefix}-sink"

    def stages(self, deployments: Iterable[DeploymentTopics]) -> list[Stage]:
        """Which consumer group reads which topics, for these deployments: the one place the
        pipeline's wiring is declared (status, lag, reconcile, the demo and the dashboard read
        it from here)."""
        deployments = list(deployments)
        sources = {self.source_topic(d.schema, d.table) for d in deployments} | {
            self.source_topic(d.labels.schema, d.labels.table)
            for d in deployments if d.labels is not None}
        return [Stage("scorer", self.scorer_group, tuple(sorted(sources))),
                Stage("learner", self.learner_group,
                      tuple(sorted(self.labels_topic(d.name) for d in deployments))),
                Stage("sink", self.sink_group,
                      tuple(sorted(self.predictions_topic(d.name) for d in deployments)))]

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    @field_validator("topic_replication_factor")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 replicas cannot hold a record: use -1 for the broker's default "
                             "or a count of 1 or more")
        return value

    @field_validator("snapshot_key_file")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().absolute()

    def allowed_model_modules(self) -> tuple[str, ...]:
        """``custom_model_modules`` as a tuple of module names."""
        return tuple(m.strip() for m in self.custom_model_modules.split(",") if m.strip())

    def key_file(self) -> Path:
        """The absolute path of the snapshot key file (see ``snapshot_key_file``)."""
        return self.snapshot_key_file

    def kafka_client_config(self) -> dict[str, object]:
        """Connection and security settings passed through to every kafka-python client (None
        values dropped)."""
        cfg: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap.split(","),
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            ),
            "ssl_cafile": str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
            "ssl_certfile": str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
            "ssl_keyfile": str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            "reconnect_backoff_max_ms": self.kafka_reconnect_backoff_max_ms,
        }
        return {k: v for k, v in cfg.items() if v is not None}

    def for_role(self, role: str) -> Settings:
        """These settings for one long-running process: its Kafka clients say which it is.

        >>> Settings(_env_file=None).for_role("sink").kafka_client_id
        'rowcast-sink'
        """
        return self.model_copy(update={"kafka_client_id": f"{self.kafka_client_id}-{role}"})

    def to_env(self) -> dict[str, str]:
        """These settings as ``ROWCAST_*`` variables, to hand to child processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"ROWCAST_{name.upper()}"] = str(value)
        return env


def invalid_settings_line(exc: ValidationError) -> str:
    """One line naming every setting that did not validate, as the variable an operator sets.

    pydantic's own message is a multi-line report (and, raised from a command, a boxed
    traceback): an operator who typed ``ROWCAST_PROCESS_NICE=abc`` wants the variable, what is
    wrong and what was given. A secret's given value is never repeated.

    >>> try:
    ...     Settings(process_nice=20, _env_file=None)
    ... except ValidationError as exc:
    ...     print(invalid_settings_line(exc))
    setting ROWCAST_PROCESS_NICE: Input should be less than or equal to 19 (got 20)
    """
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"ROWCAST_{field.upper()}" if field else "settings"
        info = Settings.model_fields.get(field)
        secret = info is not None and "SecretStr" in str(info.annotation)
        given = "" if secret or "input" not in error else f" (got {error['input']!r})"
        parts.append(f"setting {name}: {error['msg']}{given}")
    return "; ".join(parts)
