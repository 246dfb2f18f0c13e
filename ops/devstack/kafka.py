"""A real Apache Kafka broker (KRaft) as a local process, from Maven Central jars; or a cluster of them.

:class:`KafkaServer` is one node in combined mode (broker and controller). Alone it is the dev
stack's and the tests' broker (replication factor 1); :class:`KafkaCluster` runs several on
loopback as one KRaft cluster (every node a voter, default replication factor 3, 2 in-sync
replicas required), which is how rowcast is tried against a broker that loses its leadership.

Why 3.9.1: it is the newest line whose old protocol versions aiokafka 0.14 (faust-streaming 0.15)
and kafka-python 3.0 still speak everywhere; Kafka 4.0 removed some of them. The jars are fetched
once with the machine's Maven into ``<cache>/kafka/<version>/libs`` (atomically: a half-finished
fetch is redone), then every broker runs ``kafka.Kafka`` from that classpath.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rowcast.core.errors import DevStackError
from rowcast.ops.devstack.process import pid_alive, read_pid, terminate, terminate_all, wait_for

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
                             node_id: int = 1, voters: str | None = None,
                             replication: int = 1, sasl_port: int | None = None,
                             sasl_users: dict[str, str] | None = None,
                             ssl_port: int | None = None, ssl_keystore: Path | None = None,
                             ssl_password: str = "", mtls_port: int | None = None,
                             mtls_truststore: Path | None = None) -> str:
    """KRaft combined mode, tuned for a laptop: instant group joins. Alone (``voters`` None) the
    node is its own quorum and every internal topic has one replica; in a cluster ``voters`` lists
    every node (``id@host:port,...``) and ``replication`` is the cluster's default replication
    factor, with ``replication - 1`` in-sync replicas required (at least 1). With
    ``sasl_port`` a second listener takes SASL/PLAIN logins from ``sasl_users`` (how the tests
    prove credentials reach every client); with ``ssl_port`` a TLS listener serves the PKCS12
    ``ssl_keystore``; with ``mtls_port`` a TLS listener with the same key also demands a client
    certificate that ``mtls_truststore`` trusts (mutual TLS)."""
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters or f"{node_id}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": 1,
        "default.replication.factor": replication,
        "min.insync.replicas": max(1, replication - 1),
        "offsets.topic.replication.factor": replication,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": max(1, replication - 1),
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
    node_id: int = 1
    voters: str | None = None  # a cluster's controller.quorum.voters; None: a node of its own
    replication: int = 1  # the cluster's default replication factor
    cluster_id: str | None = None  # shared by every node of a cluster; None: a random one
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log_start: int = field(default=0, init=False, repr=False)

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
        # C1 only: a dev, test or bench broker lives minutes, and C2 kept recompiling its
        # request paths for as long as the bench measured (40-160 µs of CPU per row on the
        # compiler threads, after 80,000 warm-up rows, on cores the writer and rowcast share);
        # with C1 the compiler is quiet after ~20,000 rows and the request threads cost the same
        # per row (29 µs at 5,000 single-row commits/s). A production broker is not started here.
        return ["java", "-XX:TieredStopAtLevel=1", f"-Xmx{self.heap}",
                f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{libs}/*", main, *args]

    def start(self, timeout_s: float = 60.0) -> None:
        if self.is_running():
            return
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the JVM without waiting: a cluster's nodes only answer once a quorum of them
        runs, so :class:`KafkaCluster` launches every node before it waits for any."""
        if self.is_running():
            return
        self.check_ports()
        libs = fetch_kafka(self.version, self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(render_server_properties(
            data_dir=self.data_dir, host=self.host, port=self.port,
            controller_port=self.controller_port, node_id=self.node_id, voters=self.voters,
            replication=self.replication, sasl_port=self.sasl_port,
            sasl_users=self.sasl_users, ssl_port=self.ssl_port,
            ssl_keystore=self._make_keystore() if self.ssl_port or self.mtls_port else None,
            ssl_password=KEYSTORE_PASSWORD, mtls_port=self.mtls_port,
            mtls_truststore=self._make_truststore() if self.mtls_port else None))
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = self.cluster_id or new_cluster_id()
            formatted = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                           "-c", str(props)), capture_output=True, text=True, timeout=120)
            if formatted.returncode != 0:
                raise DevStackError(f"formatting Kafka storage failed: {formatted.stderr[-2000:]}")
        with open(self.log_file, "ab") as log:
            self._log_start = log.tell()
            proc = subprocess.Popen(self._java(libs, "kafka.Kafka", str(props)), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.data_dir)
        self.pid_file.write_text(str(proc.pid))
        self._proc = proc

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the broker answers a metadata request (or its JVM exits: an error with its log)."""
        proc = self._proc

        def exited() -> bool:
            return proc.poll() is not None if proc is not None else not self.is_running()

        wait_for(lambda: exited() or self._accepts_clients(), timeout_s,
                 f"Kafka on {self.bootstrap} accepting clients", interval_s=0.25,
                 log=self.log_file)
        if exited():
            reason = None
            with contextlib.suppress(OSError), open(self.log_file, "rb") as log:
                if proc is None:  # not launched by this process: its log may be an old run's
                    raise OSError
                log.seek(self._log_start)
                reason = exit_reason(log.read().decode("utf-8", "replace"))
            raise DevStackError(f"Kafka exited (code {proc.returncode if proc else '?'})"
                                f"{': ' + reason.rstrip('.') if reason else ''}; see {self.log_file}")

    def check_ports(self) -> None:
        """Refuse, naming the listener, when one of this broker's ports is taken: the JVM would
        start, fail to bind and exit seconds later with the reason deep in its log.

        Bound as the broker binds (``SO_REUSEADDR``, as Java's server sockets on Linux), so a
        closed connection lingering in TIME_WAIT is no obstacle, a listener or a live
        connection on that port is."""
        ports = {"broker": self.port, "controller": self.controller_port,
                 "SASL": self.sasl_port, "TLS": self.ssl_port, "mutual-TLS": self.mtls_port}
        for role, port in ports.items():
            if port is None:
                continue
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError:
                    raise PortTaken(role, f"{self.host}:{port}") from None

    def _accepts_clients(self, timeout_s: float = 2.0) -> bool:
        """Whether the broker answers a metadata request within ``timeout_s``.

        Asked with librdkafka, whose calls end at their timeout: kafka-python 3.0.12's blocking
        calls wait on an event with no deadline (its issue 3121, fixed after that release), and
        a probe made while the broker restarted was seen to block the caller forever."""
        import logging

        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        # a refused connection is the expected answer while the broker starts: not logged
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "client.id": "rowcast-devstack",
                             "log_level": 0}, logger=logging.getLogger(__name__))
        try:
            return bool(admin.list_topics(timeout=timeout_s).brokers)
        except KafkaException:
            return False

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



class PortTaken(DevStackError):
    """A port the broker would listen on is already in use; ``role`` says which listener."""

    def __init__(self, role: str, address: str) -> None:
        super().__init__(f"Kafka's {role} port {address} is in use by another process")
        self.role = role
        self.address = address


_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d ")  # log4j's "[2026-11-30 12:22:00,259] LEVEL ..."
_EXCEPTION_LINE = re.compile(r"^(?:Caused by: )?[\w.$]+(?:Exception|Error): (.+)$")


def exit_reason(log: str) -> str | None:
    """The telling message of the last error in a broker's log, or None.

    A broker that exits logs one ``ERROR`` line and a chain of causes whose innermost is often
    the least specific ("Address already in use"): the deepest cause that names a port, an
    address or a file (a digit or a slash in it) says what to fix.

    >>> exit_reason("x ERROR fatal\\njava.lang.RuntimeException: acceptors not started\\n"
    ...             "Caused by: a.B.FooException: failed to bind to 127.0.0.1:9\\n"
    ...             "Caused by: java.net.BindException: in use\\n")
    'failed to bind to 127.0.0.1:9'
    """
    lines = log.splitlines()
    errors = [i for i, line in enumerate(lines) if " ERROR " in line]
    if not errors:
        return None
    block = [lines[errors[-1]]]
    for line in lines[errors[-1] + 1:]:  # its stack trace: up to the next log line
        if _LOG_LINE.match(line):
            break
        block.append(line)
    messages = [m.group(1).strip() for line in block
                if (m := _EXCEPTION_LINE.match(line.strip()))]
    specific = [m for m in messages if any(c.isdigit() or c == "/" for c in m)]
    if specific or messages:
        return (specific or messages)[-1]
    return lines[errors[-1]].split(" ERROR ", 1)[1]


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaCluster:
    """``len(ports)`` KRaft nodes on loopback, each broker and controller, one cluster id.

    Every node lives in ``data_dir/node-<id>``; the cluster id is kept in ``data_dir/cluster.id``
    so a node whose storage was lost rejoins the same cluster. One node down leaves a quorum of
    controllers and, with the default replication factor 3 and 2 in-sync replicas required,
    every partition writable: that is what :meth:`kill` and a rolling :meth:`restart` exercise.
    """

    data_dir: Path
    ports: list[int]
    controller_ports: list[int]
    version: str = "3.9.1"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "rowcast")
    host: str = "127.0.0.1"
    heap: str = "384m"
    servers: list[KafkaServer] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.ports) != len(self.controller_ports) or not self.ports:
            raise DevStackError("a Kafka cluster needs one broker and one controller port per node")
        voters = ",".join(f"{i}@{self.host}:{port}"
                          for i, port in enumerate(self.controller_ports, start=1))
        self.servers = [
            KafkaServer(self.data_dir / f"node-{i}", port, controller, version=self.version,
                        cache_dir=self.cache_dir, host=self.host, heap=self.heap, node_id=i,
                        voters=voters, replication=min(3, len(self.ports)))
            for i, (port, controller) in enumerate(zip(self.ports, self.controller_ports,
                                                       strict=True), start=1)]

    def _cluster_id(self) -> str:
        path = self.data_dir / "cluster.id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    @property
    def bootstrap(self) -> str:
        """Every node, comma separated: clients reach the cluster while any one of them is up."""
        return ",".join(s.bootstrap for s in self.servers)

    def node(self, node_id: int) -> KafkaServer:
        return self.servers[node_id - 1]

    def is_running(self) -> bool:
        return any(s.is_running() for s in self.servers)

    def start(self, timeout_s: float = 120.0) -> None:
        """Launch every node, then wait for each (none answers before a quorum runs)."""
        cluster_id = self._cluster_id()
        for server in self.servers:  # every port first: a refusal leaves no node running
            if not server.is_running():
                server.check_ports()
        for server in self.servers:
            server.cluster_id = cluster_id
            server.launch()
        for server in self.servers:
            server.wait_ready(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Every node at once (:func:`terminate_all`: stopped one by one, the last waited for
        a quorum that had gone)."""
        running = [(server, pid) for server in self.servers
                   if (pid := read_pid(server.pid_file)) is not None]
        terminate_all([pid for _, pid in running], timeout_s)
        for server in self.servers:
            server.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """kill -9 of every node (a test's last resort: nothing may be left running)."""
        for server in self.servers:
            server.kill()

    def in_sync(self, topics: list[str] | None = None) -> bool:
        """Whether every partition (of ``topics``, default all) has all its replicas in sync."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap.split(","),
                                     request_timeout_ms=5000, client_id="rowcast-devstack")
        except (KafkaError, OSError):
            return False
        try:
            described = admin.describe_topics(topics)
            return all(len(p["isr_nodes"]) == len(p["replica_nodes"])
                       for t in described for p in t["partitions"]) and bool(described)
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def wait_in_sync(self, topics: list[str] | None = None, timeout_s: float = 120.0) -> None:
        """Until no partition is under-replicated: what a rolling restart waits for before it
        takes the next node down."""
        wait_for(lambda: self.in_sync(topics), timeout_s, "every Kafka partition back in sync",
                 interval_s=0.5)

    def restart(self, node_id: int, timeout_s: float = 120.0) -> None:
        """One step of a rolling restart: a clean stop of one node, its start, and a wait until
        every partition is in sync again."""
        server = self.node(node_id)
        server.cluster_id = self._cluster_id()
        server.stop()
        server.start(timeout_s)
        self.wait_in_sync(timeout_s=timeout_s)
