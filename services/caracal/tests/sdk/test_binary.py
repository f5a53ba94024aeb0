"""The `caracal` command line as an operator meets it: `dev` works with no setup and says where
it listens, `serve api` refuses to start on incomplete configuration and names what is missing,
`migrate` can be run again safely, and SIGTERM stops a server cleanly."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time

import httpx
import pytest

from caracal_server import REDIS_URL, CaracalServer, ServerConfig, caracal_binary, free_port
from conftest import fresh_database, running_server

EXIT_TIMEOUT_SECONDS = 30


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(caracal_binary()), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"caracal {' '.join(args)} did not exit within {EXIT_TIMEOUT_SECONDS} s: {expired.output!r}")


def _complete_serve_env() -> dict[str, str]:
    """A complete `serve api` configuration whose database is never reached: each test removes
    or spoils one variable, and start-up must stop at configuration checking."""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/caracal_e2e_never_created",
            "REDIS_URL": REDIS_URL,
            "SECRET_STORE_KEK": secrets.token_hex(32),
            "STREAMS_HMAC_KEY": secrets.token_hex(32),
            "CARACAL_ADMIN_TOKEN": "cat_" + secrets.token_urlsafe(32),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(free_port()),
        }
    )
    return env


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "SECRET_STORE_KEK", "CARACAL_ADMIN_TOKEN"])
def test_serve_api_names_a_missing_variable(missing: str) -> None:
    env = _complete_serve_env()
    del env[missing]
    result = _run(["serve", "api"], env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"serve api started without {missing}: {output[-2000:]}"
    assert missing in output, f"the error must name {missing}: {output[-2000:]}"


@pytest.mark.parametrize(
    "kek",
    [
        pytest.param("abcd", id="too-short"),
        pytest.param("zz" * 32, id="not-hex"),
        pytest.param("00" * 32, id="all-zero"),
    ],
)
def test_serve_api_refuses_a_bad_kek(kek: str) -> None:
    env = _complete_serve_env()
    env["SECRET_STORE_KEK"] = kek
    result = _run(["serve", "api"], env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"serve api started with SECRET_STORE_KEK={kek!r}: {output[-2000:]}"
    assert "SECRET_STORE_KEK" in output, f"the error must name SECRET_STORE_KEK: {output[-2000:]}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("ISSUER_URL", None, id="issuer-missing"),
        pytest.param("ISSUER_URL", "sts.example.com", id="issuer-not-absolute"),
        pytest.param("ISSUER_URL", "https://u:p@sts.example.com", id="issuer-userinfo"),
        pytest.param("OPA_POLL_SECONDS", "301", id="poll-out-of-range"),
        pytest.param("STS_MINT_RATE_LIMIT_PER_MIN", "0", id="limit-not-positive"),
    ],
)
def test_serve_sts_names_a_bad_variable(variable: str, value: str | None) -> None:
    env = _complete_serve_env()
    env["ISSUER_URL"] = "https://sts.example.com"
    env["STS_PORT"] = str(free_port())
    if value is None:
        env.pop(variable, None)
    else:
        env[variable] = value
    result = _run(["serve", "sts"], env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"serve sts started with {variable}={value!r}: {output[-2000:]}"
    assert variable in output, f"the error must name {variable}: {output[-2000:]}"


def test_migrate_names_a_missing_database_url() -> None:
    env = _complete_serve_env()
    del env["DATABASE_URL"]
    result = _run(["migrate"], env)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stdout + result.stderr


def test_migrate_is_repeatable() -> None:
    with fresh_database() as database:
        env = _complete_serve_env()
        env["DATABASE_URL"] = database.url
        for attempt in (1, 2):
            result = _run(["migrate"], env)
            assert result.returncode == 0, f"migrate run {attempt} failed: {(result.stdout + result.stderr)[-3000:]}"


def _wait_for_output(server: CaracalServer, text: str, timeout: float = 5.0) -> None:
    """The line may land a moment after /health first answers; give it a short grace period."""
    deadline = time.monotonic() + timeout
    while text not in server.output():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} never appeared in the output:\n{server.output()}")
        time.sleep(0.05)


def test_dev_needs_no_setup_and_prints_where_it_listens() -> None:
    config = ServerConfig(mode="memory")
    with running_server(config) as server:
        _wait_for_output(server, f"listening on http://127.0.0.1:{server.port}")
        exit_code = server.stop()
    assert exit_code is not None, "SIGTERM must stop `caracal dev` without SIGKILL"


class _TokenlessConfig(ServerConfig):
    """`caracal dev` started the way a newcomer does: no CARACAL_ADMIN_TOKEN at all."""

    def env(self, port: int, sts_port: int) -> dict[str, str]:
        env = super().env(port, sts_port)
        env.pop("CARACAL_ADMIN_TOKEN", None)
        return env


def test_dev_generates_and_prints_an_admin_token_when_unset() -> None:
    with running_server(_TokenlessConfig(mode="memory")) as running:
        _wait_for_output(running, "CARACAL_ADMIN_TOKEN")
        output = running.output()
        printed = re.findall(r"CARACAL_ADMIN_TOKEN=[\"']?([^\s\"']+)", output)
        assert printed, f"no generated CARACAL_ADMIN_TOKEN=<token> in the output:\n{output}"
        res = httpx.get(running.url + "/v1/zones", headers={"Authorization": f"Bearer {printed[-1]}"})
        assert res.status_code == 200, f"the printed token does not authenticate: {res.status_code} {res.text[:200]}"
