"""The SDK's idempotent reconcilers (`caracalai_admin.ensure`), run against the real server: a
first run converges, a second identical run changes nothing, a changed input converges again.
They only work if list/get/patch answer exactly as the SDK expects, so they test the wire shape
end to end."""

from __future__ import annotations

from caracalai_admin import (
    GRANT_POLICY_NAME,
    GRANT_POLICY_SET_NAME,
    AdminClient,
    GovernedUpstream,
    GovernedUpstreamGrant,
    GovernedUpstreamProvider,
    GovernedUpstreamResource,
    ResourceGrant,
    author_grants_document,
    ensure_active_policy_set,
    ensure_api_key_provider,
    ensure_application,
    ensure_governed_upstreams,
    ensure_grants,
    ensure_resource,
)

from assertions import sha256_hex
from conftest import Recorder

SECRET_A = "cs_" + "a" * 43
SECRET_B = "cs_" + "b" * 43


def _by_name(rows: list[dict], name: str) -> list[dict]:
    return [row for row in rows if row["name"] == name]


def test_ensure_application_is_idempotent_and_rotates(admin: AdminClient, zone: str) -> None:
    first = ensure_application(admin, zone, name="payments", traits=["tier:gold"], client_secret=SECRET_A)
    again = ensure_application(admin, zone, name="payments", traits=["tier:gold"], client_secret=SECRET_A)
    assert again == first
    assert len(_by_name(admin.applications.list(zone), "payments")) == 1
    assert admin.applications.get(zone, first)["traits"] == ["tier:gold"]
    assert admin.applications.get_client_secret(zone, first) == {"client_secret": SECRET_A}

    rotated = ensure_application(admin, zone, name="payments", traits=["tier:gold", "team:core"], client_secret=SECRET_B)
    assert rotated == first
    assert sorted(admin.applications.get(zone, first)["traits"]) == ["team:core", "tier:gold"]
    assert admin.applications.get_client_secret(zone, first) == {"client_secret": SECRET_B}


def test_ensure_api_key_provider(admin: AdminClient, zone: str) -> None:
    identifier = "provider://weather-key"
    public = {"header_name": "X-Api-Key"}
    assert (
        ensure_api_key_provider(admin, zone, name="Weather", identifier=identifier, public_config=public) is None
    ), "no key and no provider: nothing to bind"
    assert admin.providers.list(zone) == [], "a provider without a key must not be created"

    created = ensure_api_key_provider(
        admin, zone, name="Weather", identifier=identifier, public_config=public, api_key="k-1"
    )
    again = ensure_api_key_provider(
        admin, zone, name="Weather", identifier=identifier, public_config=public, api_key="k-1"
    )
    assert again == created
    providers = admin.providers.list(zone)
    assert [p["id"] for p in providers] == [created]
    assert providers[0]["identifier"] == identifier
    assert providers[0]["secret_config_keys"] == ["api_key"]

    moved = ensure_api_key_provider(
        admin, zone, name="Weather", identifier=identifier, public_config={"header_name": "X-Weather-Key"}
    )
    assert moved == created
    row = admin.providers.get(zone, created)
    assert row["config_json"]["header_name"] == "X-Weather-Key"
    assert row["secret_config_keys"] == ["api_key"], "a public-only edit keeps the sealed key"


def test_ensure_resource_patches_only_on_drift(admin: AdminClient, calls: Recorder, zone: str) -> None:
    provider_id = ensure_api_key_provider(
        admin, zone, name="Maps", identifier="provider://maps", public_config={"header_name": "X-Api-Key"}, api_key="k"
    )
    desired = dict(
        name="Maps",
        identifier="resource://maps",
        scopes=["maps:read"],
        upstream_url="https://maps.example.test",
        credential_provider_id=provider_id,
        operations=[{"method": "get", "path": "/tiles", "scope": "maps:read"}],
        operation_enforcement="enforced",
    )
    created = ensure_resource(admin, zone, **desired)
    assert created["identifier"] == "resource://maps"
    assert created["operations"] == [{"method": "GET", "path": "/tiles", "scope": "maps:read"}], (
        "operation methods are normalized to upper case"
    )

    mark = calls.mark()
    steady = ensure_resource(admin, zone, **desired)
    assert calls.writes_since(mark) == [], "a converged resource must not be patched"
    assert steady["id"] == created["id"]
    assert steady["updated_at"] == created["updated_at"]

    mark = calls.mark()
    drifted = ensure_resource(admin, zone, **{**desired, "scopes": ["maps:read", "maps:write"]})
    writes = calls.writes_since(mark)
    assert [(c.method, c.status) for c in writes] == [("PATCH", 200)]
    assert drifted["id"] == created["id"]
    assert sorted(drifted["scopes"]) == ["maps:read", "maps:write"]
    assert len(admin.resources.list(zone)) == 1


