"""A private PostgreSQL cluster with logical decoding on, as a local process (Debian's binaries).

``initdb`` and ``postgres`` refuse to run as root, so when rowcast runs as root (CI, containers)
the server runs as the ``postgres`` system user through ``runuser``; its data folder is handed to
that user, and every folder above it must be traversable by it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from rowcast.core.errors import DevStackError
from rowcast.ops.devstack.process import wait_for

SERVER_USER = "postgres"


def find_bin_dir() -> Path:
    """Debian's server binaries, preferring PostgreSQL 15."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: (not p.startswith("/usr/lib/postgresql/15/"), p))
    if candidates:
        return Path(candidates[0]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and (Path(found.stdout.strip()) / "initdb").exists():
            return Path(found.stdout.strip())
    raise DevStackError("PostgreSQL server binaries (initdb) not found: "
                        "apt-get install -y postgresql-15")


@dataclass
class PostgresServer:
    """One cluster in ``data_dir`` listening on ``host:port``, by default ``wal_level=logical``."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    bin_dir: Path | None = None
    max_replication_slots: int = 20
    max_wal_senders: int = 10
    fast: bool = False  # fsync off: for throwaway test clusters only
    wal_level: str = "logical"  # anything else only to test that rowcast refuses it

    def __post_init__(self) -> None:
        self.bin_dir = self.bin_dir or find_bin_dir()
        self._as_root = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/rowcast"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise DevStackError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def _hand_to_server_user(self) -> None:
        """Root cannot run Postgres: give the folders to ``postgres`` and check it can reach them."""
        if not self._as_root:
            return
        user = pwd.getpwnam(SERVER_USER)
        for path in (self.data_dir.parent, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.data_dir, 0o700)
        for parent in self.data_dir.parents:
            if not os.stat(parent).st_mode & 0o001 and os.stat(parent).st_uid != user.pw_uid:
                raise DevStackError(
                    f"the {SERVER_USER} user cannot traverse {parent}, so it cannot run the dev "
                    "Postgres below it: choose a state folder elsewhere (ROWCAST_STATE_DIR) or "
                    f"chmod o+x {parent}")

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._hand_to_server_user()
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def start(self, timeout_s: float = 60.0) -> None:
        self.init()
        if not self.is_running():
            options = [
                f"-c wal_level={self.wal_level}",
                f"-c max_replication_slots={self.max_replication_slots}",
                f"-c max_wal_senders={self.max_wal_senders}",
                f"-c listen_addresses={self.host}",
                f"-p {self.port}",
                f"-k {self.data_dir}",
            ]
            if self.fast:
                options += ["-c fsync=off", "-c full_page_writes=off"]
            self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
                      "-o", " ".join(options), "-w", "-t", str(int(timeout_s)), timeout=timeout_s + 10)
        wait_for(self._accepts_connections, timeout_s, f"PostgreSQL on port {self.port}",
                 log=self.log_file)
        with psycopg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'rowcast'").fetchone() is None:
                conn.execute("CREATE DATABASE rowcast")

    def _accepts_connections(self) -> bool:
        try:
            psycopg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres", connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def stop(self, timeout_s: float = 30.0, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no shutdown checkpoint, crash
        recovery on the next start), which the fault tier uses."""
        if self.is_running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                      "-t", str(int(timeout_s)), timeout=timeout_s + 10)
