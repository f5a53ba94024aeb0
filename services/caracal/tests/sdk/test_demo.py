"""`caracal dev --demo` as a newcomer meets it: the sandbox starts with a seeded demo zone and a
local echo upstream, and what it prints works as printed. The exported `CARACAL_*` variables
and the Python snippet, run verbatim in a fresh interpreter, reach the echo through the Gateway,
which injects the demo provider's credential; the curl lines answer as their comments say; the
seeded zone is exactly what the admin SDK would have authored; and `--demo` is refused outside
`caracal dev`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from caracalai_admin import AdminClient, ResourceGrant, author_grants_document

from caracal_server import CaracalServer, ServerConfig, caracal_binary, free_port
from conftest import running_server

READY_MARKER = "# ---- end demo.py ----"
SNIPPET_START = "# ---- demo.py ----"
READY_TIMEOUT_SECONDS = 30.0
RUN_TIMEOUT_SECONDS = 60
RESOURCE = "resource://demo-echo"
UPSTREAM_KEY = "demo-upstream-key"
SDK_VARIABLES = {
    "CARACAL_STS_URL",
    "CARACAL_COORDINATOR_URL",
    "CARACAL_GATEWAY_URL",
    "CARACAL_ZONE_ID",
    "CARACAL_APPLICATION_ID",
    "CARACAL_APP_CLIENT_SECRET",
}
EXPORT = re.compile(r"^\s*export (CARACAL_[A-Z_]+)=(\S+)\s*$")


def log_text(server: CaracalServer) -> str:
    return server.log_path.read_text(errors="replace")


def wait_for_demo(server: CaracalServer) -> str:
    """The demo prints once the services answer and the zone is seeded; returns the whole log."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        text = log_text(server)
        if READY_MARKER in text:
            return text
        assert server.process is not None
        if server.process.poll() is not None:
            pytest.fail(f"caracal dev --demo exited before printing the demo:\n{server.output()}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"caracal dev --demo printed no demo within {READY_TIMEOUT_SECONDS:.0f} s:\n{server.output()}",
                        pytrace=False)
        time.sleep(0.05)


def exports(text: str) -> dict[str, str]:
    """Every `export CARACAL_*=…` line printed, as a shell would see them (a later line wins)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = EXPORT.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def snippet(text: str) -> str:
    start = text.index(SNIPPET_START)
    end = text.index(READY_MARKER, start) + len(READY_MARKER)
    return text[start:end] + "\n"


def curl_lines(text: str) -> list[str]:
    block = text[text.index("or poke at it with curl"):]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("curl ")]


def shell_env(variables: dict[str, str]) -> dict[str, str]:
    """A fresh shell with only the printed variables: nothing CARACAL_* leaks in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_")}
    env.update(variables)
    return env


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[CaracalServer, str]]:
    with running_server(ServerConfig(mode="memory", args=["--demo"])) as server:
        yield server, wait_for_demo(server)


def test_the_printed_snippet_reaches_the_echo_with_the_provider_credential(demo: tuple[CaracalServer, str]) -> None:
    server, text = demo
    variables = exports(text)
    assert SDK_VARIABLES <= variables.keys(), variables
    assert variables["CARACAL_STS_URL"] == server.sts_url
    assert variables["CARACAL_COORDINATOR_URL"] == server.coordinator_url
    assert variables["CARACAL_GATEWAY_URL"] == server.gateway_url

    code = snippet(text)
    assert "Caracal()" in code and "application_transport" in code and "gateway_request" in code
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=shell_env(variables),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    assert run.returncode == 0, f"the demo snippet failed:\n{run.stdout}\n{run.stderr}\n{server.output(6000)}"
    status, _, body = run.stdout.partition("\n")
    assert status.strip() == "200", run.stdout
    echo = json.loads(body)
    assert echo["echo"] is True
    assert echo["method"] == "GET"
    assert echo["path"] == "/hello"
    assert echo["query"] == "from=demo"
    headers = echo["headers"]
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}", "the Gateway injects the provider credential"
    assert not [name for name in headers if name.startswith("x-caracal-")], headers
    # The agent held only a mandate and its client secret, never the upstream key.
    assert UPSTREAM_KEY not in variables.values()


