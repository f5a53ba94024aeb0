"""The Coordinator through the official runtime SDK (`caracalai`), in both storage modes: governed
Sessions (task blocks, service handles with leases), Delegations (narrow, delegate, accept,
revoke), `application_transport` provisioning, idempotent creation, and the STS honouring live
Session and Delegation state when it mints. Bad input is sent raw (the SDK validates some of it
itself) and must change nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from caracalai import Authority, Caracal, DelegationConstraints
from caracalai.errors import CoordinatorError
from caracalai_admin import AdminClient
from caracalai_oauth.errors import CaracalError

from caracal_server import CaracalServer
from sts_support import MintZone, exchanger, mint_zone


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def caracal(server: CaracalServer, mz: MintZone, gateway_url: str | None = None) -> Caracal:
    return Caracal.from_client_secret(
        coordinator_url=server.coordinator_url,
        sts_url=server.sts_url,
        zone_id=mz.zone,
        application_id=mz.app,
        client_secret=mz.secret,
        resources=[mz.resource],
        gateway_url=gateway_url,
    )


def bearer(server: CaracalServer, mz: MintZone) -> str:
    """A `use=session` mandate with the lifecycle scope, as the SDK mints for Coordinator calls."""
    return exchanger(server, mz).mint_mandate(resource=mz.resource, scopes=["agent:lifecycle"]).token


def coord(server: CaracalServer, method: str, path: str, token: str, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.request(method, server.coordinator_url + path, headers=headers, timeout=30.0, **kwargs)


def session_count(server: CaracalServer, mz: MintZone, token: str) -> int:
    res = coord(server, "GET", f"/zones/{mz.zone}/agents?limit=500", token)
    assert res.status_code == 200, res.text
    return len(res.json()["items"])


def edge_count(server: CaracalServer, mz: MintZone, token: str, session_id: str) -> int:
    res = coord(server, "GET", f"/zones/{mz.zone}/delegations/inbound/{session_id}", token)
    assert res.status_code == 200, res.text
    return len(res.json()["items"])


def gated_mint(server: CaracalServer, mz: MintZone, session_id: str, delegation_id: str | None) -> str:
    return exchanger(server, mz).mint_mandate(
        resource=mz.resource, scopes=mz.scopes, session_id=session_id, delegation_id=delegation_id
    ).token


def test_session_narrow_delegate_accept_and_revoke(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    client = caracal(server, mz)

    async def flow() -> None:
        async with client.session(ttl_seconds=600, labels=["planner"], task="plan") as parent:
            assert parent.session_id
            narrowed = Authority.narrow(
                mz.scopes, ttl_seconds=300, resource_id=mz.resource,
                constraints=DelegationConstraints(max_hops=2),
            )
            # Labels are the Session's roles in the zone's grants (the grant document names the
            # application id as the role), so Sessions that mint carry it.
            async with client.session(authority=narrowed, ttl_seconds=300, parent_ctx=parent,
                                      labels=[mz.app]) as child:
                assert child.delegation_id and child.hop == 1
                # The STS mints a gateway mandate over the live Session and Delegation.
                c = claims(gated_mint(server, mz, child.session_id, child.delegation_id))
                assert c["use"] == "gateway"
                assert c["agent_session_id"] == child.session_id
                assert c["delegation_edge_id"] == child.delegation_id
                assert c["source_session_id"] == parent.session_id

                # A peer Session receives a further-narrowed hop (max_hops 2 allows one more).
                async with client.session(ttl_seconds=300, authority=Authority.none()) as peer:
                    pass
                async with client.session(ttl_seconds=300, parent_ctx=child, authority=Authority.none(),
                                          labels=[mz.app]) as worker:
                    async with client.bind(child):
                        hop = await client.delegate(to_session_id=worker.session_id, scopes=mz.scopes,
                                                    ttl_seconds=120, resource_id=mz.resource)
                    assert hop.scopes == tuple(mz.scopes)
                    async with client.bind(worker):
                        async with client.accept_delegation(hop.delegation_id, validate=True) as accepted:
                            assert accepted.delegation_id == hop.delegation_id
                    c = claims(gated_mint(server, mz, worker.session_id, hop.delegation_id))
                    assert c["hop_count"] == 2 and c["delegation_path"] == [child.delegation_id, hop.delegation_id]

                    # Revoking the child's Delegation cascades: the hop below it dies too, and the
                    # next mint over either is denied at once.
                    await client.revoke_delegation(child.delegation_id)
                    for session_id, edge in ((child.session_id, child.delegation_id),
                                             (worker.session_id, hop.delegation_id)):
                        with pytest.raises(CaracalError):
                            gated_mint(server, mz, session_id, edge)
                assert peer.session_id
            # Leaving the revoked child's block still succeeds (its Session is already gone).

    asyncio.run(flow())


def test_widening_and_broad_delegations_are_refused_and_write_nothing(
    server: CaracalServer, admin: AdminClient, zone: str
) -> None:
    mz = mint_zone(admin, zone)
    client = caracal(server, mz)
    token = bearer(server, mz)

    async def flow() -> None:
        async with client.session(ttl_seconds=600) as parent:
            before = session_count(server, mz, token)
            cases = [
                # Scopes the resource does not have.
                (Authority.narrow(["nope:write"], ttl_seconds=60, resource_id=mz.resource),
                 403, "delegation_scopes_exceed_resource"),
                # No resource at all is a broad Delegation: needs a broad-delegation scope.
                (Authority.narrow(mz.scopes, ttl_seconds=60), 403, "broad_delegation_permission_required"),
                # An unknown resource.
                (Authority.narrow(mz.scopes, ttl_seconds=60, resource_id="resource://missing"),
                 404, "resource_not_found"),
            ]
            for authority, status, code in cases:
                with pytest.raises(CoordinatorError) as err:
                    async with client.session(authority=authority, ttl_seconds=60, parent_ctx=parent):
                        pass
                assert (err.value.status, err.value.code) == (status, code)
            # The SDK terminates the child it started before the Delegation failed.
            live = coord(server, "GET", f"/zones/{mz.zone}/agents?status=active&limit=500", token).json()["items"]
            assert [s["agent_session_id"] for s in live] == [parent.session_id]
            assert session_count(server, mz, token) == before + len(cases)

            # A default edge (max_hops 1) cannot be delegated further.
            async with client.session(ttl_seconds=120, parent_ctx=parent,
                                      authority=Authority.narrow(mz.scopes, ttl_seconds=60,
                                                                 resource_id=mz.resource)) as child:
                async with client.session(ttl_seconds=60, authority=Authority.none()) as other:
                    res = coord(server, "POST", f"/zones/{mz.zone}/delegations", token, json={
                        "source_session_id": child.session_id, "target_session_id": other.session_id,
                        "issuer_application_id": mz.app, "receiver_application_id": mz.app,
                        "parent_edge_id": child.delegation_id, "resource_id": mz.resource,
                        "scopes": mz.scopes, "ttl_seconds": 30,
                    })
                    assert res.status_code == 403, res.text
                    assert res.json()["error"] == "delegation_exceeds_parent_authority"
                    assert edge_count(server, mz, token, other.session_id) == 0

    asyncio.run(flow())


def test_service_session_heartbeat_lease_takeover_and_fencing(
    server: CaracalServer, admin: AdminClient, zone: str
) -> None:
    mz = mint_zone(admin, zone)
    client = caracal(server, mz)

    async def flow() -> None:
        handle = await client.start_session(heartbeat_interval=0)
        assert handle.lease_generation == 1 and handle.status == "active"
        first_deadline = handle.heartbeat_deadline_at
        await asyncio.sleep(0.01)
        await handle.heartbeat()
        assert handle.lease_generation == 1
        assert handle.heartbeat_deadline_at >= first_deadline

        # A restarted process takes the lease over: the generation moves on...
        taken = await client.attach_session(handle.session_id, heartbeat_interval=0)
        assert taken.lease_generation == 2
        # ...and the old holder is fenced off.
        with pytest.raises(CoordinatorError) as err:
            await handle.heartbeat()
        assert (err.value.status, err.value.code) == (409, "session_lease_fenced")

        # The STS mints over a live service Session (no Delegation: an own-Session mint).
        token = bearer(server, mz)
        res = coord(server, "GET", f"/zones/{mz.zone}/agents/{taken.session_id}", token)
        assert res.status_code == 200 and res.json()["lifecycle"] == "service"

        await taken.aclose()
        res = coord(server, "GET", f"/zones/{mz.zone}/agents/{taken.session_id}", token)
        assert res.json()["status"] == "terminated"
        with pytest.raises(CoordinatorError) as err:
            await client.attach_session(taken.session_id, heartbeat_interval=0)
        assert err.value.status in (404, 409)

    asyncio.run(flow())


class _Recording(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_application_transport_provisions_sessions_and_a_delegation(
    server: CaracalServer, admin: AdminClient, zone: str
) -> None:
    """`application_transport` starts two task Sessions and a resource-confined Delegation, then
    mints a fresh gateway mandate per request. A recording stand-in plays the Gateway (issue 5)."""
    mz = mint_zone(admin, zone)
    _Recording.seen = []
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    gateway_url = f"http://127.0.0.1:{gateway.server_address[1]}"
    client = caracal(server, mz, gateway_url=gateway_url)

    async def flow() -> None:
        async with client.application_transport(mz.resource, scopes=mz.scopes) as http:
            for _ in range(2):
                res = await http.get(gateway_url + "/v1/items")
                assert res.status_code == 200

    try:
        asyncio.run(flow())
    finally:
        gateway.shutdown()
    first, second = (claims(h["authorization"].removeprefix("Bearer ")) for h in _Recording.seen)
    assert first["use"] == second["use"] == "gateway"
    assert first["jti"] != second["jti"], "a fresh single-use mandate per request"
    assert first["agent_session_id"] == second["agent_session_id"]
    assert first["delegation_edge_id"] == second["delegation_edge_id"]
    assert _Recording.seen[0]["x-caracal-resource"] == mz.resource

    token = bearer(server, mz)
    target = first["agent_session_id"]
    session = coord(server, "GET", f"/zones/{mz.zone}/agents/{target}", token).json()
    assert session["lifecycle"] == "task" and session["labels"] == [mz.app]
    assert session["ttl_seconds"] == 900 + 120
    edges = coord(server, "GET", f"/zones/{mz.zone}/delegations/inbound/{target}", token).json()["items"]
    assert [e["id"] for e in edges] == [first["delegation_edge_id"]]
    assert edges[0]["constraints_json"]["resources"] == [mz.resource]
    assert edges[0]["issuer_application_id"] == edges[0]["receiver_application_id"] == mz.app


def test_idempotent_session_start(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    token = bearer(server, mz)
    key = f"op-{uuid.uuid4()}"
    body = {"application_id": mz.app, "ttl_seconds": 120, "labels": ["a"]}
    first = coord(server, "POST", f"/zones/{mz.zone}/agents", token, json=body, headers={"idempotency-key": key})
    assert first.status_code == 201, first.text
    again = coord(server, "POST", f"/zones/{mz.zone}/agents", token, json=body, headers={"idempotency-key": key})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers.get("idempotency-replayed") == "true"
    changed = coord(server, "POST", f"/zones/{mz.zone}/agents", token,
                    json={**body, "ttl_seconds": 121}, headers={"idempotency-key": key})
    assert changed.status_code == 409 and changed.json()["error"] == "idempotency_key_conflict"
    assert session_count(server, mz, token) == 1

    session_id = first.json()["agent_session_id"]
    assert coord(server, "DELETE", f"/zones/{mz.zone}/agents/{session_id}", token).status_code == 204
    inactive = coord(server, "POST", f"/zones/{mz.zone}/agents", token, json=body, headers={"idempotency-key": key})
    assert inactive.status_code == 409 and inactive.json()["error"] == "idempotency_result_inactive"


def test_bad_input_is_typed_and_changes_nothing(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    other = mint_zone(admin, admin.zones.create({"name": f"other {secrets.token_hex(3)}"})["id"])
    token = bearer(server, mz)
    foreign_token = bearer(server, other)
    base = f"/zones/{mz.zone}"
    parent = coord(server, "POST", base + "/agents", token, json={"application_id": mz.app, "ttl_seconds": 600})
    assert parent.status_code == 201
    parent_id = parent.json()["agent_session_id"]
    foreign = coord(server, "POST", f"/zones/{other.zone}/agents", foreign_token,
                    json={"application_id": other.app, "ttl_seconds": 600}).json()["agent_session_id"]
    before = session_count(server, mz, token)

    def start(body: dict, expect: tuple[int, str]) -> None:
        res = coord(server, "POST", base + "/agents", token, json={"application_id": mz.app, **body})
        assert (res.status_code, res.json().get("error")) == expect, res.text

    start({"labels": ["x"] * 33}, (400, "invalid_body"))
    start({"labels": ["x" * 65]}, (400, "invalid_body"))
    start({"ttl_seconds": 0}, (400, "invalid_body"))
    start({"ttl_seconds": 86401}, (400, "invalid_body"))
    start({"lifecycle": "service", "ttl_seconds": 10}, (400, "invalid_body"))
    start({"lifecycle": "forever"}, (400, "invalid_body"))
    start({"parent_id": "no-such-session"}, (404, "parent_not_found"))
    start({"parent_id": foreign}, (404, "parent_not_found"))
    start({"subject_session_id": "no-such-record"}, (404, "session_not_found"))
    res = coord(server, "POST", base + "/agents", token, json={"application_id": other.app})
    assert (res.status_code, res.json()["error"]) == (403, "application_ownership_required")
    # A token of another zone never works on this zone's paths.
    res = coord(server, "POST", base + "/agents", foreign_token, json={"application_id": mz.app})
    assert (res.status_code, res.json()["error"]) == (403, "zone_mismatch")
    res = coord(server, "GET", f"{base}/agents/{foreign}", token)
    assert (res.status_code, res.json()["error"]) == (404, "session_not_found")
    res = coord(server, "GET", f"{base}/agents/bad%20id", token)
    assert (res.status_code, res.json()["error"]) == (400, "invalid_params")
    res = coord(server, "POST", base + "/agents", token, content=b"{not json",
                headers={"content-type": "application/json"})
    assert res.status_code == 400 and res.json()["error"] == "internal_error"

    # Depth: a chain of ten children under the root is allowed, the eleventh level is not.
    chain = [parent_id]
    for _ in range(10):
        res = coord(server, "POST", base + "/agents", token,
                    json={"application_id": mz.app, "ttl_seconds": 600, "parent_id": chain[-1]})
        assert res.status_code == 201, res.text
        chain.append(res.json()["agent_session_id"])
    assert res.json()["depth"] == 10
    start({"parent_id": chain[-1]}, (429, "session_depth_limit_exceeded"))
    assert session_count(server, mz, token) == before + 10

    # An expired parent cannot take children, even before the sweeper has run.
    short = coord(server, "POST", base + "/agents", token, json={"application_id": mz.app, "ttl_seconds": 1})
    short_id = short.json()["agent_session_id"]
    time.sleep(1.2)
    res = coord(server, "POST", base + "/agents", token, json={"application_id": mz.app, "parent_id": short_id})
    assert res.status_code in (404, 409), res.text
    assert session_count(server, mz, token) == before + 11

    # Delegations: unknown and foreign Sessions, widening, self-delegation.
    def delegate(body: dict, expect: tuple[int, str], drop: tuple[str, ...] = ()) -> None:
        full = {"source_session_id": chain[1], "target_session_id": chain[2], "issuer_application_id": mz.app,
                "receiver_application_id": mz.app, "resource_id": mz.resource, "scopes": mz.scopes,
                "ttl_seconds": 60, **body}
        for key in drop:
            full.pop(key)
        res = coord(server, "POST", base + "/delegations", token, json=full)
        assert (res.status_code, res.json().get("error")) == expect, res.text

    delegate({"target_session_id": "nobody"}, (404, "delegation_endpoint_not_found"))
    delegate({"target_session_id": foreign}, (404, "delegation_endpoint_not_found"))
    delegate({"target_session_id": chain[1]}, (400, "self_delegation_denied"))
    delegate({"scopes": ["svc:admin"]}, (403, "delegation_scopes_exceed_resource"))
    delegate({"constraints": {"max_hops": 11}}, (400, "invalid_max_hops"))
    delegate({"constraints": {"colour": "red"}}, (400, "invalid_delegation_constraint"))
    delegate({}, (400, "delegation_expiry_required"), drop=("ttl_seconds",))
    assert edge_count(server, mz, token, chain[2]) == 0


def test_ending_a_session_denies_the_next_mint(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    token = bearer(server, mz)
    base = f"/zones/{mz.zone}"
    ids = []
    for _ in range(2):
        res = coord(server, "POST", base + "/agents", token,
                    json={"application_id": mz.app, "ttl_seconds": 600, "labels": [mz.app]})
        ids.append(res.json()["agent_session_id"])
    edge = coord(server, "POST", base + "/delegations", token, json={
        "source_session_id": ids[0], "target_session_id": ids[1], "issuer_application_id": mz.app,
        "receiver_application_id": mz.app, "resource_id": mz.resource, "scopes": mz.scopes, "ttl_seconds": 300,
    })
    assert edge.status_code == 201, edge.text
    edge_id = edge.json()["delegation_edge_id"]
    assert claims(gated_mint(server, mz, ids[1], edge_id))["use"] == "gateway"

    assert coord(server, "DELETE", f"{base}/agents/{ids[0]}", token).status_code == 204
    with pytest.raises(CaracalError):
        gated_mint(server, mz, ids[1], edge_id)
    inbound = coord(server, "GET", f"{base}/delegations/inbound/{ids[1]}/{edge_id}", token)
    assert (inbound.status_code, inbound.json()["error"]) == (404, "delegation_not_found")
