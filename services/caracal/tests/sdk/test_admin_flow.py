"""The admin journey of a new adopter, through the official `caracalai_admin` client: a zone, an
application with a client secret, a sealed upstream credential, a resource, grant policy, a
policy set activated, then the everyday list/get/patch/delete of each object."""

from __future__ import annotations

import json
import secrets

from caracalai_admin import AdminClient, ResourceGrant, author_grants_document

from assertions import (
    api_error,
    assert_timestamp,
    assert_uuid7,
    ids,
    manifest_sha256,
    sha256_hex,
)
from conftest import Recorder

SCHEMA_VERSION = "2026-05-20"
ATTR = {"created_by", "created_via_operator", "updated_by", "updated_via_operator", "created_at", "updated_at"}


def test_full_admin_flow(admin: AdminClient, calls: Recorder) -> None:
    tag = secrets.token_hex(4)

    zone = admin.zones.create({"name": f"E2E Flow {tag}"})
    assert calls.last.status == 201
    assert zone["name"] == f"E2E Flow {tag}"
    assert zone["slug"] == f"e2e-flow-{tag}"
    assert zone["dcr_enabled"] is False
    assert ATTR <= zone.keys(), f"zone lacks attribution fields: {sorted(zone)}"
    assert_uuid7(zone["id"], "zone id")
    assert_timestamp(zone["created_at"], "zone created_at")
    z = zone["id"]

    app = admin.applications.create(z, {"name": "billing-agent", "registration_method": "managed"})
    assert calls.last.status == 201
    assert app["zone_id"] == z
    assert app["name"] == "billing-agent"
    assert app["registration_method"] == "managed"
    assert app["expires_at"] is None
    secret = app["client_secret"]
    assert isinstance(secret, str) and secret.startswith("cs_") and len(secret) == 46
    assert_uuid7(app["id"], "application id")
    assert_timestamp(app["created_at"], "application created_at")
    assert "traits" not in app and "archived_at" not in app, "create responses omit traits/archived_at"

    provider = admin.providers.create(
        z,
        {
            "name": "Billing API key",
            "kind": "api_key",
            "config_json": {"header_name": "X-Api-Key", "api_key": "k-123"},
        },
    )
    assert calls.last.status == 201
    assert "k-123" not in json.dumps(provider), f"provider response leaks the key: {provider}"
    assert provider["kind"] == "api_key"
    assert provider["identifier"] == "provider://billing-api-key"
    assert provider["secret_config_keys"] == ["api_key"]
    assert provider["config_json"]["header_name"] == "X-Api-Key"
    assert "api_key" not in provider["config_json"]
    assert provider["config_json"].get("auth_location") == "header"
    assert provider["connectivity_failed_at"] is None
    assert provider["archived_at"] is None
    assert_timestamp(provider["updated_at"], "provider updated_at")

    identifier = f"resource://billing-{tag}"
    resource = admin.resources.create(
        z,
        {
            "name": "Billing",
            "identifier": identifier,
            "scopes": ["invoices:read", "invoices:write"],
            "upstream_url": "https://billing.example.test/api",
            "credential_provider_id": provider["id"],
        },
    )
    assert calls.last.status == 201
    assert resource["identifier"] == identifier
    assert resource["scopes"] == ["invoices:read", "invoices:write"]
    assert resource["upstream_url"] == "https://billing.example.test/api"
    assert resource["credential_provider_id"] == provider["id"]
    assert resource["operation_enforcement"] == "enforced"
    assert not resource["operations"]
    assert resource["archived_at"] is None
    assert_timestamp(resource["created_at"], "resource created_at")

    content = author_grants_document(
        [ResourceGrant(application_id=app["id"], resource_identifier=identifier, scopes=["invoices:read"])]
    )
    policy = admin.policies.create(z, {"name": "billing-grants", "content": content})
    assert calls.last.status == 201
    assert policy["zone_id"] == z and policy["name"] == "billing-grants"
    version = policy["version"]
    assert version["id"] == policy["version_id"]
    assert version["policy_id"] == policy["id"]
    assert version["version"] == 1
    assert version["content_sha256"] == sha256_hex(content)
    assert version["schema_version"] == SCHEMA_VERSION

    policy_set = admin.policy_sets.create(z, "billing", description="billing grants")
    assert calls.last.status == 201
    assert policy_set["name"] == "billing" and policy_set["description"] == "billing grants"
    assert "active_version_id" not in policy_set

    set_version = admin.policy_sets.add_version(z, policy_set["id"], [{"policy_version_id": policy["version_id"]}])
    assert calls.last.status == 201
    assert set_version["policy_set_id"] == policy_set["id"]
    assert set_version["version"] == 1
    assert set_version["manifest_sha256"] == manifest_sha256([policy["version_id"]])
    assert set_version["schema_version"] == SCHEMA_VERSION
    v = set_version["version_id"]

    activation = admin.policy_sets.activate(z, policy_set["id"], v)
    assert calls.last.status == 202
    assert activation["activated"] is True
    assert activation["version_id"] == v
    outbox_id = activation["outbox_id"]
    assert isinstance(outbox_id, str) and outbox_id
    assert activation["status_url"] == (
        f"/v1/zones/{z}/policy-sets/{policy_set['id']}/activation-status?version_id={v}&outbox_id={outbox_id}"
    )

    status = admin.policy_sets.activation_status(z, policy_set["id"], version_id=v, outbox_id=outbox_id)
    assert status["zone_id"] == z
    assert status["policy_set_id"] == policy_set["id"]
    assert status["version_id"] == v
    assert status["active"] is True
    assert status["active_version_id"] == v
    assert status["manifest_sha256"] == set_version["manifest_sha256"]
    assert status["outbox"]["id"] == outbox_id
    assert status["outbox"]["state"] in {"dispatched", "pending"}
    assert status["sts"]["state"] in {"loaded", "not_loaded", "not_configured", "unreachable", "failed"}
    assert status["propagation_status"] in {"waiting_for_outbox", "waiting_for_sts", "loaded"}

    assert admin.policy_sets.get(z, policy_set["id"])["active_version_id"] == v


