"""A real Apache Kafka broker (KRaft, single node) as a local process, from Maven Central jars.

Why 3.9.1: it is the newest line whose old protocol versions aiokafka 0.14 (faust-streaming 0.15)
and kafka-python 3.0 still speak everywhere; Kafka 4.0 removed some of them. The jars are fetched
once with the machine's Maven into ``<cache>/kafka/<version>/libs`` (atomically: a half-finished
fetch is redone), then every broker runs ``kafka.Kafka`` from that classpath.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rowcast.core.errors import DevStackError
from rowcast.ops.devstack.process import pid_alive, read_pid, terminate, wait_for

READY = "READY"

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rowcast</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

LOG4J = """log4j.rootLogger=WARN, stdout
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


def render_pom(version: str) -> str:
    return POM.format(version=version)


def render_server_properties(*, data_dir: Path, host: str, port: int, controller_port: int,
                             node_id: int = 1, sasl_port: int | None = None,
                             sasl_users: dict[str, str] | None = None,
                             ssl_port: int | None = None, ssl_keystore: Path | None = None,
                             ssl_password: str = "", mtls_port: int | None = None,
                             mtls_truststore: Path | None = None) -> str:
    """KRaft combined mode, one node, tuned for a laptop: instant group joins, RF 1. With
    ``sasl_port`` a second listener takes SASL/PLAIN logins from ``sasl_users`` (how the tests
    prove credentials reach every client); with ``ssl_port`` a TLS listener serves the PKCS12
    ``ssl_keystore``; with ``mtls_port`` a TLS listener with the same key also demands a client
    certificate that ``mtls_truststore`` trusts (mutual TLS)."""
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": f"{node_id}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "log.retention.hours": 24,
        "log.segment.bytes": 64 * 1024 * 1024,
    }
    def listener(name: str, protocol: str, listener_port: int) -> str:
        props["listeners"] += f",{name}://{host}:{listener_port}"
        props["advertised.listeners"] += f",{name}://{host}:{listener_port}"
        props["listener.security.protocol.map"] += f",{name}:{protocol}"
        return f"listener.name.{name.lower()}."

    def keystore(prefix: str, store: Path) -> None:
        props.update({f"{prefix}ssl.keystore.location": str(store),
                      f"{prefix}ssl.keystore.type": "PKCS12",
                      f"{prefix}ssl.keystore.password": ssl_password,
                      f"{prefix}ssl.key.password": ssl_password})

    if sasl_port is not None:
        users = " ".join(f'user_{u}="{p}"' for u, p in (sasl_users or {}).items())
        prefix = listener("SASL_PLAINTEXT", "SASL_PLAINTEXT", sasl_port)
        props["sasl.enabled.mechanisms"] = "PLAIN"
        props[f"{prefix}plain.sasl.jaas.config"] = (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};")
    if ssl_port is not None and ssl_keystore is not None:
        keystore(listener("SSL", "SSL", ssl_port), ssl_keystore)
    if mtls_port is not None and ssl_keystore is not None and mtls_truststore is not None:
        prefix = listener("MTLS", "SSL", mtls_port)
        keystore(prefix, ssl_keystore)
        props.update({f"{prefix}ssl.truststore.location": str(mtls_truststore),
                      f"{prefix}ssl.truststore.type": "PKCS12",
                      f"{prefix}ssl.truststore.password": ssl_password,
                      f"{prefix}ssl.client.auth": "required"})
    return "".join(f"{k}={v}\n" for k, v in props.items())


