"""`cargo xtask up` / `cargo xtask down`: the four services as separate `caracal serve <svc>`
processes on Postgres + Redis (six processes in all). The official SDK quickstart reaches a
local upstream through the Gateway of that cluster with the provider credential, again after a
restart (the keys kept in the state directory still open what was sealed before), and `down`
leaves nothing running."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from caracalai_admin import AdminClient

from caracal_server import REDIS_URL, RATE_LIMIT_ENV, Database, free_port
from conftest import require_postgres
from test_gateway import GatewayZone, Upstream, gateway_zone, sdk, upstream  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[4]
SERVICES = ["api", "sts", "coordinator", "gateway", "audit"]
# The first `up` may build the binary; every later step is seconds.
BUILD_TIMEOUT_SECONDS = 1800
STEP_TIMEOUT_SECONDS = 120

# What a developer's shell may carry that would change the cluster under test.
FOREIGN_ENV = [
    "DATABASE_URL", "REDIS_URL", "CARACAL_CLUSTER_DIR", "UPSTREAM_ALLOW_LOOPBACK",
    "UPSTREAM_HOST_ALLOWLIST", "UPSTREAM_ALLOW_PRIVATE", "CARACAL_MODE", "METRICS_BEARER",
    *(f"{svc.upper()}_{part}" for svc in SERVICES for part in ("HOST", "PORT")),
]


@dataclass(frozen=True)
class Cluster:
    """The addresses `sdk()` reads, of the cluster `up` started."""

    url: str
    sts_url: str
    coordinator_url: str
    gateway_url: str
    admin_token: str
    state: Path


def cargo() -> str:
    found = shutil.which("cargo")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("cargo is not on PATH", pytrace=False)
        pytest.skip("cargo is not on PATH")
    return found


def xtask(env: dict[str, str], command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [cargo(), "xtask", command],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(f"$ cargo xtask {command} -> {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def exports(output: str) -> dict[str, str]:
    return dict(re.findall(r"^export (CARACAL_[A-Z_]+)=(\S+)$", output, re.MULTILINE))


def pids(state: Path) -> dict[str, int]:
    return {svc: int((state / f"{svc}.pid").read_text().strip())
            for svc in SERVICES if (state / f"{svc}.pid").exists()}


def running(pid: int) -> bool:
    """True while `pid` runs; an exited process nobody has reaped yet (a zombie) has stopped."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def quickstart(cluster: Cluster, gz: GatewayZone) -> None:
    """The official SDK's quickstart through the cluster's Gateway: a 200 from the upstream,
    which saw the provider credential (and not the agent's mandate)."""
    client = sdk(cluster, gz)  # type: ignore[arg-type] (it reads only the URLs)
    with Upstream.lock:
        before = len(Upstream.seen)

    async def flow():
        target = client.gateway_request(gz.resource, "/v1/items?cluster=1")
        async with client.application_transport(gz.resource, scopes=[gz.read]) as http:
            return await http.get(target.url, headers=target.headers)

    res = asyncio.run(flow())
    assert res.status_code == 200, res.text
    assert res.json() == {"ok": True, "path": "/v1/items?cluster=1", "method": "GET"}
    with Upstream.lock:
        reached = Upstream.seen[before:]
    assert len(reached) == 1, reached
    assert reached[0]["headers"]["authorization"] == f"Bearer {gz.provider_secret}"


@pytest.fixture
def cluster_env() -> Iterator[tuple[dict[str, str], Database]]:
    require_postgres()
    state = Path(tempfile.mkdtemp(prefix="caracal-cluster-")) / "state"
    database = Database()  # `up` creates it
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(RATE_LIMIT_ENV)
    env.update({
        "CARACAL_CLUSTER_DIR": str(state),
        "DATABASE_URL": database.url,
        "REDIS_URL": REDIS_URL,
        "API_PORT": str(free_port()),
        "STS_PORT": str(free_port()),
        "COORDINATOR_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
        "AUDIT_PORT": str(free_port()),
    })
    try:
        yield env, database
    finally:
        # Whatever happened, nothing is left running.
        xtask(env, "down", STEP_TIMEOUT_SECONDS)
        database.drop()
        shutil.rmtree(state.parent, ignore_errors=True)


def up(env: dict[str, str], timeout: float = STEP_TIMEOUT_SECONDS) -> Cluster:
    result = xtask(env, "up", timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    found = exports(result.stdout)
    for name in ("CARACAL_API_URL", "CARACAL_STS_URL", "CARACAL_COORDINATOR_URL",
                 "CARACAL_GATEWAY_URL", "CARACAL_ADMIN_TOKEN"):
        assert name in found, (name, result.stdout)
    assert found["CARACAL_API_URL"] == f"http://127.0.0.1:{env['API_PORT']}"
    assert found["CARACAL_GATEWAY_URL"] == f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    return Cluster(url=found["CARACAL_API_URL"], sts_url=found["CARACAL_STS_URL"],
                   coordinator_url=found["CARACAL_COORDINATOR_URL"],
                   gateway_url=found["CARACAL_GATEWAY_URL"],
                   admin_token=found["CARACAL_ADMIN_TOKEN"], state=Path(env["CARACAL_CLUSTER_DIR"]))


def down(env: dict[str, str], expected: dict[str, int]) -> None:
    result = xtask(env, "down", STEP_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stdout + result.stderr
    still = {svc: pid for svc, pid in expected.items() if running(pid)}
    assert still == {}, f"still running after `down`: {still}"
    assert pids(Path(env["CARACAL_CLUSTER_DIR"])) == {}, "pid files are removed"


def test_up_runs_the_quickstart_through_separate_processes_and_down_stops_them(
    cluster_env: tuple[dict[str, str], Database], upstream: str  # noqa: F811 (fixture)
) -> None:
    env, database = cluster_env
    cluster = up(env, BUILD_TIMEOUT_SECONDS)

    # One process per service, each its own `caracal serve <svc>`.
    started = pids(cluster.state)
    assert sorted(started) == sorted(SERVICES), started
    assert len(set(started.values())) == len(SERVICES)
    for svc, pid in started.items():
        assert running(pid), svc
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [b"serve", svc.encode()], argv
        assert (cluster.state / f"{svc}.log").exists()
    assert stat.S_IMODE(cluster.state.stat().st_mode) == 0o700
    keys = cluster.state / "keys.env"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    keys_before = keys.read_text()

    again = xtask(env, "up", STEP_TIMEOUT_SECONDS)
    assert again.returncode != 0
    assert "already running" in again.stdout + again.stderr
    assert pids(cluster.state) == started, "a refused `up` leaves the running cluster alone"

    admin = AdminClient(api_url=cluster.url, admin_token=cluster.admin_token, retries=0)
    zone = admin.zones.create({"name": "cluster quickstart"})["id"]
    gz = gateway_zone(admin, zone, upstream)
    quickstart(cluster, gz)

    down(env, started)
    assert "no caracal cluster is running" in xtask(env, "down", STEP_TIMEOUT_SECONDS).stdout

    # A restart keeps the keys: the provider credential sealed before still opens, and the
    # admin token still works.
    restarted = up(env)
    assert keys.read_text() == keys_before
    assert restarted.admin_token == cluster.admin_token
    assert set(pids(restarted.state).values()).isdisjoint(started.values())
    quickstart(restarted, gz)
    down(env, pids(restarted.state))
