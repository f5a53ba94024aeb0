"""The delegated mint and the Gateway exchange through the official clients: `caracalai-oauth`
mints a single-use `use=gateway` mandate for a Session and Delegation, the Gateway's HMAC-signed
exchange turns it into a `use=resource` mandate plus the private upstream directive, and
`caracalai-verify` accepts the resource mandate while refusing the gateway one (spec/sts.md
§3.5–3.6, §4, §6).

Sessions and Delegations are made through the Coordinator, as the runtime SDK makes them."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from urllib.parse import urlencode

import httpx
import pytest
from caracalai_admin import AdminClient
from caracalai_identity import TokenInvalidError, verify_token
from caracalai_revocation.inmem import InMemoryRevocationStore
from caracalai_verify import AuthOptions, authenticate_options

from caracal_server import CaracalServer
from sts_support import ACCESS_TOKEN_TYPE, GRANT_TYPE, exchanger, gateway_headers, mint_zone


def claims(jwt: str) -> dict:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def seed_delegation(server: CaracalServer, zone: str, app: str, bearer: str, resource: str,
                    scopes: list[str]) -> tuple[str, str]:
    """A parent and a child task Session of `app` and a live edge parent → child, through the
    Coordinator. The labels carry the application id: the grant document's role."""
    def call(path: str, body: dict) -> dict:
        res = httpx.post(server.coordinator_url + f"/zones/{zone}" + path, json=body,
                         headers={"authorization": f"Bearer {bearer}"}, timeout=30.0)
        assert res.status_code == 201, res.text
        return res.json()

    start = {"application_id": app, "ttl_seconds": 3600, "labels": [app]}
    parent = call("/agents", start)["agent_session_id"]
    child = call("/agents", {**start, "parent_id": parent, "parent_authority": "none"})["agent_session_id"]
    edge = call("/delegations", {
        "source_session_id": parent, "target_session_id": child, "issuer_application_id": app,
        "receiver_application_id": app, "resource_id": resource, "scopes": scopes, "ttl_seconds": 3600,
    })["delegation_edge_id"]
    return child, edge


def test_delegated_mint_and_gateway_exchange(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    client = exchanger(server, mz)
    child, edge = seed_delegation(server, mz.zone, mz.app, client.get_token(), mz.resource, mz.scopes)

    minted = client.mint_mandate(resource=mz.resource, scopes=mz.scopes, session_id=child, delegation_id=edge)
    gateway = minted.token
    c = claims(gateway)
    assert c["use"] == "gateway" and c["aud"] == [server.sts_url]
    assert c["agent_session_id"] == child and c["delegation_edge_id"] == edge
    assert c["hop_count"] == 1 and c["delegation_path"] == [edge]
    assert [hop.get("agent_session_id") for hop in c["delegation_chain"]] == [c["source_session_id"], child]

    # Gateway mandates are for the Gateway alone: the SDK verifiers refuse them by design.
    with pytest.raises(TokenInvalidError):
        asyncio.run(verify_token(gateway, issuer=server.sts_url, audience=server.sts_url,
                                 expected_zone_id=mz.zone))

    def exchange(mandate: str) -> httpx.Response:
        request_id = f"gw-{secrets.token_hex(6)}"
        body = urlencode({
            "grant_type": GRANT_TYPE, "zone_id": mz.zone, "application_id": mz.app,
            "subject_token": mandate, "subject_token_type": ACCESS_TOKEN_TYPE, "resource": mz.resource,
            "request_method": "GET", "request_path": "/v1/items", "gateway_request_id": request_id,
        }).encode()
        headers = gateway_headers(server.config.gateway_hmac_key, body, request_id=request_id)
        return httpx.post(server.sts_url + "/oauth/2/token", content=body, headers=headers, timeout=30.0)

    res = exchange(gateway)
    assert res.status_code == 200, res.text
    body = res.json()
    upstream = body["upstreams"][mz.resource]
    assert upstream["url"] == "https://upstream.example.test"
    assert upstream["auth_mode"] == "provider_oauth" and upstream["provider_token"].startswith("upstream-secret-")
    resource = body["access_token"]
    r = claims(resource)
    assert r["use"] == "resource" and r["aud"] == [mz.resource]
    assert r["scope"] == mz.scopes[0] and r["root_sid"] == c["sid"]

    result = asyncio.run(authenticate_options(resource, AuthOptions(
        issuer=server.sts_url, audience=mz.resource, revocations=InMemoryRevocationStore(),
        expected_zone_id=mz.zone, required_scopes=mz.scopes, required_use="resource")))
    assert result.ok, result.error
    assert result.principal is not None

    replay = exchange(gateway)
    assert replay.status_code == 401, "a gateway mandate is exchanged once"
    assert replay.json()["error_description"] == "invalid subject_token"

    forged = gateway_headers("00" * 32, b"grant_type=x", request_id="gw-forged")
    res = httpx.post(server.sts_url + "/oauth/2/token", content=b"grant_type=x", headers=forged)
    assert res.status_code == 401
    assert res.json()["error_description"] == "invalid gateway exchange signature"
