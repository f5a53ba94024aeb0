"""Fixtures of the end-to-end suite: a real `caracal` server per mode, the official admin SDK
pointed at it, and a fresh zone per test so tests never see each other's state.

Modes: `memory` runs `caracal dev`; `postgres` runs `caracal serve api` against a database made
for the module and dropped afterwards. One server per mode per module keeps the suite fast.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import httpx
import pytest
from caracalai_admin import AdminClient

from caracal_server import (
    CaracalServer,
    Database,
    ServerConfig,
    postgres_unavailable_reason,
)

MODES = ["memory", "postgres"]

_running: list[CaracalServer] = []


@cache
def _postgres_reason() -> str | None:
    return postgres_unavailable_reason()


def require_postgres() -> None:
    """Skips the postgres mode on a developer machine without Postgres; CI must run it."""
    reason = _postgres_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"postgres mode cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"postgres mode skipped (set up Postgres/Redis to run it): {reason}")


@contextmanager
def running_server(config: ServerConfig) -> Iterator[CaracalServer]:
    """Starts a server for `config`, yields it, and always stops it."""
    server = CaracalServer(config)
    _running.append(server)
    try:
        failure = None
        try:
            server.start()
        except RuntimeError as error:
            failure = str(error)
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        yield server
    finally:
        server.close()
        _running.remove(server)


@contextmanager
def fresh_database() -> Iterator[Database]:
    require_postgres()
    database = Database()
    database.create()
    try:
        yield database
    finally:
        database.drop()


@contextmanager
def server_in_mode(mode: str) -> Iterator[CaracalServer]:
    if mode == "memory":
        with running_server(ServerConfig(mode="memory")) as server:
            yield server
        return
    with fresh_database() as database:
        with running_server(ServerConfig(mode="postgres", database=database)) as server:
            yield server


@pytest.fixture(scope="module", params=MODES)
def server(request: pytest.FixtureRequest) -> Iterator[CaracalServer]:
    with server_in_mode(request.param) as running:
        yield running


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    status: int


class Recorder:
    """Sees every HTTP exchange the SDK makes, so tests can assert the status codes and the
    requests a helper sent (or did not send) without bypassing the SDK."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        self.calls.append(Call(request.method, request.url.path, response.status_code))

    @property
    def last(self) -> Call:
        assert self.calls, "the SDK made no request"
        return self.calls[-1]

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]

    def writes_since(self, mark: int) -> list[Call]:
        return [c for c in self.calls[mark:] if c.method not in ("GET", "HEAD")]


def make_admin(server: CaracalServer, token: str | None = None) -> tuple[AdminClient, Recorder]:
    recorder = Recorder()
    http = httpx.Client(event_hooks={"response": [recorder.on_response]})
    client = AdminClient(
        api_url=server.url,
        admin_token=token if token is not None else server.admin_token,
        http_client=http,
        retries=0,
    )
    return client, recorder


@pytest.fixture
def admin_and_recorder(server: CaracalServer) -> tuple[AdminClient, Recorder]:
    return make_admin(server)


@pytest.fixture
def admin(admin_and_recorder: tuple[AdminClient, Recorder]) -> AdminClient:
    return admin_and_recorder[0]


@pytest.fixture
def calls(admin_and_recorder: tuple[AdminClient, Recorder]) -> Recorder:
    return admin_and_recorder[1]


@pytest.fixture
def zone(admin: AdminClient, request: pytest.FixtureRequest) -> str:
    """A new zone for this test alone; returns its id."""
    name = f"e2e {request.node.originalname} {secrets.token_hex(4)}"
    return admin.zones.create({"name": name})["id"]


@pytest.fixture
def raw(server: CaracalServer) -> Iterator[httpx.Client]:
    """Plain HTTP, only for input the SDK cannot express (bad JSON, no token, huge bodies)."""
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


@pytest.fixture
def auth(server: CaracalServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A failing test shows what the server printed, which is usually where the answer is."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running:
        for running in _running:
            report.sections.append((f"caracal {running.mode}", running.output(6000)))
