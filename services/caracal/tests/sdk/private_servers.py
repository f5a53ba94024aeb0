"""Private Postgres and Redis servers for fault tests: each on its own loopback port and data
directory, so a test can stop and restart them without touching the shared servers that every
other test uses. Both keep their data across a restart (Redis with an fsync-always append-only
file), as production does."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from caracal_server import free_port

START_TIMEOUT_SECONDS = 30


def _postgres_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()])
    return versions[-1] / "bin" if versions else None


def unavailable_reason() -> str | None:
    """Why private servers cannot run here, or None."""
    if _postgres_bin() is None:
        return "no Postgres server binaries under /usr/lib/postgresql"
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server / redis-cli are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    return None


def _wait(check, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {START_TIMEOUT_SECONDS}s")


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="caracal-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}"

    def _ping(self) -> bool:
        return subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG"

    def start(self) -> None:
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.dir / "redis.log"),
             "--pidfile", str(self.dir / "redis.pid")],
            check=True, capture_output=True)
        _wait(self._ping, f"private Redis on {self.port}")

    def stop(self) -> None:
        """A clean shutdown (what an operator's restart does); the AOF keeps every entry."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True)
        _wait(lambda: not self._ping(), f"private Redis on {self.port} stopping")

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    def close(self) -> None:
        if self._ping():
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
                           capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    def __init__(self) -> None:
        bin_dir = _postgres_bin()
        assert bin_dir is not None, unavailable_reason()
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="caracal-pg-"))
        self.data = self.root / "data"
        self.socket = self.root / "sock"
        self.database = "caracal"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True)

    def _ready(self) -> bool:
        return subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                               str(self.port)]).returncode == 0

    def init(self) -> None:
        self.socket.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket, "postgres")
        result = self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                 "--auth=trust", "-E", "UTF8", "--no-sync"])
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stdout}{result.stderr}")
        self.start()
        result = self._as_owner([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p",
                                 str(self.port), "-U", "postgres", self.database])
        if result.returncode != 0:
            raise RuntimeError(f"createdb failed: {result.stderr}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.socket} -c max_connections=200")
        result = self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                                 str(self.root / "postgres.log"), "-o", options, "-w", "start"])
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}")
        _wait(self._ready, f"private Postgres on {self.port}")

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: open connections are cut, as in a failover or a crash of the
        clients' view."""
        result = self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                 "-w", "stop"])
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {result.stdout}{result.stderr}")

    def psql(self, sql: str) -> str:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", self.database, "-At", "-c", sql], capture_output=True,
                              text=True, check=True).stdout.strip()

    def close(self) -> None:
        if self._ready():
            self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)
