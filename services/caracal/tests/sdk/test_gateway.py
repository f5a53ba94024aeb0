"""The Gateway end to end, in both storage modes: the official SDK's quickstart
(`Caracal.from_client_secret` + `application_transport` + `gateway_request`) reaches a local
upstream through the Gateway, which swaps the single-use mandate for the provider credential
only Caracal holds. Refusals (replay, revoked Delegation, an ungranted scope, every malformed
request class) happen before any byte reaches the upstream, and a streamed answer is cut with the
`X-Caracal-Revoked` trailer when its Session is revoked mid-stream
(spec/coordinator-gateway.md Part B)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest
from caracalai import Caracal
from caracalai_admin import AdminClient, ResourceGrant, author_grants_document

from caracal_server import CaracalServer
from sts_support import activate, exchanger


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Upstream(BaseHTTPRequestHandler):
    """A protected upstream that records what reached it. `/stream` answers server-sent events
    slowly, one every 100 ms for up to 30 s."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []
    lock = threading.Lock()

    def _record(self) -> dict:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode(errors="replace"),
        }
        with type(self).lock:
            type(self).seen.append(entry)
        return entry

    def _handle(self) -> None:
        entry = self._record()
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            try:
                for i in range(300):
                    self.wfile.write(f"data: event {i}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the Gateway hung up: what a cut stream looks like from here
            self.close_connection = True
            return
        body = json.dumps({"ok": True, "path": entry["path"], "method": entry["method"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("server", "upstream/1.0")
        self.end_headers()
        self.wfile.write(body)

    do_GET = _handle  # noqa: N815 (http.server's names)
    do_POST = _handle  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@dataclass(frozen=True)
class GatewayZone:
    zone: str
    app: str
    secret: str
    resource: str
    read: str
    write: str
    provider_secret: str


def gateway_zone(admin: AdminClient, zone: str, upstream: str) -> GatewayZone:
    """An application granted `read` (not `write`) on a resource whose upstream is `upstream`,
    with a bearer-token provider holding the credential the upstream expects."""
    tag = secrets.token_hex(3)
    app = admin.applications.create(zone, {"name": f"agent-{tag}", "registration_method": "managed"})
    provider_secret = f"provider-secret-{secrets.token_hex(8)}"
    provider = admin.providers.create(zone, {"name": f"upstream {tag}", "kind": "bearer_token",
                                             "config_json": {"bearer_token": provider_secret}})
    identifier = f"resource://gw-{tag}"
    read, write = f"gw{tag}:read", f"gw{tag}:write"
    admin.resources.create(zone, {
        "name": f"gw {tag}",
        "identifier": identifier,
        "scopes": [read, write],
        "operation_enforcement": "transport_uniform",
        "credential_provider_id": provider["id"],
        "upstream_url": upstream,
    })
    content = author_grants_document(
        [ResourceGrant(application_id=app["id"], resource_identifier=identifier, scopes=[read])]
    )
    activate(admin, zone, f"grants-{tag}", content)
    return GatewayZone(zone=zone, app=app["id"], secret=app["client_secret"], resource=identifier,
                       read=read, write=write, provider_secret=provider_secret)


def sdk(server: CaracalServer, gz: GatewayZone) -> Caracal:
    return Caracal.from_client_secret(
        coordinator_url=server.coordinator_url,
        sts_url=server.sts_url,
        zone_id=gz.zone,
        application_id=gz.app,
        client_secret=gz.secret,
        resources=[gz.resource],
        gateway_url=server.gateway_url,
    )


def seen_since(mark: int) -> list[dict]:
    with Upstream.lock:
        return list(Upstream.seen[mark:])


def mark() -> int:
    with Upstream.lock:
        return len(Upstream.seen)


def provision(server: CaracalServer, gz: GatewayZone) -> tuple[Caracal, dict]:
    """Runs one quickstart call and returns the client and the claims of the mandate it sent,
    captured on the way out (the Session and Delegation the SDK provisioned)."""
    client = sdk(server, gz)
    sent: list[str] = []

    async def capture(request: httpx.Request) -> None:
        sent.append(request.headers["authorization"].removeprefix("Bearer "))

    async def flow() -> None:
        target = client.gateway_request(gz.resource, "/v1/items")
        async with client.application_transport(gz.resource, scopes=[gz.read],
                                                event_hooks={"request": [capture]}) as http:
            res = await http.get(target.url, headers=target.headers)
            assert res.status_code == 200, res.text

    asyncio.run(flow())
    return client, claims(sent[-1])


def test_quickstart_reaches_the_upstream_with_the_provider_credential(
    server: CaracalServer, admin: AdminClient, zone: str, upstream: str
) -> None:
    gz = gateway_zone(admin, zone, upstream)
    client = sdk(server, gz)
    before = mark()
    sent: list[str] = []

    async def capture(request: httpx.Request) -> None:
        sent.append(request.headers["authorization"].removeprefix("Bearer "))

    async def flow() -> list[httpx.Response]:
        target = client.gateway_request(gz.resource, "/v1/items?limit=2")
        async with client.application_transport(gz.resource, scopes=[gz.read],
                                                event_hooks={"request": [capture]}) as http:
            first = await http.get(target.url, headers=target.headers)
            second = await http.post(server.gateway_url + "/v1/items", json={"name": "x"})
            return [first, second]

    first, second = asyncio.run(flow())
    assert first.status_code == 200, first.text
    assert first.json() == {"ok": True, "path": "/v1/items?limit=2", "method": "GET"}
    assert second.status_code == 200, second.text
    assert first.headers.get("x-request-id")
    assert first.headers.get("server") != "upstream/1.0", "upstream identification is stripped"
    assert int(first.headers["x-caracal-token-expires-in"]) > 35

    reached = seen_since(before)
    assert len(reached) == 2, reached
    assert reached[1]["method"] == "POST" and json.loads(reached[1]["body"]) == {"name": "x"}
    for entry, mandate in zip(reached, sent):
        headers = entry["headers"]
        assert headers["authorization"] == f"Bearer {gz.provider_secret}"
        assert not [k for k in headers if k.startswith("x-caracal-")], headers
        assert mandate not in json.dumps(entry), "the upstream never sees the agent's mandate"
        assert headers["x-request-id"]
        assert headers["host"] == upstream.removeprefix("http://")
    assert claims(sent[0])["use"] == "gateway"
    assert claims(sent[0])["jti"] != claims(sent[1])["jti"]


def test_a_replayed_mandate_is_refused_and_reaches_nothing(
    server: CaracalServer, admin: AdminClient, zone: str, upstream: str
) -> None:
    gz = gateway_zone(admin, zone, upstream)
    _, sent = provision(server, gz)
    mandate = exchanger(server, gz_as_mint(gz)).mint_mandate(
        resource=gz.resource, scopes=[gz.read], session_id=sent["agent_session_id"],
        delegation_id=sent["delegation_edge_id"],
    ).token
    headers = {"authorization": f"Bearer {mandate}", "x-caracal-resource": gz.resource}
    before = mark()
    first = httpx.get(server.gateway_url + "/v1/once", headers=headers, timeout=30.0)
    assert first.status_code == 200, first.text
    again = httpx.get(server.gateway_url + "/v1/once", headers=headers, timeout=30.0)
    assert again.status_code == 401, again.text
    assert again.json()["error"] == "invalid_token"
    assert again.json()["error_description"] == "token replay detected"
    assert again.json()["requestId"] == again.headers["x-request-id"]
    assert len(seen_since(before)) == 1, "the upstream saw the first use only"


def gz_as_mint(gz: GatewayZone):
    """The fields `sts_support.exchanger` reads, from a GatewayZone."""
    from sts_support import MintZone

    return MintZone(zone=gz.zone, app=gz.app, secret=gz.secret, resource=gz.resource,
                    resource_id="", scopes=[gz.read], policy_set="")


def lifecycle_bearer(server: CaracalServer, gz: GatewayZone) -> str:
    return exchanger(server, gz_as_mint(gz)).mint_mandate(
        resource=gz.resource, scopes=["agent:lifecycle"]).token


def test_a_revoked_delegation_is_denied_before_the_upstream(
    server: CaracalServer, admin: AdminClient, zone: str, upstream: str
) -> None:
    gz = gateway_zone(admin, zone, upstream)
    _, sent = provision(server, gz)
    mandate = exchanger(server, gz_as_mint(gz)).mint_mandate(
        resource=gz.resource, scopes=[gz.read], session_id=sent["agent_session_id"],
        delegation_id=sent["delegation_edge_id"],
    ).token
    token = lifecycle_bearer(server, gz)
    revoked = httpx.patch(
        f"{server.coordinator_url}/zones/{gz.zone}/delegations/{sent['delegation_edge_id']}/revoke",
        headers={"authorization": f"Bearer {token}"}, json={"reason": "test"}, timeout=30.0)
    assert revoked.status_code in (200, 204), revoked.text
    before = mark()
    res = httpx.get(server.gateway_url + "/v1/items",
                    headers={"authorization": f"Bearer {mandate}", "x-caracal-resource": gz.resource},
                    timeout=30.0)
    assert res.status_code in (401, 403), res.text
    assert seen_since(before) == []


def test_a_scope_the_policy_does_not_grant_is_denied(
    server: CaracalServer, admin: AdminClient, zone: str, upstream: str
) -> None:
    gz = gateway_zone(admin, zone, upstream)
    client = sdk(server, gz)
    before = mark()

    async def flow() -> int | None:
        async with client.application_transport(gz.resource, scopes=[gz.write]) as http:
            try:
                res = await http.get(server.gateway_url + "/v1/items")
            except Exception:  # noqa: BLE001 - the SDK may refuse at mint time
                return None
            return res.status_code

    status = asyncio.run(flow())
    assert status is None or status in (401, 403), status
    assert seen_since(before) == [], "an ungranted scope never reaches the upstream"


def test_malformed_requests_are_refused_in_order_before_the_upstream(
    server: CaracalServer, admin: AdminClient, zone: str, upstream: str
) -> None:
    gz = gateway_zone(admin, zone, upstream)
    _, sent = provision(server, gz)

    def fresh() -> str:
        return exchanger(server, gz_as_mint(gz)).mint_mandate(
            resource=gz.resource, scopes=[gz.read], session_id=sent["agent_session_id"],
            delegation_id=sent["delegation_edge_id"],
        ).token

    good = fresh()
    header, payload, signature = good.split(".")
    forged = ".".join([header, payload, base64.urlsafe_b64encode(b"\x00" * 64).decode().rstrip("=")])
    cases = [
        ("missing bearer", "/v1/x", {"x-caracal-resource": gz.resource}, 401, "missing bearer token"),
        ("oversized bearer", "/v1/x", {"authorization": "Bearer " + "a" * 5000,
                                        "x-caracal-resource": gz.resource}, 401, "bearer token too large"),
        ("malformed bearer", "/v1/x", {"authorization": "Bearer not.a-jwt",
                                        "x-caracal-resource": gz.resource}, 401, "malformed bearer token"),
        ("caller client id", "/v1/x", {"authorization": f"Bearer {good}", "x-caracal-resource": gz.resource,
                                        "x-caracal-client-id": gz.app}, 400,
         "client identity derives from the bearer token"),
        ("no resource header", "/v1/x", {"authorization": f"Bearer {good}"}, 400, "missing routing headers"),
        ("encoded traversal", "/v1/%2e%2e/admin", {"authorization": f"Bearer {good}",
                                                    "x-caracal-resource": gz.resource}, 400,
         "path traversal not permitted"),
        ("double-encoded traversal", "/v1/%252e%252e/admin", {"authorization": f"Bearer {good}",
                                                               "x-caracal-resource": gz.resource}, 400,
         "path traversal not permitted"),
        ("bad signature", "/v1/x", {"authorization": f"Bearer {forged}", "x-caracal-resource": gz.resource},
         401, "bearer signature invalid"),
    ]
    before = mark()
    for name, path, headers, status, description in cases:
        res = raw_request(server.gateway_url, "GET", path, headers)
        assert res.status == status, (name, res.status, res.body)
        body = json.loads(res.body)
        assert body["error_description"] == description, (name, body)
        assert body["requestId"], name
    assert seen_since(before) == [], "no malformed request reached the upstream"
    # The good mandate was never spent by the refusals after its own preflight failures: the
    # signature check is the first step that consumes nothing either, so it still works once.
    ok = httpx.get(server.gateway_url + "/v1/after",
                   headers={"authorization": f"Bearer {good}", "x-caracal-resource": gz.resource},
                   timeout=30.0)
    assert ok.status_code == 200, ok.text


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: str
    trailers: dict[str, str]


def raw_request(base: str, method: str, path: str, headers: dict[str, str]) -> RawResponse:
    """One HTTP/1.1 request over a plain socket, so encoded paths reach the server as written."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}", "connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    trailers: dict[str, str] = {}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                for line in rest.decode().split("\r\n"):
                    if ":" in line:
                        name, _, value = line.partition(":")
                        trailers[name.strip().lower()] = value.strip()
                break
            body += rest[:size]
            rest = rest[size + 2:]
    else:
        body = rest
    return RawResponse(int(status_line.split()[1]), headers, body.decode(errors="replace"), trailers)


def test_a_stream_is_cut_with_the_trailer_when_its_session_is_revoked(
    server: CaracalServer, admin: AdminClient, zone: str, upstream: str
) -> None:
    gz = gateway_zone(admin, zone, upstream)
    _, sent = provision(server, gz)
    mandate = exchanger(server, gz_as_mint(gz)).mint_mandate(
        resource=gz.resource, scopes=[gz.read], session_id=sent["agent_session_id"],
        delegation_id=sent["delegation_edge_id"],
    ).token
    host, port = server.gateway_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        request = (
            f"GET /stream HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\nte: trailers\r\n"
            f"accept: text/event-stream\r\nauthorization: Bearer {mandate}\r\n"
            f"x-caracal-resource: {gz.resource}\r\n\r\n"
        )
        conn.sendall(request.encode())
        data = b""
        while b"event 2" not in data:
            chunk = conn.recv(65536)
            assert chunk, f"the stream ended before any event: {data!r}"
            data += chunk
        # End the Session the mandate names, then have the Gateway reload its revocation
        # snapshot (a stream message may also deliver it; the reload makes the test exact).
        token = lifecycle_bearer(server, gz)
        ended = httpx.delete(f"{server.coordinator_url}/zones/{gz.zone}/agents/{sent['agent_session_id']}",
                             headers={"authorization": f"Bearer {token}"}, timeout=30.0)
        assert ended.status_code == 204, ended.text
        reload = httpx.post(server.gateway_url + "/internal/revocations/reload",
                            headers={"authorization": f"Bearer {server.admin_token}"}, timeout=30.0)
        assert reload.status_code == 200, reload.text
        while chunk := conn.recv(65536):
            data += chunk
    elapsed = time.monotonic() - started
    res = parse_response(data)
    assert res.status == 200
    assert res.headers["content-type"].startswith("text/event-stream")
    assert res.trailers.get("x-caracal-revoked") == "true", (res.headers, res.trailers, res.body[-200:])
    assert elapsed < 25, "the stream was cut, not run to its end"
