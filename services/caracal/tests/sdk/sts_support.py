"""Shared set-up for the STS tests: a zone an agent can mint in, built through the official admin
SDK exactly as an adopter would (application, resource, grant policy, activated policy set), and
helpers that speak to the STS the way the official clients and our Gateway do."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import httpx
from caracalai_admin import AdminClient, ResourceGrant, author_grants_document
from caracalai_oauth import ClientSecretExchanger
from caracalai_oauth.exchanger import ClientCredentials

from caracal_server import CaracalServer

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class MintZone:
    """A zone with one application granted `<tag>:read` on one resource."""

    zone: str
    app: str
    secret: str
    resource: str
    resource_id: str
    scopes: list[str]
    policy_set: str


def activate(admin: AdminClient, zone: str, name: str, content: str) -> str:
    """Creates a policy from `content`, a set holding it, and activates the set; returns the set id."""
    policy = admin.policies.create(zone, {"name": name, "content": content})
    policy_set = admin.policy_sets.create(zone, name)
    version = admin.policy_sets.add_version(zone, policy_set["id"], [{"policy_version_id": policy["version_id"]}])
    admin.policy_sets.activate(zone, policy_set["id"], version["version_id"])
    return policy_set["id"]


def make_resource(admin: AdminClient, zone: str, identifier: str, scopes: list[str], *,
                  upstream: str | None = "https://upstream.example.test", **extra: object) -> dict:
    """A resource with its own bearer-token provider (every resource needs a credential provider)."""
    tag = secrets.token_hex(3)
    provider = admin.providers.create(zone, {"name": f"upstream {tag}", "kind": "bearer_token",
                                             "config_json": {"bearer_token": f"upstream-secret-{tag}"}})
    body: dict[str, object] = {
        "name": f"svc {tag}",
        "identifier": identifier,
        "scopes": scopes,
        "operation_enforcement": "transport_uniform",
        "credential_provider_id": provider["id"],
        **extra,
    }
    if upstream is not None:
        body["upstream_url"] = upstream
    return admin.resources.create(zone, body)


def mint_zone(admin: AdminClient, zone: str, *, upstream: str | None = "https://upstream.example.test") -> MintZone:
    tag = secrets.token_hex(3)
    app = admin.applications.create(zone, {"name": f"agent-{tag}", "registration_method": "managed"})
    identifier = f"resource://svc-{tag}"
    resource = make_resource(admin, zone, identifier, [f"svc{tag}:read", f"svc{tag}:write"], upstream=upstream)
    content = author_grants_document(
        [ResourceGrant(application_id=app["id"], resource_identifier=identifier, scopes=[f"svc{tag}:read"])]
    )
    policy_set = activate(admin, zone, f"grants-{tag}", content)
    return MintZone(
        zone=zone,
        app=app["id"],
        secret=app["client_secret"],
        resource=identifier,
        resource_id=resource["id"],
        scopes=[f"svc{tag}:read"],
        policy_set=policy_set,
    )


def exchanger(server: CaracalServer, mz: MintZone, resources: list[str] | None = None) -> ClientSecretExchanger:
    """The official token client, configured the way `from_client_secret` wires it."""
    creds = ClientCredentials(zone_id=mz.zone, application_id=mz.app, client_secret=mz.secret)
    return ClientSecretExchanger(
        sts_url=server.sts_url,
        credentials=lambda: creds,
        resources=resources if resources is not None else [mz.resource],
    )


def bootstrap_form(mz: MintZone, **extra: str) -> dict[str, str]:
    form = {
        "grant_type": GRANT_TYPE,
        "zone_id": mz.zone,
        "application_id": mz.app,
        "client_secret": mz.secret,
        "scope": "agent:lifecycle",
        "resource": mz.resource,
    }
    form.update(extra)
    return form


def token(server: CaracalServer, form: dict[str, str] | list[tuple[str, str]], **kwargs) -> httpx.Response:
    return httpx.post(server.sts_url + "/oauth/2/token", data=form, timeout=30.0, **kwargs)


def gateway_headers(key_hex: str, body: bytes, *, path: str = "/oauth/2/token", method: str = "POST",
                    request_id: str | None = None, at: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The Gateway's HMAC envelope (spec/sts.md §6), computed independently of the server."""
    unix = str(at if at is not None else int(time.time()))
    nonce = nonce or secrets.token_hex(12)
    canonical = "\n".join([unix, nonce, method.upper(), path, hashlib.sha256(body).hexdigest()])
    sig = hmac.new(bytes.fromhex(key_hex), canonical.encode(), hashlib.sha256).hexdigest()
    headers = {
        "X-Caracal-Gateway-Timestamp": unix,
        "X-Caracal-Gateway-Request": nonce,
        "X-Caracal-Gateway-Signature": sig,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers
