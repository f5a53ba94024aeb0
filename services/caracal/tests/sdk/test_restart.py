"""Postgres mode keeps what it was told: a new server process on the same database (same KEK,
same bootstrap token) reads back exactly what the old one wrote, sealed secrets included."""

from __future__ import annotations

from typing import Any

from caracalai_admin import AdminClient, ResourceGrant, author_grants_document

from caracal_server import ServerConfig
from conftest import fresh_database, make_admin, running_server


def _create_everything(admin: AdminClient) -> dict[str, Any]:
    zone = admin.zones.create({"name": "Restart zone"})
    z = zone["id"]
    app = admin.applications.create(z, {"name": "survivor", "registration_method": "managed", "traits": ["tier:gold"]})
    rotated = admin.applications.rotate_secret(z, app["id"])
    provider = admin.providers.create(
        z, {"name": "Key", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": "k-123"}}
    )
    resource = admin.resources.create(
        z,
        {
            "name": "Svc",
            "identifier": "resource://svc",
            "scopes": ["svc:read", "svc:write"],
            "upstream_url": "https://svc.example.test",
            "credential_provider_id": provider["id"],
            "operations": [{"method": "GET", "path": "/items", "scope": "svc:read"}],
        },
    )
    grants = [ResourceGrant(application_id=app["id"], resource_identifier="resource://svc", scopes=["svc:read"])]
    policy = admin.policies.create(z, {"name": "grants", "content": author_grants_document(grants)})
    admin.policies.add_version(z, policy["id"], author_grants_document(grants + [
        ResourceGrant(application_id=app["id"], resource_identifier="resource://svc", scopes=["svc:write"], role="writer")
    ]))
    policy_set = admin.policy_sets.create(z, "main", description="survives restarts")
    version = admin.policy_sets.add_version(z, policy_set["id"], [{"policy_version_id": policy["version_id"]}])
    admin.policy_sets.activate(z, policy_set["id"], version["version_id"])
    return {
        "zone": z,
        "application": app["id"],
        "secret": rotated["client_secret"],
        "provider": provider["id"],
        "resource": resource["id"],
        "policy": policy["id"],
        "policy_set": policy_set["id"],
        "active_version": version["version_id"],
    }


def _read_everything(admin: AdminClient, made: dict[str, Any]) -> dict[str, Any]:
    z = made["zone"]
    return {
        "zone": admin.zones.get(z),
        "zones": admin.zones.list(),
        "applications": admin.applications.list(z),
        "application": admin.applications.get(z, made["application"]),
        "client_secret": admin.applications.get_client_secret(z, made["application"]),
        "providers": admin.providers.list(z),
        "provider": admin.providers.get(z, made["provider"]),
        "resources": admin.resources.list(z),
        "resource": admin.resources.get(z, made["resource"]),
        "policies": admin.policies.list(z),
        "policy": admin.policies.get(z, made["policy"]),
        "policy_sets": admin.policy_sets.list(z),
        "policy_set": admin.policy_sets.get(z, made["policy_set"]),
        "policy_set_versions": admin.policy_sets.list_versions(z, made["policy_set"]),
    }


def test_state_survives_a_restart() -> None:
    with fresh_database() as database:
        config = ServerConfig(mode="postgres", database=database)

        with running_server(config) as first:
            admin, _ = make_admin(first)
            made = _create_everything(admin)
            before = _read_everything(admin, made)
            first.stop()
            assert first.exit_code is not None, "SIGTERM must stop the server without SIGKILL"

        assert before["client_secret"] == {"client_secret": made["secret"]}
        assert before["policy_set"]["active_version_id"] == made["active_version"]
        assert [v["version"] for v in before["policy"]["versions"]] == [2, 1]

        with running_server(config) as second:
            admin, _ = make_admin(second)
            after = _read_everything(admin, made)

        for key in before:
            assert after[key] == before[key], f"{key} changed across the restart"
        assert after["provider"]["secret_config_keys"] == ["api_key"]
        assert after["client_secret"] == {"client_secret": made["secret"]}, (
            "the sealed secret must unseal after a restart with the same KEK"
        )