def test_zone_list_get_patch_delete(admin: AdminClient, calls: Recorder) -> None:
    tag = secrets.token_hex(4)
    zone = admin.zones.create({"name": f"Zone CRUD {tag}"})
    z = zone["id"]

    assert z in ids(admin.zones.list())
    assert admin.zones.get(z) == zone

    patched = admin.zones.patch(z, {"name": f"Zone CRUD renamed {tag}"})
    assert calls.last.status == 200
    assert patched["id"] == z and patched["name"] == f"Zone CRUD renamed {tag}"
    assert patched["slug"] == zone["slug"], "renaming must not change the slug"
    assert patched["created_at"] == zone["created_at"]
    assert patched["updated_at"] >= zone["updated_at"]
    assert admin.zones.get(z) == patched

    admin.zones.delete(z)
    assert calls.last.status == 204
    api_error(404, "zone_not_found", admin.zones.get, z)
    assert z not in ids(admin.zones.list())
    api_error(404, "zone_not_found", admin.zones.delete, z)


def test_application_lifecycle_and_secrets(admin: AdminClient, calls: Recorder, zone: str) -> None:
    created = admin.applications.create(zone, {"name": "reporting", "registration_method": "managed"})
    app_id, first_secret = created["id"], created["client_secret"]

    listed = admin.applications.list(zone)
    assert ids(listed) == {app_id}
    row = admin.applications.get(zone, app_id)
    assert row["name"] == "reporting" and row["registration_method"] == "managed"
    assert "client_secret" not in row, "a read must never return the secret"
    assert row["traits"] == [], "a global token sees traits"
    assert row["archived_at"] is None

    assert admin.applications.get_client_secret(zone, app_id) == {"client_secret": first_secret}

    patched = admin.applications.patch(zone, app_id, {"name": "reporting-v2", "traits": ["tier:gold"]})
    assert calls.last.status == 200
    assert patched["name"] == "reporting-v2"
    assert patched["traits"] == ["tier:gold"]
    assert admin.applications.get(zone, app_id)["name"] == "reporting-v2"

    rotated = admin.applications.rotate_secret(zone, app_id)
    assert calls.last.status == 200
    new_secret = rotated["client_secret"]
    assert new_secret.startswith("cs_") and len(new_secret) == 46
    assert new_secret != first_secret
    assert rotated["id"] == app_id
    assert admin.applications.get_client_secret(zone, app_id) == {"client_secret": new_secret}

    admin.applications.delete(zone, app_id)
    assert calls.last.status == 204
    api_error(404, "application_not_found", admin.applications.get, zone, app_id)
    api_error(404, "application_not_found", admin.applications.get_client_secret, zone, app_id)
    assert admin.applications.list(zone) == []


