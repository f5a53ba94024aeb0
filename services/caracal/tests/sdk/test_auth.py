"""Admin authentication: only the exact `Bearer <token>` of a known token gets in, and a refused
caller changes nothing."""

from __future__ import annotations

import secrets
import uuid

import httpx
import pytest
from caracalai_admin import AdminClient

from assertions import api_error, raw_error
from caracal_server import CaracalServer
from conftest import make_admin


def test_health_needs_no_token(raw: httpx.Client) -> None:
    res = raw.get("/health")
    assert res.status_code == 200
    assert res.json() == {"ok": True}


def test_ready_needs_no_token(raw: httpx.Client) -> None:
    res = raw.get("/ready")
    assert res.status_code == 200, res.text
    assert res.json() == {"ok": True}


def test_wrong_token_is_refused_and_writes_nothing(server: CaracalServer, admin: AdminClient) -> None:
    intruder, _ = make_admin(server, token="cat_" + secrets.token_urlsafe(32))
    api_error(401, "invalid_admin_token", intruder.zones.list)
    name = f"intruder zone {secrets.token_hex(4)}"
    api_error(401, "invalid_admin_token", intruder.zones.create, {"name": name})
    assert not [z for z in admin.zones.list() if z["name"] == name]


def test_wrong_token_cannot_read_a_zone(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    intruder, _ = make_admin(server, token=server.admin_token + "x")
    api_error(401, "invalid_admin_token", intruder.zones.get, zone)
    api_error(401, "invalid_admin_token", intruder.applications.list, zone)
    api_error(
        401, "invalid_admin_token", intruder.applications.create, zone, {"name": "x", "registration_method": "managed"}
    )
    assert admin.applications.list(zone) == []


def test_missing_token_is_refused(raw: httpx.Client) -> None:
    raw_error(raw.get("/v1/zones"), 401, "invalid_admin_token")
    raw_error(raw.post("/v1/zones", json={"name": "no token"}), 401, "invalid_admin_token")


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param("bearer {}", id="lowercase-scheme"),
        pytest.param("Token {}", id="other-scheme"),
        pytest.param("{}", id="no-scheme"),
        pytest.param("Bearer", id="no-credential"),
    ],
)
def test_malformed_authorization_is_refused(server: CaracalServer, raw: httpx.Client, scheme: str) -> None:
    res = raw.get("/v1/zones", headers={"Authorization": scheme.format(server.admin_token)})
    raw_error(res, 401, "invalid_admin_token")


def test_security_headers_on_v1(raw: httpx.Client, auth: dict[str, str]) -> None:
    res = raw.get("/v1/zones", headers={**auth, "x-request-id": "e2e-req-1"})
    assert res.status_code == 200
    assert res.headers.get("x-request-id") == "e2e-req-1"
    assert res.headers.get("x-content-type-options") == "nosniff"
    assert res.headers.get("referrer-policy") == "no-referrer"
    assert res.headers.get("cache-control") == "no-store"


def test_unusable_request_id_is_replaced(raw: httpx.Client, auth: dict[str, str]) -> None:
    res = raw.get("/v1/zones", headers={**auth, "x-request-id": "not a valid id!"})
    assert res.status_code == 200
    replacement = res.headers.get("x-request-id")
    assert replacement and replacement != "not a valid id!"
    assert uuid.UUID(replacement).version in (4, 7), f"a replaced request id is a random UUID, got {replacement!r}"


def test_errors_carry_the_request_id_too(raw: httpx.Client) -> None:
    res = raw.get("/v1/zones", headers={"x-request-id": "e2e-denied-1"})
    assert res.status_code == 401
    assert res.headers.get("x-request-id") == "e2e-denied-1"

