"""`caracal serve coordinator` as its own process (Postgres + Redis): it verifies mandates with
the keys it fetches from the STS at `STS_URL`, shares state with the other services through the
database, and refuses to start without the configuration it cannot do without."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from caracalai_admin import AdminClient

from caracal_server import CaracalServer, ServerConfig, caracal_binary, free_port
from conftest import fresh_database, make_admin, running_server
from sts_support import exchanger, mint_zone

HEALTH_TIMEOUT_SECONDS = 30.0


def standalone_env(server: CaracalServer, port: int, **overrides: str | None) -> dict[str, str]:
    env = server.config.env(server.port, server.sts_port)
    # A lone Coordinator opens no sealed secret and serves no admin route.
    env.pop("CARACAL_ADMIN_TOKEN", None)
    env.pop("SECRET_STORE_KEK", None)
    env.update(
        {
            "COORDINATOR_HOST": "127.0.0.1",
            "COORDINATOR_PORT": str(port),
            "STS_URL": server.sts_url,
        }
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="module")
def everything() -> Iterator[CaracalServer]:
    with fresh_database() as database:
        with running_server(ServerConfig(mode="postgres", database=database)) as server:
            yield server


@pytest.fixture(scope="module")
def lone(everything: CaracalServer) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(caracal_binary()), "serve", "coordinator"],
        env=standalone_env(everything, port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(f"serve coordinator exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("serve coordinator never answered /health")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def admin(everything: CaracalServer) -> AdminClient:
    return make_admin(everything)[0]


def test_a_lone_coordinator_verifies_with_the_sts_keys_and_shares_state(
    everything: CaracalServer, lone: str, admin: AdminClient
) -> None:
    zone = admin.zones.create({"name": "standalone-" + secrets.token_hex(3)})["id"]
    mz = mint_zone(admin, zone)
    token = exchanger(everything, mz).mint_mandate(resource=mz.resource, scopes=["agent:lifecycle"]).token
    auth = {"authorization": f"Bearer {token}"}

    started = httpx.post(
        f"{lone}/zones/{zone}/agents",
        json={"application_id": mz.app, "ttl_seconds": 300},
        headers={**auth, "idempotency-key": "standalone-1"},
        timeout=30.0,
    )
    assert started.status_code == 201, started.text
    session_id = started.json()["agent_session_id"]

    # The in-process Coordinator of `serve all` reads the same row.
    seen = httpx.get(f"{everything.coordinator_url}/zones/{zone}/agents/{session_id}", headers=auth, timeout=30.0)
    assert seen.status_code == 200, seen.text
    assert seen.json()["status"] == "active"

    # Another zone: its own key set, fetched on its first request.
    other = admin.zones.create({"name": "standalone-" + secrets.token_hex(3)})["id"]
    omz = mint_zone(admin, other)
    other_token = exchanger(everything, omz).mint_mandate(resource=omz.resource, scopes=["agent:lifecycle"]).token
    listed = httpx.get(f"{lone}/zones/{other}/agents", headers={"authorization": f"Bearer {other_token}"}, timeout=30.0)
    assert (listed.status_code, listed.json()["items"]) == (200, []), listed.text
    # A token of one zone never opens another.
    crossed = httpx.get(f"{lone}/zones/{other}/agents", headers=auth, timeout=30.0)
    assert (crossed.status_code, crossed.json()) == (403, {"error": "zone_mismatch"})

    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refused = httpx.get(f"{lone}/zones/{zone}/agents", headers={"authorization": f"Bearer {forged}"}, timeout=30.0)
    assert (refused.status_code, refused.json()) == (401, {"error": "invalid_token"})

    ready = httpx.get(f"{lone}/ready", timeout=30.0)
    assert (ready.status_code, ready.json()) == (200, {"ok": True})


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"STS_URL": None}, "STS_URL", id="no-sts-url"),
        pytest.param({"STS_URL": "sts:8080"}, "STS_URL", id="bad-sts-url"),
        pytest.param({"IDEMPOTENCY_HMAC_KEY": None}, "IDEMPOTENCY_HMAC_KEY", id="no-idempotency-key"),
        pytest.param({"IDEMPOTENCY_HMAC_KEY": "abcd"}, "IDEMPOTENCY_HMAC_KEY", id="short-idempotency-key"),
        pytest.param({"COORDINATOR_BODY_LIMIT_BYTES": "10"}, "COORDINATOR_BODY_LIMIT_BYTES", id="tiny-body-limit"),
    ],
)
def test_serve_coordinator_refuses_to_start_without_what_it_needs(
    everything: CaracalServer, overrides: dict[str, str | None], named: str
) -> None:
    result = subprocess.run(
        [str(caracal_binary()), "serve", "coordinator"],
        env=standalone_env(everything, free_port(), **overrides),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