def test_provider_lifecycle_keeps_the_key_sealed(admin: AdminClient, calls: Recorder, zone: str) -> None:
    created = admin.providers.create(
        zone,
        {"name": "Search key", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": "k-123"}},
    )
    p = created["id"]

    assert ids(admin.providers.list(zone)) == {p}
    fetched = admin.providers.get(zone, p)
    assert fetched == created
    assert "k-123" not in json.dumps(admin.providers.list(zone))

    renamed = admin.providers.patch(zone, p, {"name": "Search key (prod)"})
    assert calls.last.status == 200
    assert renamed["name"] == "Search key (prod)"
    assert renamed["secret_config_keys"] == ["api_key"], "a rename must not drop the sealed key"

    moved = admin.providers.patch(zone, p, {"config_json": {"header_name": "X-Search-Key"}})
    assert moved["config_json"]["header_name"] == "X-Search-Key"
    assert moved["secret_config_keys"] == ["api_key"], "public config edits keep the sealed key"

    resealed = admin.providers.patch(
        zone, p, {"kind": "api_key", "config_json": {"header_name": "X-Search-Key", "api_key": "k-456"}}
    )
    assert resealed["secret_config_keys"] == ["api_key"]
    assert "k-456" not in json.dumps(resealed)

    admin.providers.delete(zone, p)
    assert calls.last.status == 204
    api_error(404, "provider_not_found", admin.providers.get, zone, p)
    assert admin.providers.list(zone) == []


def test_resource_lifecycle(admin: AdminClient, calls: Recorder, zone: str) -> None:
    provider = admin.providers.create(
        zone, {"name": "Docs key", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": "k"}}
    )
    created = admin.resources.create(
        zone,
        {
            "name": "Docs",
            "identifier": "resource://docs",
            "scopes": ["docs:read"],
            "upstream_url": "https://docs.example.test",
            "credential_provider_id": provider["id"],
        },
    )
    r = created["id"]

    assert ids(admin.resources.list(zone)) == {r}
    assert admin.resources.get(zone, r) == created

    patched = admin.resources.patch(zone, r, {"scopes": ["docs:read", "docs:write"], "name": "Docs v2"})
    assert calls.last.status == 200
    assert patched["scopes"] == ["docs:read", "docs:write"]
    assert patched["name"] == "Docs v2"
    assert patched["identifier"] == "resource://docs"
    assert patched["upstream_url"] == "https://docs.example.test"
    assert admin.resources.get(zone, r) == patched

    admin.resources.delete(zone, r)
    assert calls.last.status == 204
    api_error(404, "resource_not_found", admin.resources.get, zone, r)
    assert admin.resources.list(zone) == []


def test_policy_versions_are_immutable_and_digested(admin: AdminClient, calls: Recorder, zone: str) -> None:
    first = author_grants_document([ResourceGrant(application_id="app-1", resource_identifier="resource://a", scopes=["a:read"])])
    second = author_grants_document(
        [ResourceGrant(application_id="app-1", resource_identifier="resource://a", scopes=["a:read", "a:write"])]
    )
    created = admin.policies.create(zone, {"name": "grants", "description": "who may do what", "content": first})
    p = created["id"]
    assert created["description"] == "who may do what"

    listed = admin.policies.list(zone)
    assert ids(listed) == {p}
    assert listed[0]["name"] == "grants"
    assert "versions" not in listed[0]

    added = admin.policies.add_version(zone, p, second)
    assert calls.last.status == 201
    assert added["policy_id"] == p
    assert added["version"] == 2
    assert added["id"] == added["version_id"]
    assert added["content_sha256"] == sha256_hex(second)

    detail = admin.policies.get(zone, p)
    assert detail["name"] == "grants"
    versions = detail["versions"]
    assert [v["version"] for v in versions] == [2, 1], "versions are listed newest first"
    assert [v["id"] for v in versions] == [added["version_id"], created["version_id"]]
    assert [v["content"] for v in versions] == [second, first], "content is stored verbatim"
    assert [v["content_sha256"] for v in versions] == [sha256_hex(second), sha256_hex(first)]
    for v in versions:
        assert v["policy_id"] == p and v["schema_version"] == SCHEMA_VERSION
        assert v["archived_at"] is None
        assert_timestamp(v["created_at"], "version created_at")

    again = admin.policies.add_version(zone, p, second)
    assert again["version"] == 3, "adding identical content is still a new version"

    admin.policies.delete(zone, p)
    assert calls.last.status == 204
    api_error(404, "policy_not_found", admin.policies.get, zone, p)
    assert admin.policies.list(zone) == []


def test_policy_set_versions_and_delete(admin: AdminClient, calls: Recorder, zone: str) -> None:
    content = author_grants_document([ResourceGrant(application_id="app-1", resource_identifier="resource://a", scopes=["a:read"])])
    policy = admin.policies.create(zone, {"name": "grants", "content": content})
    policy_set = admin.policy_sets.create(zone, "main")
    s = policy_set["id"]

    assert ids(admin.policy_sets.list(zone)) == {s}
    fetched = admin.policy_sets.get(zone, s)
    assert fetched["name"] == "main"
    assert fetched["active_version_id"] is None

    v1 = admin.policy_sets.add_version(zone, s, [{"policy_version_id": policy["version_id"]}])
    v2 = admin.policy_sets.add_version(zone, s, [{"policy_version_id": policy["version_id"]}])
    assert (v1["version"], v2["version"]) == (1, 2)

    versions = admin.policy_sets.list_versions(zone, s)
    assert [v["id"] for v in versions] == [v2["version_id"], v1["version_id"]], "newest first"
    for v in versions:
        assert v["policy_set_id"] == s
        assert v["manifest_sha256"] == manifest_sha256([policy["version_id"]])
        assert v["schema_version"] == SCHEMA_VERSION

    admin.policy_sets.activate(zone, s, v2["version_id"])
    assert admin.policy_sets.get(zone, s)["active_version_id"] == v2["version_id"]
    admin.policy_sets.activate(zone, s, v1["version_id"])
    assert calls.last.status == 202, "re-activating another version is allowed"
    assert admin.policy_sets.get(zone, s)["active_version_id"] == v1["version_id"]

    admin.policy_sets.delete(zone, s)
    assert calls.last.status == 204
    api_error(404, "policy_set_not_found", admin.policy_sets.get, zone, s)
    assert admin.policy_sets.list(zone) == []
