"""Rules beyond body shape that a user runs into: gateway routing needs a provider and an
upstream, operations must fit the resource's scopes, traits have a grammar, default identifiers
are slugs with suffixes, one policy set is active per zone. Every refusal leaves state as it was."""

from __future__ import annotations

import secrets

import pytest
from caracalai_admin import AdminApiError, AdminClient, ResourceGrant, author_grants_document

from assertions import api_error, sha256_hex

API_KEY_CONFIG = {"header_name": "X-Api-Key", "api_key": "k-123"}


def _provider(admin: AdminClient, zone: str, name: str = "Key") -> str:
    return admin.providers.create(zone, {"name": name, "kind": "api_key", "config_json": API_KEY_CONFIG})["id"]


def _resource_body(provider_id: str | None, **extra) -> dict:
    body = {
        "name": "Svc",
        "identifier": "resource://svc",
        "scopes": ["svc:read", "svc:write"],
        "upstream_url": "https://svc.example.test",
        "credential_provider_id": provider_id,
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


# --- resources: routing and operations ------------------------------------------------------------


def test_gateway_resource_needs_a_provider_then_an_upstream(admin: AdminClient, zone: str) -> None:
    api_error(400, "credential_provider_required", admin.resources.create, zone, _resource_body(None))
    provider_id = _provider(admin, zone)
    body = _resource_body(provider_id)
    del body["upstream_url"]
    api_error(400, "upstream_url_required", admin.resources.create, zone, body)
    api_error(
        404,
        "provider_not_found",
        admin.resources.create,
        zone,
        _resource_body("00000000-0000-7000-8000-000000000000"),
    )
    assert admin.resources.list(zone) == []


@pytest.mark.parametrize(
    ("operations", "code"),
    [
        pytest.param([{"method": "GET", "path": "items", "scope": "svc:read"}], "operation_path_must_be_absolute", id="relative-path"),
        pytest.param([{"method": "GET", "path": "/items", "scope": "svc:admin"}], "operation_scope_not_in_resource_scopes", id="foreign-scope"),
        pytest.param(
            [{"method": "get", "path": "/items", "scope": "svc:read"}, {"method": "GET", "path": "/items", "scope": "svc:write"}],
            "operation_duplicate",
            id="duplicate",
        ),
        pytest.param([{"method": "  ", "path": "/items", "scope": "svc:read"}], "operation_method_and_path_required", id="blank-method"),
    ],
)
def test_invalid_operations(admin: AdminClient, zone: str, operations: list, code: str) -> None:
    provider_id = _provider(admin, zone)
    api_error(400, code, admin.resources.create, zone, _resource_body(provider_id, operations=operations))
    assert admin.resources.list(zone) == []


def test_patch_checks_the_effective_scopes_and_operations(admin: AdminClient, zone: str) -> None:
    provider_id = _provider(admin, zone)
    ops = [{"method": "GET", "path": "/items", "scope": "svc:write"}]
    resource = admin.resources.create(zone, _resource_body(provider_id, operations=ops))
    api_error(
        400,
        "operation_scope_not_in_resource_scopes",
        admin.resources.patch,
        zone,
        resource["id"],
        {"scopes": ["svc:read"]},
    )
    api_error(400, "no_fields", admin.resources.patch, zone, resource["id"], {})
    assert admin.resources.get(zone, resource["id"]) == resource


def test_default_resource_identifier_is_a_suffixed_slug(admin: AdminClient, zone: str) -> None:
    provider_id = _provider(admin, zone)
    body = _resource_body(provider_id, name="My Service!")
    del body["identifier"]
    first = admin.resources.create(zone, body)
    second = admin.resources.create(zone, body)
    assert first["identifier"] == "resource://my-service"
    assert second["identifier"] == "resource://my-service-2"


# --- providers -----------------------------------------------------------------------------------


def test_default_provider_identifier_and_name(admin: AdminClient, zone: str) -> None:
    first = admin.providers.create(zone, {"name": "Same Name", "kind": "none"})
    second = admin.providers.create(zone, {"name": "Same Name", "kind": "none"})
    assert (first["identifier"], second["identifier"]) == ("provider://same-name", "provider://same-name-2")
    only_id = admin.providers.create(zone, {"identifier": "provider://only-id", "kind": "none"})
    assert only_id["name"] == "provider://only-id"


def test_provider_needs_a_name_or_identifier(admin: AdminClient, zone: str) -> None:
    api_error(400, "invalid_provider", admin.providers.create, zone, {"kind": "none"})
    api_error(400, "invalid_provider", admin.providers.create, zone, {"name": "  ", "kind": "none"})
    assert admin.providers.list(zone) == []


def test_duplicate_explicit_provider_identifier_is_409(admin: AdminClient, zone: str) -> None:
    first = admin.providers.create(zone, {"identifier": "provider://dup", "kind": "none"})
    api_error(409, "provider_identifier_conflict", admin.providers.create, zone, {"identifier": "provider://dup", "kind": "none"})
    assert [p["id"] for p in admin.providers.list(zone)] == [first["id"]]


def test_provider_kind_none_takes_no_config(admin: AdminClient, zone: str) -> None:
    api_error(
        400,
        "invalid_provider_config",
        admin.providers.create,
        zone,
        {"name": "None", "kind": "none", "config_json": {"header_name": "X"}},
    )
    assert admin.providers.list(zone) == []


def test_invalid_provider_patches_change_nothing(admin: AdminClient, zone: str) -> None:
    provider_id = _provider(admin, zone)
    before = admin.providers.get(zone, provider_id)
    api_error(400, "provider_config_required", admin.providers.patch, zone, provider_id, {"kind": "bearer_token"})
    api_error(400, "no_fields", admin.providers.patch, zone, provider_id, {})
    api_error(
        400,
        "invalid_provider_config",
        admin.providers.patch,
        zone,
        provider_id,
        {"config_json": {"header_name": "X-Api-Key", "bogus": 1}},
    )
    api_error(
        400,
        "invalid_provider_config",
        admin.providers.patch,
        zone,
        provider_id,
        {"kind": "api_key", "config_json": {"header_name": "X-Api-Key"}},
    )
    assert admin.providers.get(zone, provider_id) == before


def test_changing_provider_kind_replaces_the_sealed_secret(admin: AdminClient, zone: str) -> None:
    provider_id = _provider(admin, zone)
    patched = admin.providers.patch(
        zone, provider_id, {"kind": "bearer_token", "config_json": {"bearer_token": "tok-123"}}
    )
    assert patched["kind"] == "bearer_token"
    assert patched["secret_config_keys"] == ["bearer_token"]
    assert "tok-123" not in str(patched)


# --- applications: traits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "code"),
    [
        pytest.param(["1starts-with-digit"], "trait_invalid", id="bad-start"),
        pytest.param(["has space"], "trait_invalid", id="space"),
        pytest.param(["tier:gold", "tier:gold"], "trait_duplicate", id="duplicate"),
        pytest.param([f"t{i}" for i in range(65)], "trait_count_exceeded", id="65-traits"),
    ],
)
def test_invalid_traits_are_403_and_write_nothing(admin: AdminClient, zone: str, traits: list, code: str) -> None:
    error = api_error(
        403, code, admin.applications.create, zone, {"name": "traited", "registration_method": "managed", "traits": traits}
    )
    assert isinstance(error.body.get("error_description"), str)
    assert admin.applications.list(zone) == []


