"""Bad input gets a typed error and changes nothing. Each test re-lists afterwards to prove no
row was written. The SDK is used wherever it can express the input (it sends any dict as the
body); raw HTTP only for what it cannot send: broken JSON, oversized bodies, unknown routes."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from caracalai_admin import AdminClient

from assertions import api_error, raw_error

MIB = 1024 * 1024
API_KEY_CONFIG = {"header_name": "X-Api-Key", "api_key": "k-123"}


def _provider(admin: AdminClient, zone: str, name: str = "Key") -> str:
    return admin.providers.create(zone, {"name": name, "kind": "api_key", "config_json": API_KEY_CONFIG})["id"]


def _resource_body(provider_id: str, identifier: str = "resource://svc", **extra) -> dict:
    return {
        "name": "Svc",
        "identifier": identifier,
        "scopes": ["svc:read"],
        "upstream_url": "https://svc.example.test",
        "credential_provider_id": provider_id,
        **extra,
    }


def _zone_names(admin: AdminClient) -> set[str]:
    return {z["name"] for z in admin.zones.list()}


# --- malformed JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "collection",
    ["applications", "providers", "resources", "policies", "policy-sets"],
)
def test_malformed_json_is_400_and_writes_nothing(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str], zone: str, collection: str
) -> None:
    res = raw.post(
        f"/v1/zones/{zone}/{collection}",
        content=b'{"name": "half',
        headers={**auth, "content-type": "application/json"},
    )
    raw_error(res, 400)
    listing = {
        "applications": admin.applications.list,
        "providers": admin.providers.list,
        "resources": admin.resources.list,
        "policies": admin.policies.list,
        "policy-sets": admin.policy_sets.list,
    }[collection]
    assert listing(zone) == []


def test_malformed_json_zone_is_400_and_writes_nothing(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str]
) -> None:
    before = len(admin.zones.list())
    res = raw.post("/v1/zones", content=b"{not json}", headers={**auth, "content-type": "application/json"})
    raw_error(res, 400)
    assert len(admin.zones.list()) == before


# --- wrong types and unknown fields ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": 123}, id="name-number"),
        pytest.param({"name": ""}, id="name-empty"),
        pytest.param({"name": "   "}, id="name-blank"),
        pytest.param({"name": "x" * 121}, id="name-too-long"),
        pytest.param({"name": "ok", "slug": "Not A Slug"}, id="slug-charset"),
        pytest.param({"name": "ok", "dcr_enabled": "yes"}, id="dcr-string"),
        pytest.param({"name": "ok", "bogus": True}, id="unknown-field"),
    ],
)
def test_invalid_zone_body(admin: AdminClient, body: dict) -> None:
    before = len(admin.zones.list())
    api_error(400, "invalid_zone", admin.zones.create, body)
    assert len(admin.zones.list()) == before


def test_invalid_zone_patch_changes_nothing(admin: AdminClient, zone: str) -> None:
    before = admin.zones.get(zone)
    api_error(400, "invalid_zone", admin.zones.patch, zone, {"name": 123})
    api_error(400, "invalid_zone", admin.zones.patch, zone, {"name": "ok", "bogus": 1})
    api_error(400, "no_fields", admin.zones.patch, zone, {})
    assert admin.zones.get(zone) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": 123, "registration_method": "managed"}, id="name-number"),
        pytest.param({"name": "", "registration_method": "managed"}, id="name-empty"),
        pytest.param({"name": "ok"}, id="no-registration-method"),
        pytest.param({"name": "ok", "registration_method": "dcr"}, id="registration-dcr"),
        pytest.param({"name": "ok", "registration_method": "managed", "bogus": 1}, id="unknown-field"),
        pytest.param({"name": "ok", "registration_method": "managed", "traits": "tier:gold"}, id="traits-string"),
    ],
)
def test_invalid_application_body(admin: AdminClient, zone: str, body: dict) -> None:
    api_error(400, "invalid_application", admin.applications.create, zone, body)
    assert admin.applications.list(zone) == []


def test_invalid_application_patch_changes_nothing(admin: AdminClient, zone: str) -> None:
    app = admin.applications.create(zone, {"name": "app", "registration_method": "managed"})
    api_error(400, "invalid_application", admin.applications.patch, zone, app["id"], {"name": 123})
    api_error(400, "invalid_application", admin.applications.patch, zone, app["id"], {"bogus": 1})
    api_error(400, "invalid_application", admin.applications.patch, zone, app["id"], {"client_secret": "short"})
    api_error(400, "no_fields", admin.applications.patch, zone, app["id"], {})
    assert admin.applications.get(zone, app["id"])["name"] == "app"
    assert admin.applications.get_client_secret(zone, app["id"]) == {"client_secret": app["client_secret"]}


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"name": 123}, id="name-number"),
        pytest.param({"scopes": "svc:read"}, id="scopes-string"),
        pytest.param({"scopes": []}, id="scopes-empty"),
        pytest.param({"scopes": [1]}, id="scope-number"),
        pytest.param({"upstream_url": "ftp://svc.example.test"}, id="upstream-not-http"),
        pytest.param({"operation_enforcement": "sometimes"}, id="enforcement-unknown"),
    ],
)
def test_invalid_resource_body(admin: AdminClient, zone: str, override: dict) -> None:
    provider_id = _provider(admin, zone)
    api_error(400, "invalid_resource", admin.resources.create, zone, {**_resource_body(provider_id), **override})
    assert admin.resources.list(zone) == []


@pytest.mark.parametrize(
    "identifier",
    [
        pytest.param("not a uri", id="no-scheme"),
        pytest.param("provider://svc", id="provider-scheme"),
        pytest.param("https://user:pw@svc.example.test/", id="userinfo"),
    ],
)
def test_invalid_resource_identifier(admin: AdminClient, zone: str, identifier: str) -> None:
    provider_id = _provider(admin, zone)
    api_error(
        400,
        "invalid_resource_identifier",
        admin.resources.create,
        zone,
        _resource_body(provider_id, identifier=identifier),
    )
    assert admin.resources.list(zone) == []


def test_invalid_policy_and_policy_set_bodies(admin: AdminClient, zone: str) -> None:
    api_error(400, "invalid_body", admin.policies.create, zone, {"name": 123, "content": "x"})
    api_error(400, "invalid_body", admin.policies.create, zone, {"name": "no content"})
    assert admin.policies.list(zone) == []
    api_error(400, "invalid_body", admin.policy_sets.create, zone, "")
    assert admin.policy_sets.list(zone) == []


# --- provider configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({**API_KEY_CONFIG, "bogus": "x"}, id="unknown-key"),
        pytest.param({"header_name": "X-Api-Key"}, id="missing-api-key"),
        pytest.param({"api_key": "k"}, id="missing-header-name"),
        pytest.param({"header_name": "X-Api-Key", "api_key": "   "}, id="blank-api-key"),
        pytest.param({"header_name": "X-Forwarded-For", "api_key": "k"}, id="forwarding-header"),
        pytest.param({"header_name": "X-Caracal-Thing", "api_key": "k"}, id="caracal-header"),
    ],
)
def test_invalid_provider_config(admin: AdminClient, zone: str, config: dict) -> None:
    error = api_error(
        400,
        "invalid_provider_config",
        admin.providers.create,
        zone,
        {"name": "Bad", "kind": "api_key", "config_json": config},
    )
    assert "k-123" not in json.dumps(error.body)
    assert admin.providers.list(zone) == []


def test_invalid_provider_kind_and_identifier(admin: AdminClient, zone: str) -> None:
    api_error(400, "invalid_provider", admin.providers.create, zone, {"name": "Bad", "kind": "header"})
    api_error(
        400,
        "invalid_provider_identifier",
        admin.providers.create,
        zone,
        {"identifier": "provider://Not_Valid", "kind": "api_key", "config_json": API_KEY_CONFIG},
    )
    assert admin.providers.list(zone) == []


def test_provider_ignores_unknown_top_level_keys(admin: AdminClient, zone: str) -> None:
    created = admin.providers.create(zone, {"name": "Lenient", "kind": "none", "color": "blue"})
    assert "color" not in created
    assert [p["id"] for p in admin.providers.list(zone)] == [created["id"]]


# --- body size -----------------------------------------------------------------------------------


def test_body_over_one_mib_is_413_and_writes_nothing(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str], zone: str
) -> None:
    body = json.dumps({"name": "Huge", "kind": "none", "padding": "a" * (MIB + 1024)}).encode()
    try:
        res = raw.post(
            f"/v1/zones/{zone}/providers", content=body, headers={**auth, "content-type": "application/json"}
        )
    except httpx.TransportError as error:
        pytest.fail(f"the server dropped the connection instead of answering 413: {error!r}")
    raw_error(res, 413)
    assert admin.providers.list(zone) == []


def test_body_just_under_one_mib_is_accepted(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str], zone: str
) -> None:
    envelope = json.dumps({"name": "Big", "kind": "none", "padding": ""}).encode()
    body = json.dumps({"name": "Big", "kind": "none", "padding": "a" * (MIB - len(envelope) - 16)}).encode()
    assert len(body) < MIB
    res = raw.post(f"/v1/zones/{zone}/providers", content=body, headers={**auth, "content-type": "application/json"})
    assert res.status_code == 201, res.text[:300]
    assert len(admin.providers.list(zone)) == 1


# --- path ids and routes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("bad id", id="space"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("semi;colon", id="semicolon"),
    ],
)
def test_invalid_path_id_is_400_invalid_params(admin: AdminClient, zone: str, bad_id: str) -> None:
    api_error(400, "invalid_params", admin.zones.get, bad_id)
    api_error(400, "invalid_params", admin.applications.list, bad_id)
    api_error(400, "invalid_params", admin.applications.get, zone, bad_id)
    api_error(400, "invalid_params", admin.resources.get, zone, bad_id)
    api_error(400, "invalid_params", admin.applications.delete, zone, bad_id)
    api_error(
        400, "invalid_params", admin.applications.create, bad_id, {"name": "x", "registration_method": "managed"}
    )


def test_longest_valid_path_id_is_not_found(admin: AdminClient) -> None:
    api_error(404, "zone_not_found", admin.zones.get, "a" * 128)
    api_error(404, "zone_not_found", admin.zones.get, "A-z_0.9:x")


def test_unknown_zone_is_404(admin: AdminClient) -> None:
    missing = "00000000-0000-7000-8000-000000000000"
    api_error(404, "zone_not_found", admin.applications.create, missing, {"name": "x", "registration_method": "managed"})
    api_error(404, "zone_not_found", admin.policy_sets.create, missing, "set")


def test_unknown_route_is_404(raw: httpx.Client, auth: dict[str, str], zone: str) -> None:
    for path in ("/v1/nope", f"/v1/zones/{zone}/nope", "/nope"):
        res = raw.get(path, headers=auth)
        assert res.status_code == 404, f"{path}: {res.status_code} {res.text[:200]}"
        body = res.json()
        assert body.get("error") == "Not Found" and body.get("statusCode") == 404, f"{path}: {body}"


# --- conflicts -----------------------------------------------------------------------------------


def test_duplicate_application_name_is_409(admin: AdminClient, zone: str) -> None:
    first = admin.applications.create(zone, {"name": "Checkout", "registration_method": "managed"})
    api_error(409, "application_name_taken", admin.applications.create, zone, {"name": "Checkout", "registration_method": "managed"})
    api_error(409, "application_name_taken", admin.applications.create, zone, {"name": "checkout", "registration_method": "managed"})
    second = admin.applications.create(zone, {"name": "Other", "registration_method": "managed"})
    api_error(409, "application_name_taken", admin.applications.patch, zone, second["id"], {"name": "CHECKOUT"})
    apps = admin.applications.list(zone)
    assert sorted(a["name"] for a in apps) == ["Checkout", "Other"]
    assert admin.applications.get_client_secret(zone, first["id"]) == {"client_secret": first["client_secret"]}


def test_deleted_application_name_can_be_reused(admin: AdminClient, zone: str) -> None:
    first = admin.applications.create(zone, {"name": "Reuse", "registration_method": "managed"})
    admin.applications.delete(zone, first["id"])
    again = admin.applications.create(zone, {"name": "Reuse", "registration_method": "managed"})
    assert again["id"] != first["id"]


def test_duplicate_resource_identifier_is_409(admin: AdminClient, zone: str) -> None:
    provider_id = _provider(admin, zone)
    first = admin.resources.create(zone, _resource_body(provider_id, identifier="resource://dup"))
    api_error(
        409,
        "resource_identifier_conflict",
        admin.resources.create,
        zone,
        _resource_body(provider_id, identifier="resource://dup", name="Other"),
    )
    assert [r["id"] for r in admin.resources.list(zone)] == [first["id"]]


def test_duplicate_explicit_zone_slug_is_409(admin: AdminClient) -> None:
    slug = f"slug-{secrets.token_hex(4)}"
    first = admin.zones.create({"name": "Slug owner", "slug": slug})
    assert first["slug"] == slug
    api_error(409, "zone_slug_conflict", admin.zones.create, {"name": "Slug thief", "slug": slug})
    assert [z["id"] for z in admin.zones.list() if z["slug"] == slug] == [first["id"]]


def test_duplicate_zone_name_gets_a_suffixed_slug(admin: AdminClient) -> None:
    name = f"Twin {secrets.token_hex(4)}"
    first = admin.zones.create({"name": name})
    second = admin.zones.create({"name": name})
    assert second["id"] != first["id"]
    assert second["slug"] == first["slug"] + "-2"


def test_duplicate_policy_set_name_is_409(admin: AdminClient, zone: str) -> None:
    first = admin.policy_sets.create(zone, "main")
    api_error(409, "policy_set_name_conflict", admin.policy_sets.create, zone, "main")
    assert [s["id"] for s in admin.policy_sets.list(zone)] == [first["id"]]


# --- zone isolation ------------------------------------------------------------------------------


def test_resource_from_another_zone_is_not_found(admin: AdminClient, zone: str) -> None:
    provider_id = _provider(admin, zone)
    resource = admin.resources.create(zone, _resource_body(provider_id))
    other = admin.zones.create({"name": f"other {secrets.token_hex(4)}"})["id"]

    api_error(404, "resource_not_found", admin.resources.get, other, resource["id"])
    api_error(404, "resource_not_found", admin.resources.patch, other, resource["id"], {"name": "hijacked"})
    api_error(404, "resource_not_found", admin.resources.delete, other, resource["id"])
    assert admin.resources.list(other) == []
    assert admin.resources.get(zone, resource["id"]) == resource


def test_provider_from_another_zone_cannot_be_bound(admin: AdminClient, zone: str) -> None:
    other = admin.zones.create({"name": f"other {secrets.token_hex(4)}"})["id"]
    foreign_provider = _provider(admin, other)
    api_error(404, "provider_not_found", admin.resources.create, zone, _resource_body(foreign_provider))
    assert admin.resources.list(zone) == []


def test_application_from_another_zone_is_not_found(admin: AdminClient, zone: str) -> None:
    app = admin.applications.create(zone, {"name": "mine", "registration_method": "managed"})
    other = admin.zones.create({"name": f"other {secrets.token_hex(4)}"})["id"]
    api_error(404, "application_not_found", admin.applications.get, other, app["id"])
    api_error(404, "application_not_found", admin.applications.get_client_secret, other, app["id"])
    api_error(404, "application_not_found", admin.applications.rotate_secret, other, app["id"])
    assert admin.applications.get_client_secret(zone, app["id"]) == {"client_secret": app["client_secret"]}


# --- policy sets ----------------------------------------------------------------------------------


def test_policy_set_version_with_unknown_policy_version_is_422(admin: AdminClient, zone: str) -> None:
    policy_set = admin.policy_sets.create(zone, "main")
    api_error(
        422,
        "invalid_policy_contract",
        admin.policy_sets.add_version,
        zone,
        policy_set["id"],
        [{"policy_version_id": "00000000-0000-7000-8000-000000000000"}],
    )
    api_error(422, "invalid_policy_contract", admin.policy_sets.add_version, zone, policy_set["id"], [])
    assert admin.policy_sets.list_versions(zone, policy_set["id"]) == []


def test_activating_an_unknown_version_is_404(admin: AdminClient, zone: str) -> None:
    policy_set = admin.policy_sets.create(zone, "main")
    api_error(404, "version_not_found", admin.policy_sets.activate, zone, policy_set["id"], "00000000-0000-7000-8000-000000000000")
    assert admin.policy_sets.get(zone, policy_set["id"])["active_version_id"] is None