def test_ensure_active_policy_set_adds_versions_only_for_new_content(
    admin: AdminClient, calls: Recorder, zone: str
) -> None:
    content = author_grants_document([ResourceGrant(application_id="app-1", resource_identifier="resource://a", scopes=["a:read"])])
    ensure_active_policy_set(admin, zone, policy_name="grants", set_name="main", content=content)
    (policy,) = admin.policies.list(zone)
    (policy_set,) = admin.policy_sets.list(zone)
    assert policy["name"] == "grants" and policy_set["name"] == "main"
    first_active = policy_set["active_version_id"]
    assert first_active, "the set must be active after the first run"

    mark = calls.mark()
    ensure_active_policy_set(admin, zone, policy_name="grants", set_name="main", content=content)
    assert calls.writes_since(mark) == [], "unchanged content: no new version, no activation"
    assert len(admin.policies.get(zone, policy["id"])["versions"]) == 1
    assert len(admin.policy_sets.list_versions(zone, policy_set["id"])) == 1
    assert admin.policy_sets.get(zone, policy_set["id"])["active_version_id"] == first_active

    changed = author_grants_document(
        [ResourceGrant(application_id="app-1", resource_identifier="resource://a", scopes=["a:read", "a:write"])]
    )
    ensure_active_policy_set(admin, zone, policy_name="grants", set_name="main", content=changed)
    versions = admin.policies.get(zone, policy["id"])["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["content_sha256"] == sha256_hex(changed)
    assert len(admin.policy_sets.list_versions(zone, policy_set["id"])) == 2
    now_active = admin.policy_sets.get(zone, policy_set["id"])["active_version_id"]
    assert now_active and now_active != first_active


def test_ensure_grants(admin: AdminClient, calls: Recorder, zone: str) -> None:
    mark = calls.mark()
    ensure_grants(admin, zone, grants=[])
    assert calls.writes_since(mark) == [], "an empty grant set creates nothing"
    assert admin.policies.list(zone) == []

    app_id = ensure_application(admin, zone, name="crm-agent", traits=[], client_secret=SECRET_A)
    grants = [ResourceGrant(application_id=app_id, resource_identifier="resource://crm", scopes=["crm:read"])]
    ensure_grants(admin, zone, grants=grants)
    (policy,) = admin.policies.list(zone)
    assert policy["name"] == GRANT_POLICY_NAME
    (policy_set,) = admin.policy_sets.list(zone)
    assert policy_set["name"] == GRANT_POLICY_SET_NAME
    assert policy_set["active_version_id"]
    detail = admin.policies.get(zone, policy["id"])
    assert detail["versions"][0]["content"] == author_grants_document(grants)

    mark = calls.mark()
    ensure_grants(admin, zone, grants=grants)
    assert calls.writes_since(mark) == []

    ensure_grants(admin, zone, grants=[])
    versions = admin.policies.get(zone, policy["id"])["versions"]
    assert len(versions) == 2, "emptying an existing grant set revokes through a new version"
    assert versions[0]["content"] == author_grants_document([])


def test_ensure_governed_upstreams(admin: AdminClient, calls: Recorder, zone: str) -> None:
    app_id = ensure_application(admin, zone, name="ops-agent", traits=[], client_secret=SECRET_A)
    upstreams = [
        GovernedUpstream(
            provider=GovernedUpstreamProvider(
                name="Tickets key",
                identifier="provider://tickets",
                public_config={"header_name": "X-Api-Key"},
                api_key="t-1",
            ),
            resource=GovernedUpstreamResource(
                name="Tickets",
                identifier="resource://tickets",
                scopes=["tickets:read", "tickets:write"],
                upstream_url="https://tickets.example.test",
            ),
            grants=[GovernedUpstreamGrant(application_id=app_id, scopes=["tickets:read"])],
        )
    ]
    (result,) = ensure_governed_upstreams(admin, zone, upstreams=upstreams)
    assert result.resource["credential_provider_id"] == result.provider_id
    assert result.resource["identifier"] == "resource://tickets"
    assert admin.providers.get(zone, result.provider_id)["secret_config_keys"] == ["api_key"]
    (policy_set,) = admin.policy_sets.list(zone)
    assert policy_set["active_version_id"]
    (policy,) = admin.policies.list(zone)
    content = admin.policies.get(zone, policy["id"])["versions"][0]["content"]
    assert content == author_grants_document(
        [ResourceGrant(application_id=app_id, resource_identifier="resource://tickets", scopes=["tickets:read"])]
    )

    (again,) = ensure_governed_upstreams(admin, zone, upstreams=upstreams)
    assert again.provider_id == result.provider_id
    assert again.resource["id"] == result.resource["id"]
    assert len(admin.policy_sets.list_versions(zone, policy_set["id"])) == 1, "steady state adds no set version"
    assert len(admin.providers.list(zone)) == 1
    assert len(admin.resources.list(zone)) == 1