def test_traits_patch_replaces_the_set(admin: AdminClient, zone: str) -> None:
    app = admin.applications.create(
        zone, {"name": "traited", "registration_method": "managed", "traits": ["a", "b"]}
    )
    assert sorted(admin.applications.get(zone, app["id"])["traits"]) == ["a", "b"]
    admin.applications.patch(zone, app["id"], {"traits": ["c"]})
    assert admin.applications.get(zone, app["id"])["traits"] == ["c"]
    api_error(403, "trait_invalid", admin.applications.patch, zone, app["id"], {"traits": ["9"]})
    assert admin.applications.get(zone, app["id"])["traits"] == ["c"]


def test_patched_client_secret_replaces_the_custody_copy(admin: AdminClient, zone: str) -> None:
    app = admin.applications.create(zone, {"name": "custody", "registration_method": "managed"})
    chosen = "cs_" + secrets.token_urlsafe(32)
    admin.applications.patch(zone, app["id"], {"client_secret": chosen})
    assert admin.applications.get_client_secret(zone, app["id"]) == {"client_secret": chosen}


# --- zones ---------------------------------------------------------------------------------------


def test_deleted_zone_refuses_nested_routes(admin: AdminClient) -> None:
    z = admin.zones.create({"name": f"doomed {secrets.token_hex(4)}"})["id"]
    admin.zones.delete(z)
    api_error(404, "zone_not_found", admin.applications.list, z)
    api_error(404, "zone_not_found", admin.applications.create, z, {"name": "late", "registration_method": "managed"})
    api_error(404, "zone_not_found", admin.zones.patch, z, {"name": "revived"})


