"""Secrets stay out of every log and every screen; configured names are quoted everywhere; a
deployment whose table is dropped is reported, and the others go on."""

from __future__ import annotations

import uuid

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from psycopg import sql

from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import rowcast_cli
from tests.helpers.learning import fast, learned
from tests.helpers.services import SASL_PASSWORD
from tests.helpers.waiting import wait_until

SECRETS = ("pw-S3cr3t-x", "kafka-unused-S3cr3t", "dash-S3cr3t-z")


@pytest.mark.timeout(300)
def test_secrets_never_leak_and_odd_names_and_dropped_tables_are_handled(settings, pg_conn,
                                                                        pg_server, tmp_path):
    # the test cluster trusts local connections, so a password in the DSN is accepted unused
    dsn = pg_server.dsn.replace("postgres@", f"postgres:{SECRETS[0]}@")
    assert SECRETS[0] in dsn
    settings = fast(settings).model_copy(update={
        "postgres_dsn": dsn, "kafka_sasl_password": SECRETS[1], "dashboard_token": SECRETS[2]})
    odd = f'Odd "Rows" {uuid.uuid4().hex[:4]}'
    doomed = f"doomed_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(sql.SQL('CREATE TABLE public.{} (id int PRIMARY KEY, "a b" float8, '
                            '"the label" float8)').format(sql.Identifier(odd)))
    pg_conn.execute(f"CREATE TABLE {doomed} (id int PRIMARY KEY, x float8, y float8)")
    quoted = sql.Identifier("public", odd).as_string(pg_conn)
    outputs = [rowcast_cli(settings, "deploy", "oddly", "--table", quoted, "--target", "the label"),
               rowcast_cli(settings, "deploy", "doomed", "--table", doomed, "--target", "y"),
               # a user's own river pipeline (module:factory), imported by worker and learner
               rowcast_cli(settings, "deploy", "custom", "--table", quoted, "--target",
                           "the label", "--model", "tests.unit.custom_models:spend")]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    insert = sql.SQL("INSERT INTO public.{} VALUES (%s, %s, %s)").format(sql.Identifier(odd))

    with Pipeline(settings, tmp_path / "logs",
                  ("source", "worker", "learner", "sink", "dashboard")) as pipeline:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(insert, [(i, float(i), 2.0 * i) for i in range(30)])
        pg_conn.execute(f"INSERT INTO {doomed} VALUES (1, 1, 1)")
        wait_until(lambda: learned(pg_conn, "oddly") == 30, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        scored = pg_conn.execute('SELECT count(rowcast_score) FROM rowcast."oddly_scored"'
                                 ).fetchone()[0]
        assert scored == 30  # the view joins the oddly named table to its predictions

        # the application drops a watched table: the rest keeps running
        # the view rowcast.doomed_scored depends on it: plain DROP TABLE is refused, so CASCADE
        pg_conn.execute(f"DROP TABLE {doomed} CASCADE")
        with pg_conn.transaction():
            pg_conn.cursor().executemany(insert, [(i, float(i), 2.0 * i) for i in range(30, 40)])
        wait_until(lambda: learned(pg_conn, "oddly") == 40 and learned(pg_conn, "custom") == 40,
                   timeout_s=90, message=lambda: pipeline.log_tail("learner"))
        assert all(pipeline.alive().values()), pipeline.alive()
        reconcile = rowcast_cli(settings, "reconcile", "--json")
        report = {r["deployment"]: r for r in orjson.loads(reconcile.stdout)}
        assert reconcile.returncode == 1 and "no longer exists" in report["doomed"]["error"]
        listing = rowcast_cli(settings, "deployments")
        assert "TABLE DROPPED" in listing.stdout and "rowcast undeploy doomed" in listing.stdout
        outputs += [reconcile, listing, rowcast_cli(settings, "status", "--json", "--samples", "1"),
                    rowcast_cli(settings, "status", "--samples", "1"), rowcast_cli(settings, "lag"),
                    rowcast_cli(settings, "model", "versions", "oddly")]
        assert rowcast_cli(settings, "undeploy", "doomed").returncode == 0

    texts = [o.stdout + o.stderr for o in outputs]
    texts += [(tmp_path / "logs" / f"{name}.log").read_text(errors="replace")
              for name in pipeline.procs]
    for secret in SECRETS:
        assert not any(secret in text for text in texts), secret


@pytest.mark.timeout(240)
def test_sasl_credentials_reach_every_client(settings, pg_conn, kafka_server, tmp_path):
    """The whole pipeline through the broker's SASL/PLAIN listener: source, worker (faust and
    kafka-python), learner, sink and the CLI all log in; a wrong password is a clear error."""
    sasl = fast(settings).model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{kafka_server.sasl_port}",
        "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "rowcast", "kafka_sasl_password": SASL_PASSWORD})
    table = f"sasl_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    wrong = sasl.model_copy(update={"kafka_sasl_password": "not-the-password"})
    refused = rowcast_cli(wrong, "deploy", "refused", "--table", table, "--target", "y")
    assert refused.returncode != 0
    assert "not-the-password" not in refused.stdout + refused.stderr
    deployed = rowcast_cli(sasl, "deploy", "sasl", "--table", table, "--target", "y")
    assert deployed.returncode == 0, deployed.stderr
    with Pipeline(sasl, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                                         [(i, float(i), 2.0 * i) for i in range(20)])
        wait_until(lambda: learned(pg_conn, "sasl") == 20 and pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'sasl'").fetchone()[0]
            == 20, timeout_s=120, message=lambda: "\n".join(
                f"--- {n}\n{pipeline.log_tail(n, 20)}" for n in pipeline.procs))
        assert rowcast_cli(sasl, "lag").returncode == 0
    for name in pipeline.procs:
        assert SASL_PASSWORD not in (tmp_path / "logs" / f"{name}.log").read_text(errors="replace")


def run_through(settings, pg_conn, tmp_path, name: str) -> None:
    """Deploy ``name`` and stream 20 labelled rows through every process with ``settings``:
    scored, stored and learned, so every Kafka client (source, faust worker and its kafka-python
    publisher and model feed, learner, sink, CLI) connected with them."""
    table = f"{name}_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    deployed = rowcast_cli(settings, "deploy", name, "--table", table, "--target", "y")
    assert deployed.returncode == 0, deployed.stderr
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                                         [(i, float(i), 2.0 * i) for i in range(20)])
        wait_until(lambda: learned(pg_conn, name) == 20 and pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = %s",
            (name,)).fetchone()[0] == 20, timeout_s=120, message=lambda: "\n".join(
                f"--- {n}\n{pipeline.log_tail(n, 20)}" for n in pipeline.procs))


