"""The STS through the official clients: `caracalai-oauth` mints, `caracalai-identity` and
`caracalai-verify` accept exactly the mandate classes they are meant to accept, and every
refusal is the typed error the SDK maps (spec/sts.md §3–5)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid
from urllib.parse import urlencode

import httpx
import pytest
from caracalai_admin import AdminClient
from caracalai_identity import TokenInvalidError, ZoneInvalidError, verify_token
from caracalai_oauth import AccessDenied, InvalidToken
from caracalai_revocation.inmem import InMemoryRevocationStore
from caracalai_verify import AuthOptions, authenticate_options

from caracal_server import CaracalServer, redis_command
from sts_support import ACCESS_TOKEN_TYPE, GRANT_TYPE, bootstrap_form, exchanger, make_resource, mint_zone, token


def payload(jwt: str) -> dict:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def header(jwt: str) -> dict:
    part = jwt.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_sdk_bootstrap_mints_a_session_mandate_the_verifiers_accept(
    server: CaracalServer, admin: AdminClient, zone: str
) -> None:
    mz = mint_zone(admin, zone)
    client = exchanger(server, mz)
    jwt = client.get_token()
    assert client.get_token() == jwt, "the SDK caches the lifecycle token until near expiry"

    claims = payload(jwt)
    assert header(jwt) == {"alg": "ES256", "kid": header(jwt)["kid"], "typ": "JWT"}
    uuid.UUID(header(jwt)["kid"])
    assert claims["iss"] == server.sts_url
    assert claims["aud"] == [server.sts_url], "aud is always an array"
    assert claims["sub"] == mz.app and claims["client_id"] == mz.app
    assert claims["zone_id"] == mz.zone
    assert claims["use"] == "session" and claims["sub_type"] == "application"
    assert claims["scope"] == "agent:lifecycle"
    assert claims["target"] == [mz.resource]
    assert claims["sid"] == claims["root_sid"], "a session mandate is its own root"
    assert claims["exp"] - claims["iat"] == 900, "the default lifetime is 900 s"
    assert "nbf" not in claims
    for absent in ("agent_session_id", "delegation_edge_id", "delegation_chain", "hop_count"):
        assert absent not in claims

    verified = asyncio.run(
        verify_token(jwt, issuer=server.sts_url, audience=server.sts_url, expected_zone_id=mz.zone,
                     required_use="session")
    )
    assert verified["sid"] == claims["sid"]
    result = asyncio.run(
        authenticate_options(
            jwt,
            AuthOptions(issuer=server.sts_url, audience=server.sts_url, revocations=InMemoryRevocationStore(),
                        expected_zone_id=mz.zone, required_use="session"),
        )
    )
    assert result.error is None, result.error
    assert result.ok and result.principal is not None

    # The verifiers refuse the same mandate in another zone (whose key set, never minted, is a
    # 404 — as upstream answers) or for another use.
    with pytest.raises((ZoneInvalidError, TokenInvalidError, httpx.HTTPStatusError)):
        asyncio.run(verify_token(jwt, issuer=server.sts_url, audience=server.sts_url,
                                 expected_zone_id=admin.zones.create({"name": f"other {mz.app[:6]}"})["id"]))
    with pytest.raises(TokenInvalidError):
        asyncio.run(verify_token(jwt, issuer=server.sts_url, audience=server.sts_url, expected_zone_id=mz.zone,
                                 required_use="resource"))
    # Another issuer is never trusted (the SDK refuses a non-loopback http issuer outright).
    with pytest.raises((TokenInvalidError, ValueError)):
        asyncio.run(verify_token(jwt, issuer="http://evil.example", audience=server.sts_url,
                                 expected_zone_id=mz.zone))


def test_success_response_shape(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    res = token(server, bootstrap_form(mz, ttl_seconds="120"), headers={"X-Request-Id": "req-shape-1"})
    assert res.status_code == 200, res.text
    assert res.headers["x-request-id"] == "req-shape-1"
    assert res.headers["cache-control"] == "no-store"
    body = res.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "issued_token_type",
                         "target_resources"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 120
    assert body["scope"] == "agent:lifecycle"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["target_resources"] == [mz.resource]
    claims = payload(body["access_token"])
    assert claims["exp"] - claims["iat"] == 120

    # A resource named by its row id still reports the canonical identifier.
    by_id = token(server, bootstrap_form(mz, resource=mz.resource_id))
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["target_resources"] == [mz.resource]


def test_jwks_publishes_the_signing_key(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    res = httpx.get(server.sts_url + "/.well-known/jwks.json", params={"zone_id": mz.zone})
    assert res.status_code == 404, "a zone that never minted has no keys"
    assert res.json()["error"] == "resource_not_found"

    jwt = exchanger(server, mz).get_token()
    res = httpx.get(server.sts_url + "/.well-known/jwks.json", params={"zone_id": mz.zone})
    assert res.status_code == 200
    assert res.headers["cache-control"] == "public, max-age=300, must-revalidate"
    assert res.headers["x-content-type-options"] == "nosniff"
    keys = res.json()["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert set(key) == {"kty", "crv", "use", "kid", "alg", "x", "y"}
    assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert key["kid"] == header(jwt)["kid"]
    for coordinate in (key["x"], key["y"]):
        assert "=" not in coordinate
        assert len(base64.urlsafe_b64decode(coordinate + "=" * (-len(coordinate) % 4))) == 32

    missing = httpx.get(server.sts_url + "/.well-known/jwks.json")
    assert missing.status_code == 400
    assert missing.json() == {"error": "invalid_token", "error_description": "zone_id required"}


def test_rotation_keeps_old_mandates_verifiable(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    old = exchanger(server, mz).get_token()
    url = f"{server.sts_url}/internal/zones/{mz.zone}/signing-key/rotate"
    refused = httpx.post(url, headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="caracal-sts"'
    rotated = httpx.post(url, headers={"Authorization": f"Bearer {server.config.sts_admin_token}"})
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["rotated"] is True and body["zone_id"] == mz.zone
    assert body["kid"] != header(old)["kid"]

    new = exchanger(server, mz).get_token()
    assert header(new)["kid"] == body["kid"], "the newest key signs"
    kids = [k["kid"] for k in httpx.get(server.sts_url + "/.well-known/jwks.json",
                                        params={"zone_id": mz.zone}).json()["keys"]]
    assert kids == [body["kid"], header(old)["kid"]], "newest first, the previous key still published"


def test_refusals_are_typed_sdk_errors(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    wrong = exchanger(server, dataclasses.replace(mz, secret="cs_wrong"))
    with pytest.raises(AccessDenied) as denied:
        wrong.get_token()
    assert denied.value.http_status == 401
    assert denied.value.description == "invalid client credentials"
    assert denied.value.request_id, "errors carry the request id"

    # A resource the policy does not grant: nothing is minted, the reason is named.
    other = make_resource(admin, zone, f"{mz.resource}-x", ["x:y"])
    with pytest.raises(AccessDenied) as policy:
        exchanger(server, mz, [other["identifier"]]).get_token()
    assert policy.value.http_status == 403
    assert policy.value.description == "policy denied (no_rule_matched)"

    # Unknown resource: skipped, so plain "policy denied".
    with pytest.raises(AccessDenied) as unknown:
        exchanger(server, mz, ["resource://nope"]).get_token()
    assert unknown.value.description == "policy denied"

    # Business scopes without a Session and Delegation are not a bootstrap.
    res = token(server, bootstrap_form(mz, scope=mz.scopes[0]))
    assert res.status_code == 403
    assert res.json()["error_description"] == "policy denied (no_rule_matched)"

    # The application named in another zone is told where it lives (it proved its secret).
    elsewhere = admin.zones.create({"name": f"elsewhere {mz.app[:8]}"})["id"]
    res = token(server, bootstrap_form(mz, zone_id=elsewhere))
    assert res.status_code == 403
    assert res.json()["error"] == "zone_invalid"
    assert mz.zone in res.json()["error_description"]


def test_session_subject_tokens_never_mint_directly(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    session = exchanger(server, mz).get_token()
    form = bootstrap_form(mz, subject_token=session, subject_token_type=ACCESS_TOKEN_TYPE, scope="")
    res = token(server, form)
    assert res.status_code == 403
    assert res.json()["error"] == "access_denied"
    # A forged or foreign token is an invalid subject token.
    forged = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
    res = token(server, bootstrap_form(mz, subject_token=forged, subject_token_type=ACCESS_TOKEN_TYPE))
    assert res.status_code == 401
    assert res.json()["error"] == "invalid_token"
    assert res.json()["error_description"] == "invalid subject_token"
    with pytest.raises(InvalidToken):
        from caracalai_oauth.errors import raise_for_caracal_error

        raise_for_caracal_error(res)


def test_ttl_rules(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    ok = token(server, bootstrap_form(mz, ttl_seconds="3600"))
    assert ok.status_code == 200 and ok.json()["expires_in"] == 3600
    for value, description in (("3601", "ttl_seconds exceeds token TTL cap"),
                               ("-1", "ttl_seconds must be positive"),
                               ("ten", "invalid ttl_seconds")):
        res = token(server, bootstrap_form(mz, ttl_seconds=value))
        assert res.status_code == 400, value
        assert res.json()["error"] == "invalid_token"
        assert res.json()["error_description"] == description


def test_mints_are_audited(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    """Every decision is evidence: the allow lands on caracal.audit.events (Redis in postgres
    mode, where it can be read back), signed with AUDIT_HMAC_KEY."""
    if server.mode != "postgres":
        pytest.skip("the in-memory bus is not observable from outside the process")
    import hashlib
    import hmac as hmac_mod

    mz = mint_zone(admin, zone)
    request_id = f"audit-{uuid.uuid4()}"
    assert token(server, bootstrap_form(mz), headers={"X-Request-Id": request_id}).status_code == 200
    deadline = time.monotonic() + 10
    found = None
    while found is None and time.monotonic() < deadline:
        data = redis_command(b"XREVRANGE caracal.audit.events + - COUNT 200")
        for line in data.split(b"\r\n"):
            if request_id.encode() in line and line.startswith(b"{"):
                found = line
        time.sleep(0.1)
    assert found is not None, "the allow decision never reached caracal.audit.events"
    event = json.loads(found)
    assert event["event_type"] == "token_exchange"
    assert event["decision"] == "allow"
    assert event["evaluation_status"] == "complete"
    assert event["determining_policies_json"] == [{"policy": "caracal-bootstrap"}]
    assert event["zone_id"] == mz.zone
    assert event["metadata_json"]["application_id"] == mz.app
    assert event["metadata_json"]["resource"] == mz.resource
    sig = hmac_mod.new(bytes.fromhex(server.config.audit_hmac_key), found, hashlib.sha256).hexdigest()
    assert sig.encode() in data, "the entry carries sig = HMAC(AUDIT_HMAC_KEY, data)"


def test_token_endpoint_transport_rules(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    url = server.sts_url + "/oauth/2/token"
    form = bootstrap_form(mz)

    res = httpx.post(url + "?zone_id=x", data=form)
    assert (res.status_code, res.json()["error_description"]) == (400, "query parameters are not allowed")
    assert res.json()["requestId"] and res.headers["x-request-id"] == res.json()["requestId"]

    res = httpx.post(url, json=form)
    assert res.status_code == 415
    assert res.json()["error_description"] == "application/x-www-form-urlencoded content type is required"

    res = httpx.post(url, content=b"a=" + b"x" * (64 * 1024),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (res.status_code, res.json()["error"]) == (413, "payload_too_large")

    res = httpx.post(url, content=b"grant_type=x;y=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (res.status_code, res.json()["error_description"]) == (400, "malformed request body")

    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    res = httpx.post(url, content=urlencode([*form.items(), ("scope", "again")]), headers=form_type)
    assert (res.status_code, res.json()["error_description"]) == (400, "duplicate form field: scope")

    res = httpx.post(url, data={**form, "client_assertion": ""})
    assert res.status_code == 400 and res.json()["error_description"].startswith("client_assertion is not supported")

    res = httpx.post(url, data={**form, "grant_type": "client_credentials"})
    assert (res.status_code, res.json()["error_description"]) == (400, "unsupported grant_type")

    res = httpx.post(url, data={**form, "resource": " "})
    assert (res.status_code, res.json()["error_description"]) == (400, "resource must not be empty")

    res = httpx.get(url)
    assert res.status_code == 405 and res.headers["content-type"].startswith("text/plain")
    res = httpx.get(server.sts_url + "/nope")
    assert res.status_code == 404 and res.headers["content-type"].startswith("text/plain")

    body = urlencode([*{**form, "resource": mz.resource}.items(), ("resource", f" {mz.resource} ")])
    res = httpx.post(url, content=body, headers=form_type)
    assert res.status_code == 200, "repeated resources are trimmed and deduplicated"
    assert res.json()["target_resources"] == [mz.resource]


def test_health_and_ready(server: CaracalServer) -> None:
    res = httpx.get(server.sts_url + "/health")
    assert res.status_code == 200 and res.content == b""
    res = httpx.get(server.sts_url + "/ready")
    assert res.status_code == 200
    assert res.json() == {"ok": True, "ready": True}
