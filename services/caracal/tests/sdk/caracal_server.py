"""Starting and stopping the real `caracal` binary for the end-to-end suite.

The suite never links against the server: it runs the binary the way an operator would (a
command, environment variables, a port) and talks to it only over HTTP, so what passes here is
what a user of the official SDK gets.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HEALTH_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
PG_HOST = "127.0.0.1"
PG_USER = "postgres"
PG_PORT = os.environ.get("PGPORT", "5432")
# The suite's own Redis database: benchmarks and `cargo xtask up` use others, and whatever an
# earlier run left here (audit backlog, streams, counters) is flushed once per test process
# before the first Postgres-mode server starts (see `reset_test_redis`).
REDIS_DB = 1
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
_redis_reset = False


def redis_command(*commands: bytes) -> bytes:
    """Sends raw RESP inline commands to the suite's Redis database; answers the raw reply."""
    with socket.create_connection(("127.0.0.1", 6379), timeout=5) as conn:
        conn.sendall(f"SELECT {REDIS_DB}\r\n".encode() + b"".join(c + b"\r\n" for c in commands))
        data = b""
        conn.settimeout(1)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    return data


def reset_test_redis() -> None:
    """Empties the suite's Redis database once per test process: a backlog another run left on
    the audit stream would otherwise be ingested (and refused, signed with another key) before
    this run's events."""
    global _redis_reset
    if not _redis_reset:
        reply = redis_command(b"FLUSHDB")
        assert b"-ERR" not in reply, reply
        _redis_reset = True

# The upstream per-minute limits (600 /v1 requests per IP, 60 failed logins per IP) are real
# behaviour, but this suite sends far more than that from one address within a minute. Raising
# them through their upstream variables keeps a slow machine from turning into 429 flakes.
RATE_LIMIT_ENV = {
    "API_V1_RATE_LIMIT_PER_MIN": "1000000",
    "ADMIN_AUTH_FAIL_LIMIT_PER_MIN": "1000000",
    "STS_MINT_RATE_LIMIT_PER_MIN": "1000000",
    "COORDINATOR_RATE_LIMIT_PER_MIN": "1000000",
    "READY_RATE_LIMIT_PER_MIN": "1000000",
    "VERIFY_RATE_LIMIT_PER_MIN": "1000000",
    "INVOCATION_RATE_LIMIT_PER_MIN": "1000000",
}


def caracal_binary() -> Path:
    """The binary under test: CARACAL_BIN (set by `cargo xtask test`), else the debug build."""
    explicit = os.environ.get("CARACAL_BIN")
    if explicit:
        return Path(explicit)
    repo = Path(__file__).resolve().parents[4]
    target = Path(os.environ.get("CARGO_TARGET_DIR") or repo / "target")
    return target / "debug" / "caracal"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process handed out before: the kernel may
    offer a just-released ephemeral port again, and one server's services would then collide
    (seen: the API refused to start on the port just given to the Coordinator)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def new_admin_token() -> str:
    return "cat_" + secrets.token_urlsafe(32)


@dataclass
class Database:
    """A throwaway Postgres database, created fresh and dropped at teardown."""

    name: str = field(default_factory=lambda: "caracal_e2e_" + secrets.token_hex(6))

    @property
    def url(self) -> str:
        return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def create(self) -> None:
        psql(f"CREATE DATABASE {self.name}")

    def drop(self) -> None:
        # FORCE: a server that died mid-test may still hold connections.
        psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)", check=False)