@pytest.mark.timeout(240)
def test_tls_settings_reach_every_client(settings, pg_conn, kafka_server, tmp_path):
    """The pipeline through the broker's TLS listener, trusting its certificate via
    ROWCAST_KAFKA_SSL_CAFILE (hostname checked); without the CA the handshake is refused."""
    tls = fast(settings).model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{kafka_server.ssl_port}", "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": kafka_server.ssl_ca})
    with pytest.raises(KafkaError):  # the certificate is self-signed: without the CA, refused
        KafkaAdminClient(bootstrap_servers=tls.kafka_bootstrap, security_protocol="SSL",
                         request_timeout_ms=3000, api_version_auto_timeout_ms=3000).close()
    run_through(tls, pg_conn, tmp_path, "tls")


@pytest.mark.timeout(240)
def test_mutual_tls_client_certificate_reaches_every_client(settings, pg_conn, kafka_server,
                                                            tmp_path):
    """A listener that demands a client certificate (``ssl.client.auth=required``): with the CA
    alone the broker refuses rowcast with a clear error; with ROWCAST_KAFKA_SSL_CERTFILE and
    _KEYFILE every process gets in."""
    mtls = fast(settings).model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{kafka_server.mtls_port}",
        "kafka_security_protocol": "SSL", "kafka_ssl_cafile": kafka_server.ssl_ca})
    table = f"nocert_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    refused = rowcast_cli(mtls, "deploy", "nocert", "--table", table, "--target", "y")
    assert refused.returncode != 0
    assert "Kafka" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    with_cert = mtls.model_copy(update={"kafka_ssl_certfile": kafka_server.client_cert,
                                        "kafka_ssl_keyfile": kafka_server.client_key})
    run_through(with_cert, pg_conn, tmp_path, "mtls")
