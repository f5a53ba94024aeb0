"""Zero-loss evidence under faults (issue #6): the six-process cluster (`cargo xtask up`) on a
private Postgres and a private Redis, with governed traffic (the SDK quickstart through the
Gateway) running the whole time, survives Redis stopped and restarted, Postgres stopped and
restarted, and the Audit process killed (SIGKILL) mid-ingest and started again. Afterwards every
event the STS and the Gateway emitted is stored exactly once, no entry is left pending or in the
dead-letter queue, and `caracal audit verify` recomputes every zone's chain.

The servers are private (own ports and data directories, see `private_servers.py`) so stopping
them cannot disturb any other test. Every phase is bounded in time; the test stops by itself."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from caracalai import Caracal
from caracalai_admin import AdminClient

from caracal_server import RATE_LIMIT_ENV, caracal_binary, free_port
from private_servers import PrivatePostgres, PrivateRedis, unavailable_reason
from test_cluster import FOREIGN_ENV, STEP_TIMEOUT_SECONDS, BUILD_TIMEOUT_SECONDS, exports, running, xtask
from test_gateway import GatewayZone, gateway_zone, upstream  # noqa: F401 (fixture)

FAULT_SECONDS = 5
TRAFFIC_SECONDS = 3
SETTLE_TIMEOUT_SECONDS = 90
METRICS_BEARER = "fault-test-metrics"
CLUSTER_SERVICES = ["api", "sts", "coordinator", "gateway", "audit"]


@pytest.fixture
def servers() -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"fault tests need private servers: {reason}", pytrace=False)
        pytest.skip(reason)
    pg, redis = PrivatePostgres(), PrivateRedis()
    try:
        pg.init()
        redis.start()
        yield pg, redis
    finally:
        pg.close()
        redis.close()


class Traffic:
    """Governed requests in a loop on a background thread, counting outcomes. Failures while a
    dependency is down are expected (the services fail closed); they still produce evidence."""

    def __init__(self, client: Caracal, gz: GatewayZone) -> None:
        self.client, self.gz = client, gz
        self.ok = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def one() -> int:
            target = self.client.gateway_request(self.gz.resource, "/v1/items?fault=1")
            async with self.client.application_transport(self.gz.resource,
                                                          scopes=[self.gz.read]) as http:
                res = await http.get(target.url, headers=target.headers, timeout=5.0)
                return res.status_code

        async def loop() -> None:
            while not self._stop.is_set():
                try:
                    status = await asyncio.wait_for(one(), timeout=10)
                    if status == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                except Exception:  # noqa: BLE001 (any failure mode is counted, none is fatal)
                    self.failed += 1
                    await asyncio.sleep(0.05)

        asyncio.run(loop())

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "traffic thread did not stop"


def metric(url: str, name: str) -> int:
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_BEARER}"},
                     timeout=5).text
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\d+)", text, re.MULTILINE)
    assert found, f"{name} not in {url}/metrics:\n{text[:2000]}"
    return int(found.group(1))


def emitted(urls: dict[str, str]) -> int:
    return (metric(urls["CARACAL_STS_URL"], "caracal_sts_audit_emitted_total")
            + metric(urls["CARACAL_GATEWAY_URL"], "caracal_gateway_audit_emitted_total"))


def stored(pg: PrivatePostgres) -> tuple[int, int]:
    rows, distinct = pg.psql(
        "SELECT count(*), count(DISTINCT (id, occurred_at)) FROM audit_events").split("|")
    return int(rows), int(distinct)


def restart_killed(state: Path, svc: str) -> int:
    """SIGKILLs `svc` and starts it again with exactly the command line and environment it had
    (what a supervisor does); records the new pid so `xtask down` stops it."""
    pid = int((state / f"{svc}.pid").read_text().strip())
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    environ = dict(
        item.decode().split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid), f"{svc} survived SIGKILL"
    log = open(state / f"{svc}.log", "ab")
    child = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
    (state / f"{svc}.pid").write_text(f"{child.pid}\n")
    return child.pid


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy within 60s")


def test_no_evidence_is_lost_or_duplicated_when_redis_postgres_or_audit_fail(
    servers: tuple[PrivatePostgres, PrivateRedis], upstream: str  # noqa: F811 (fixture)
) -> None:
    pg, redis = servers
    state = Path(tempfile.mkdtemp(prefix="caracal-faults-")) / "state"
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(RATE_LIMIT_ENV)
    env.update({
        "CARACAL_CLUSTER_DIR": str(state),
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis.url,
        "UPSTREAM_ALLOW_LOOPBACK": "true",
        "METRICS_BEARER": METRICS_BEARER,
        # Reclaim entries a failed ingest left pending after 2 s instead of 30 s, so the test
        # does not wait out production timings.
        "AUDIT_CLAIM_IDLE_SECS": "2",
        **{f"{svc.upper()}_PORT": str(free_port()) for svc in CLUSTER_SERVICES},
    })
    try:
        result = xtask(env, "up", BUILD_TIMEOUT_SECONDS)
        assert result.returncode == 0, result.stdout + result.stderr
        urls = exports(result.stdout)
        audit_url = f"http://127.0.0.1:{env['AUDIT_PORT']}"
        admin = AdminClient(api_url=urls["CARACAL_API_URL"],
                            admin_token=urls["CARACAL_ADMIN_TOKEN"], retries=0)
        zone = admin.zones.create({"name": "fault drill"})["id"]
        gz = gateway_zone(admin, zone, upstream)
        client = Caracal.from_client_secret(
            coordinator_url=urls["CARACAL_COORDINATOR_URL"], sts_url=urls["CARACAL_STS_URL"],
            zone_id=gz.zone, application_id=gz.app, client_secret=gz.secret,
            resources=[gz.resource], gateway_url=urls["CARACAL_GATEWAY_URL"])

        traffic = Traffic(client, gz).start()
        phases: list[str] = []
        try:
            time.sleep(TRAFFIC_SECONDS)
            assert traffic.ok > 0, "governed traffic works before any fault"

            redis.stop()
            phases.append(f"redis stopped at ok={traffic.ok} failed={traffic.failed}")
            time.sleep(FAULT_SECONDS)
            redis.start()
            time.sleep(TRAFFIC_SECONDS)

            pg.stop()
            phases.append(f"postgres stopped at ok={traffic.ok} failed={traffic.failed}")
            time.sleep(FAULT_SECONDS)
            pg.start()
            time.sleep(TRAFFIC_SECONDS)

            phases.append(f"audit killed at ok={traffic.ok} failed={traffic.failed}")
            restart_killed(state, "audit")
            wait_healthy(audit_url)
            ok_before = traffic.ok
            time.sleep(TRAFFIC_SECONDS * 2)
            assert traffic.ok > ok_before, "governed traffic recovers after the faults"
        finally:
            traffic.stop()

        # Settle: the producers' spools drain and the Audit service catches up.
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while True:
            total = emitted(urls)
            rows, distinct = stored(pg)
            pending = int(redis.cli("XPENDING", "caracal.audit.events", "audit-ingestor").split()[0])
            if rows >= total and pending == 0:
                break
            assert time.monotonic() < deadline, (
                f"evidence did not settle: emitted={total} stored={rows} pending={pending}")
            time.sleep(0.5)
        dlq = int(redis.cli("XLEN", "caracal.audit.events.dlq"))
        keys = dict(line.split("=", 1) for line in (state / "keys.env").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
        verify = subprocess.run(
            [str(caracal_binary()), "audit", "verify"],
            env={**os.environ, "DATABASE_URL": pg.url,
                 "AUDIT_HMAC_KEY": keys["AUDIT_HMAC_KEY"].strip().strip("'\"")},
            capture_output=True, text=True, timeout=120)
        print("\n".join(phases))
        print(f"traffic: {traffic.ok} governed 200s, {traffic.failed} failed while faults ran")
        print(f"evidence: emitted={total} stored={rows} distinct={distinct} dlq={dlq} "
              f"pending={pending}")
        print(f"$ caracal audit verify -> {verify.returncode}\n{verify.stdout}{verify.stderr}")
        assert rows == distinct == total, "every emitted event is stored exactly once"
        assert dlq == 0, redis.cli("XRANGE", "caracal.audit.events.dlq", "-", "+", "COUNT", "5")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert f"zone {zone}: ok" in verify.stdout, verify.stdout
    finally:
        xtask(env, "down", STEP_TIMEOUT_SECONDS)
        shutil.rmtree(state.parent, ignore_errors=True)