def psql(sql: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["psql", "-h", PG_HOST, "-U", PG_USER, "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed: {result.stderr.strip()}")
    return result


def postgres_unavailable_reason() -> str | None:
    """None when Postgres and Redis answer; otherwise why the postgres mode cannot run."""
    try:
        result = psql("SELECT 1", check=False)
    except FileNotFoundError:
        return "psql is not installed"
    except subprocess.TimeoutExpired:
        return f"Postgres at {PG_HOST}:{PG_PORT} did not answer within 60 s"
    if result.returncode != 0:
        return f"Postgres at {PG_HOST}:{PG_PORT} is unreachable: {' '.join(result.stderr.split())}"
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            if not conn.recv(64).startswith(b"+PONG"):
                return "Redis at 127.0.0.1:6379 did not answer PING"
    except OSError as error:
        return f"Redis at 127.0.0.1:6379 is unreachable: {error}"
    return None


@dataclass
class ServerConfig:
    """Everything that must stay the same for a restarted server to see the same state."""

    mode: str  # "memory" or "postgres"
    admin_token: str = field(default_factory=new_admin_token)
    database: Database | None = None
    secret_store_kek: str = field(default_factory=lambda: secrets.token_hex(32))
    streams_hmac_key: str = field(default_factory=lambda: secrets.token_hex(32))
    audit_hmac_key: str = field(default_factory=lambda: secrets.token_hex(32))
    gateway_hmac_key: str = field(default_factory=lambda: secrets.token_hex(32))
    sts_admin_token: str = field(default_factory=lambda: "sat_" + secrets.token_hex(16))
    coordinator_token: str = field(default_factory=lambda: "cct_" + secrets.token_hex(16))
    # Kept across restarts: idempotency receipts written before a restart must still replay.
    idempotency_hmac_key: str = field(default_factory=lambda: secrets.token_hex(32))
    # Kept across restarts, so a restarted server replays what an earlier one spooled.
    replay_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="caracal-replay-"))
    extra_env: dict[str, str] = field(default_factory=dict)
    # Extra command-line arguments after the mode's command (e.g. `--demo` for `caracal dev`).
    args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        if self.mode == "memory":
            return ["dev", *self.args]
        return ["serve", "all", *self.args]

    def env(self, port: int, sts_port: int) -> dict[str, str]:
        env = dict(os.environ)
        # A developer's shell may carry real settings; the server under test gets only ours.
        for name in (
            "DATABASE_URL",
            "REDIS_URL",
            "SECRET_STORE_KEK",
            "STREAMS_HMAC_KEY",
            "AUDIT_HMAC_KEY",
            "GATEWAY_STS_HMAC_KEY",
            "ISSUER_URL",
            "STS_ADMIN_TOKEN",
            "METRICS_BEARER",
            "STS_URL",
            "COORDINATOR_HOST",
            "COORDINATOR_PORT",
            "GATEWAY_HOST",
            "GATEWAY_PORT",
            "AUDIT_HOST",
            "AUDIT_PORT",
            "AUDIT_ADMIN_TOKEN",
            "UPSTREAM_HOST_ALLOWLIST",
            "UPSTREAM_ALLOW_LOOPBACK",
            "UPSTREAM_ALLOW_PRIVATE",
            "CARACAL_COORDINATOR_TOKEN",
            "IDEMPOTENCY_HMAC_KEY",
            "IDEMPOTENCY_HMAC_KEY_PREVIOUS",
            "AGENT_COORDINATOR_SCOPE",
            "CARACAL_MODE",
        ):
            env.pop(name, None)
        env.update(RATE_LIMIT_ENV)
        env.update(
            {
                "CARACAL_ADMIN_TOKEN": self.admin_token,
                "API_HOST": "127.0.0.1",
                "API_PORT": str(port),
                "STS_HOST": "127.0.0.1",
                "STS_PORT": str(sts_port),
                "ISSUER_URL": f"http://127.0.0.1:{sts_port}",
                "GATEWAY_STS_HMAC_KEY": self.gateway_hmac_key,
                "STS_ADMIN_TOKEN": self.sts_admin_token,
                "CARACAL_COORDINATOR_TOKEN": self.coordinator_token,
                "RUST_BACKTRACE": "1",
            }
        )
        if self.mode == "postgres":
            assert self.database is not None
            env.update(
                {
                    "DATABASE_URL": self.database.url,
                    "REDIS_URL": REDIS_URL,
                    "SECRET_STORE_KEK": self.secret_store_kek,
                    "STREAMS_HMAC_KEY": self.streams_hmac_key,
                    "AUDIT_HMAC_KEY": self.audit_hmac_key,
                    "AUDIT_REPLAY_DIR": self.replay_dir,
                    "IDEMPOTENCY_HMAC_KEY": self.idempotency_hmac_key,
                }
            )
        env.update(self.extra_env)
        return env