def fetch_kafka(version: str, cache_dir: Path) -> Path:
    """The classpath folder of Kafka ``version``, downloading it with Maven the first time."""
    home = cache_dir / "kafka" / version
    libs = home / "libs"
    if (home / READY).exists():
        return libs
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise DevStackError(f"`{tool}` is not installed; rowcast's dev stack runs Apache Kafka "
                                "from Maven Central (apt-get install -y maven openjdk-17-jre-headless)")
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(render_pom(version))
        staged = Path(tmp) / "libs"
        done = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={staged}", "-DincludeScope=runtime"],
            capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not any(staged.glob("kafka_2.13-*.jar")):
            raise DevStackError(f"fetching Apache Kafka {version} from Maven Central failed:\n"
                                f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        staged.rename(libs)
    (home / "log4j.properties").write_text(LOG4J)
    (home / READY).write_text(version)
    return libs


KEYSTORE_PASSWORD = "rowcast-dev-keystore"  # a throwaway self-signed key for local tests only


@dataclass
class KafkaServer:
    """One broker in ``data_dir``; ``start`` formats storage the first time."""

    data_dir: Path
    port: int
    controller_port: int
    version: str = "3.9.1"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "rowcast")
    host: str = "127.0.0.1"
    heap: str = "512m"
    sasl_port: int | None = None
    sasl_users: dict[str, str] = field(default_factory=dict)
    ssl_port: int | None = None
    mtls_port: int | None = None

    @property
    def ssl_ca(self) -> Path:
        """The TLS listener's self-signed certificate (PEM): clients trust it as their CA."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def client_cert(self) -> Path:
        """The certificate (PEM) the mutual-TLS listener accepts from clients."""
        return self.data_dir / "tls" / "client.pem"

    @property
    def client_key(self) -> Path:
        """The private key (PEM, unencrypted) of :attr:`client_cert`."""
        return self.data_dir / "tls" / "client.key"

    def _make_truststore(self) -> Path:
        """A client key pair (openssl) whose certificate the mutual-TLS listener trusts, made
        once: the broker's truststore holds exactly that certificate."""
        store = self.data_dir / "tls" / "clients.p12"
        if not store.exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            if shutil.which("openssl") is None:
                raise DevStackError("`openssl` is not installed (apt-get install -y openssl); "
                                    "the mutual-TLS listener needs a client key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(self.client_key), "-out", str(self.client_cert),
                            "-days", "30", "-subj", "/CN=rowcast-client"],
                           check=True, capture_output=True)
            self.client_key.chmod(0o600)
            subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "rowcast-client",
                            "-file", str(self.client_cert), "-storetype", "PKCS12",
                            "-keystore", str(store), "-storepass", KEYSTORE_PASSWORD],
                           check=True, capture_output=True)
        return store

    def _make_keystore(self) -> Path:
        """A self-signed key pair for 127.0.0.1 (keytool ships with the JDK), made once."""
        tls = self.data_dir / "tls"
        store = tls / "broker.p12"
        if not store.exists():
            tls.mkdir(parents=True, exist_ok=True)
            subprocess.run(["keytool", "-genkeypair", "-alias", "broker", "-keyalg", "RSA",
                            "-keysize", "2048", "-validity", "30", "-storetype", "PKCS12",
                            "-keystore", str(store), "-storepass", KEYSTORE_PASSWORD,
                            "-keypass", KEYSTORE_PASSWORD, "-dname", f"CN={self.host}",
                            "-ext", f"SAN=IP:{self.host}"], check=True, capture_output=True)
            subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "broker", "-keystore",
                            str(store), "-storepass", KEYSTORE_PASSWORD, "-file",
                            str(self.ssl_ca)], check=True, capture_output=True)
        return store

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    def is_running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        log4j = libs.parent / "log4j.properties"
        return ["java", f"-Xmx{self.heap}", f"-Dlog4j.configuration=file:{log4j}",
                "-cp", f"{libs}/*", main, *args]

    def start(self, timeout_s: float = 60.0) -> None:
        if self.is_running():
            return
        libs = fetch_kafka(self.version, self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(render_server_properties(
            data_dir=self.data_dir, host=self.host, port=self.port,
            controller_port=self.controller_port, sasl_port=self.sasl_port,
            sasl_users=self.sasl_users, ssl_port=self.ssl_port,
            ssl_keystore=self._make_keystore() if self.ssl_port or self.mtls_port else None,
            ssl_password=KEYSTORE_PASSWORD, mtls_port=self.mtls_port,
            mtls_truststore=self._make_truststore() if self.mtls_port else None))
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            formatted = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                           "-c", str(props)), capture_output=True, text=True, timeout=120)
            if formatted.returncode != 0:
                raise DevStackError(f"formatting Kafka storage failed: {formatted.stderr[-2000:]}")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self._java(libs, "kafka.Kafka", str(props)), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.data_dir)
        self.pid_file.write_text(str(proc.pid))
        wait_for(lambda: proc.poll() is not None or self._accepts_clients(), timeout_s,
                 f"Kafka on {self.bootstrap} accepting clients", interval_s=0.25,
                 log=self.log_file)
        if proc.poll() is not None:
            raise DevStackError(f"Kafka exited with code {proc.returncode}; see {self.log_file}")

    def _accepts_clients(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000,
                                     client_id="rowcast-devstack")
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def kill(self) -> None:
        """kill -9 of the broker (fault injection): no controlled shutdown, log recovery on the
        next start."""
        pid = read_pid(self.pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # reap it when it is ours
            wait_for(lambda: not pid_alive(pid), 10, f"Kafka (pid {pid}) gone")
        self.pid_file.unlink(missing_ok=True)

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None:
            terminate(pid, timeout_s)
        self.pid_file.unlink(missing_ok=True)