# --- policies and policy sets ----------------------------------------------------------------------


def _content(scopes: list[str]) -> str:
    return author_grants_document([ResourceGrant(application_id="app-1", resource_identifier="resource://a", scopes=scopes)])


def test_duplicate_policy_name_is_409(admin: AdminClient, zone: str) -> None:
    first = admin.policies.create(zone, {"name": "grants", "content": _content(["a"])})
    # The spec asks for a 409 without naming the code (upstream leaks a 500 here).
    with pytest.raises(AdminApiError) as raised:
        admin.policies.create(zone, {"name": "grants", "content": _content(["b"])})
    assert raised.value.status == 409, f"expected a 409, got {raised.value.status} {raised.value.body!r}"
    assert [p["id"] for p in admin.policies.list(zone)] == [first["id"]]


def test_deleted_policy_takes_no_new_versions(admin: AdminClient, zone: str) -> None:
    policy = admin.policies.create(zone, {"name": "grants", "content": _content(["a"])})
    admin.policies.delete(zone, policy["id"])
    api_error(404, "policy_not_found", admin.policies.add_version, zone, policy["id"], _content(["b"]))


def test_manifest_rules(admin: AdminClient, zone: str) -> None:
    policy = admin.policies.create(zone, {"name": "grants", "content": _content(["a"])})
    other_zone = admin.zones.create({"name": f"other {secrets.token_hex(4)}"})["id"]
    foreign = admin.policies.create(other_zone, {"name": "grants", "content": _content(["a"])})
    policy_set = admin.policy_sets.create(zone, "main")
    s = policy_set["id"]

    for manifest in (
        [{"policy_version_id": foreign["version_id"]}],
        [{"policy_version_id": policy["version_id"]}, {"policy_version_id": policy["version_id"]}],
    ):
        api_error(422, "invalid_policy_contract", admin.policy_sets.add_version, zone, s, manifest)
    assert admin.policy_sets.list_versions(zone, s) == []


def test_one_active_policy_set_per_zone(admin: AdminClient, zone: str) -> None:
    policy = admin.policies.create(zone, {"name": "grants", "content": _content(["a"])})
    manifest = [{"policy_version_id": policy["version_id"]}]
    first = admin.policy_sets.create(zone, "first")
    second = admin.policy_sets.create(zone, "second")
    v1 = admin.policy_sets.add_version(zone, first["id"], manifest)["version_id"]
    v2 = admin.policy_sets.add_version(zone, second["id"], manifest)["version_id"]

    api_error(404, "version_not_found", admin.policy_sets.activate, zone, first["id"], v2)

    a1 = admin.policy_sets.activate(zone, first["id"], v1)
    a1_again = admin.policy_sets.activate(zone, first["id"], v1)
    assert a1_again["outbox_id"] != a1["outbox_id"], "each activation enqueues its own event"

    admin.policy_sets.activate(zone, second["id"], v2)
    assert admin.policy_sets.get(zone, second["id"])["active_version_id"] == v2
    assert admin.policy_sets.get(zone, first["id"])["active_version_id"] is None, (
        "activating a set deactivates the zone's other sets"
    )
    status = admin.policy_sets.activation_status(zone, first["id"], version_id=v1)
    assert status["active"] is False
    assert status["propagation_status"] == "waiting_for_activation"
    current = admin.policy_sets.activation_status(zone, second["id"])
    assert (current["version_id"], current["active"], current["active_version_id"]) == (v2, True, v2)


def test_activation_status_of_a_never_activated_set_is_404(admin: AdminClient, zone: str) -> None:
    policy_set = admin.policy_sets.create(zone, "idle")
    api_error(404, "active_policy_set_version_not_found", admin.policy_sets.activation_status, zone, policy_set["id"])


def test_content_digest_is_of_the_exact_bytes(admin: AdminClient, zone: str) -> None:
    content = "# grants for ünïcode tenants — verbatim\n" + _content(["a"]) + "  \n\n"
    created = admin.policies.create(zone, {"name": "exact", "content": content})
    assert created["version"]["content_sha256"] == sha256_hex(content)
    stored = admin.policies.get(zone, created["id"])["versions"][0]
    assert stored["content"] == content