class CaracalServer:
    """One running `caracal` process; its output goes to a file so a full pipe never blocks it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sts_port = free_port()
        self.sts_url = f"http://127.0.0.1:{self.sts_port}"
        self.coordinator_port = free_port()
        self.coordinator_url = f"http://127.0.0.1:{self.coordinator_port}"
        self.gateway_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.audit_port = free_port()
        self.audit_url = f"http://127.0.0.1:{self.audit_port}"
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"caracal-{config.mode}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def admin_token(self) -> str:
        return self.config.admin_token

    def start(self) -> CaracalServer:
        if self.config.mode == "postgres":
            reset_test_redis()
        binary = caracal_binary()
        if not binary.is_file():
            raise RuntimeError(
                f"caracal binary not found at {binary}; build it (`cargo build -p caracal`) "
                "or set CARACAL_BIN"
            )
        self.process = subprocess.Popen(
            [str(binary), *self.config.argv()],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_healthy()
        return self

    def _env(self) -> dict[str, str]:
        # The Coordinator's address is this process's, not the config's: ports are picked per
        # start, like the API's and the STS's.
        env = self.config.env(self.port, self.sts_port)
        env.setdefault("COORDINATOR_HOST", "127.0.0.1")
        env.setdefault("COORDINATOR_PORT", str(self.coordinator_port))
        env.setdefault("GATEWAY_HOST", "127.0.0.1")
        env.setdefault("GATEWAY_PORT", str(self.gateway_port))
        env.setdefault("AUDIT_HOST", "127.0.0.1")
        env.setdefault("AUDIT_PORT", str(self.audit_port))
        if self.config.mode == "postgres":
            # The suite's upstreams listen on loopback; production refuses them by default.
            env.setdefault("UPSTREAM_ALLOW_LOOPBACK", "true")
        return env

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"caracal {' '.join(self.config.argv())} exited with status "
                    f"{self.process.returncode} before answering /health\n{self.output()}"
                )
            try:
                res = httpx.get(self.url + "/health", timeout=2.0)
                sts = httpx.get(self.sts_url + "/health", timeout=2.0)
                coordinator = httpx.get(self.coordinator_url + "/health", timeout=2.0)
                gateway = httpx.get(self.gateway_url + "/health", timeout=2.0)
                if (
                    res.status_code == 200
                    and res.json() == {"ok": True}
                    and sts.status_code == 200
                    and coordinator.status_code == 200
                    and gateway.status_code == 200
                ):
                    return
                last_error = (
                    f"API HTTP {res.status_code}: {res.text[:200]}; STS HTTP {sts.status_code}; "
                    f"Coordinator HTTP {coordinator.status_code}; Gateway HTTP {gateway.status_code}"
                )
            except (httpx.HTTPError, ValueError) as error:
                last_error = repr(error)
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"caracal did not answer GET /health with {{\"ok\":true}} within "
            f"{HEALTH_TIMEOUT_SECONDS:.0f} s (last: {last_error})\n{self.output()}"
        )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period. Returns the exit status, or None when the
        server ignored SIGTERM and had to be killed."""
        if self.process is None:
            return self.exit_code
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
                self.exit_code = None
                return None
        self.exit_code = process.returncode
        return self.exit_code

    def output(self, tail_chars: int = 20000) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        if len(text) > tail_chars:
            text = "…" + text[-tail_chars:]
        return f"----- caracal {self.mode} output -----\n{text}----- end -----"

    def close(self) -> None:
        self.stop()
        self._log.close()
        self.log_path.unlink(missing_ok=True)