def test_the_seeded_zone_is_what_the_admin_sdk_would_author(demo: tuple[CaracalServer, str]) -> None:
    server, text = demo
    variables = exports(text)
    zone_id, app_id = variables["CARACAL_ZONE_ID"], variables["CARACAL_APPLICATION_ID"]
    admin = AdminClient(api_url=server.url, admin_token=server.admin_token, retries=0)

    zone = admin.zones.get(zone_id)
    assert zone["name"] == "demo" and zone["slug"] == "demo", zone
    [application] = admin.applications.list(zone_id)
    assert application["id"] == app_id and application["registration_method"] == "managed", application
    [provider] = admin.providers.list(zone_id)
    assert provider["kind"] == "bearer_token", provider
    [resource] = admin.resources.list(zone_id)
    assert resource["identifier"] == RESOURCE
    assert sorted(resource["scopes"]) == ["demo:read", "demo:write"]
    assert resource["operation_enforcement"] == "transport_uniform"
    assert resource["credential_provider_id"] == provider["id"]
    assert resource["upstream_url"].startswith("http://127.0.0.1:"), resource

    [policy_set] = admin.policy_sets.list(zone_id)
    assert policy_set["active_version_id"], policy_set
    [policy] = admin.policies.list(zone_id)
    [version] = admin.policies.get(zone_id, policy["id"])["versions"]
    expected = author_grants_document(
        [ResourceGrant(application_id=app_id, resource_identifier=RESOURCE, scopes=["demo:read"])]
    )
    assert version["content"] == expected, "the grant document is byte for byte the admin SDK's"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_printed_curl_lines_answer_as_described(demo: tuple[CaracalServer, str]) -> None:
    server, text = demo
    lines = curl_lines(text)
    assert len(lines) == 4, lines
    env = shell_env({**exports(text), "CARACAL_ADMIN_TOKEN": server.admin_token})

    def sh(line: str) -> str:
        done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_SECONDS)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        return done.stdout

    health, listing, refused, direct = (sh(line) for line in lines)
    assert health.strip() == "200", health
    assert [r["identifier"] for r in json.loads(listing)["items"]] == [RESOURCE]
    assert json.loads(refused)["error"] == "invalid_token", refused
    echo = json.loads(direct)
    assert echo["echo"] is True and "authorization" not in echo["headers"], echo


def test_a_newcomer_without_a_token_gets_a_working_demo_and_a_clean_exit() -> None:
    class Tokenless(ServerConfig):
        def env(self, port: int, sts_port: int) -> dict[str, str]:
            env = super().env(port, sts_port)
            env.pop("CARACAL_ADMIN_TOKEN", None)
            return env

    with running_server(Tokenless(mode="memory", args=["--demo"])) as server:
        text = wait_for_demo(server)
        variables = exports(text)
        token = variables["CARACAL_ADMIN_TOKEN"]
        assert token != server.admin_token, "the printed token is the generated one"
        zones = httpx.get(server.url + "/v1/zones", headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
        assert zones.status_code == 200, zones.text
        assert [z["id"] for z in zones.json()["items"]] == [variables["CARACAL_ZONE_ID"]]
        exit_code = server.stop()
    assert exit_code == 0, "SIGTERM stops `caracal dev --demo` cleanly"


def _run(args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("UPSTREAM_")}
    env.update({"API_HOST": "127.0.0.1", "API_PORT": str(free_port()), **extra})
    return subprocess.run([str(caracal_binary()), *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)


@pytest.mark.parametrize("args", [["serve", "all", "--demo"], ["serve", "api", "--demo"], ["migrate", "--demo"],
                                  ["--demo"]])
def test_demo_runs_only_with_dev(args: list[str]) -> None:
    result = _run(args)
    assert result.returncode != 0, f"caracal {' '.join(args)} was accepted: {result.stdout}{result.stderr}"
    assert "`--demo` only works as `caracal dev --demo`" in result.stderr, result.stderr


def test_help_documents_demo() -> None:
    result = _run(["--help"])
    assert result.returncode == 0, result.stderr
    assert "caracal dev --demo" in result.stdout


def test_demo_refuses_a_gateway_that_cannot_reach_its_echo() -> None:
    result = _run(["dev", "--demo"], UPSTREAM_ALLOW_LOOPBACK="false", STS_PORT=str(free_port()),
                  COORDINATOR_PORT=str(free_port()), GATEWAY_PORT=str(free_port()))
    assert result.returncode != 0, result.stderr
    assert "UPSTREAM_ALLOW_LOOPBACK=false" in result.stderr, result.stderr
