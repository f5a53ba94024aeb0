"""Uniqueness holds under concurrent writers: when several admins race to create the same slug,
name or identifier, exactly one wins and the rest get the typed conflict."""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from caracalai_admin import AdminApiError, AdminClient, ResourceGrant, author_grants_document

from caracal_server import CaracalServer
from conftest import make_admin

RACERS = 6


def _race(server: CaracalServer, attempt: Callable[[AdminClient], Any]) -> Counter:
    """Runs `attempt` once per racer, all released at the same moment; counts the outcomes."""
    clients = [make_admin(server)[0] for _ in range(RACERS)]
    start = threading.Barrier(RACERS)

    def run(client: AdminClient) -> str:
        start.wait()
        try:
            attempt(client)
            return "created"
        except AdminApiError as error:
            return f"{error.status} {error.code}"

    with ThreadPoolExecutor(RACERS) as pool:
        return Counter(pool.map(run, clients))


def test_racing_zone_slugs(server: CaracalServer, admin: AdminClient) -> None:
    slug = f"race-{secrets.token_hex(4)}"
    outcomes = _race(server, lambda c: c.zones.create({"name": "racer", "slug": slug}))
    assert outcomes == Counter({"created": 1, "409 zone_slug_conflict": RACERS - 1}), f"outcomes: {dict(outcomes)}"
    assert len([z for z in admin.zones.list() if z["slug"] == slug]) == 1


def test_racing_auto_slugs_stay_unique(server: CaracalServer, admin: AdminClient) -> None:
    name = f"Auto race {secrets.token_hex(4)}"
    outcomes = _race(server, lambda c: c.zones.create({"name": name}))
    assert outcomes == Counter({"created": RACERS}), f"outcomes: {dict(outcomes)}"
    slugs = [z["slug"] for z in admin.zones.list() if z["name"] == name]
    assert len(slugs) == RACERS and len(set(slugs)) == RACERS, f"duplicate slugs: {slugs}"


def test_racing_application_names(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    outcomes = _race(
        server, lambda c: c.applications.create(zone, {"name": "contested", "registration_method": "managed"})
    )
    assert outcomes == Counter({"created": 1, "409 application_name_taken": RACERS - 1}), f"outcomes: {dict(outcomes)}"
    assert len(admin.applications.list(zone)) == 1


def test_racing_resource_identifiers(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    provider = admin.providers.create(
        zone, {"name": "Key", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": "k"}}
    )
    body = {
        "name": "Contested",
        "identifier": "resource://contested",
        "scopes": ["c:read"],
        "upstream_url": "https://contested.example.test",
        "credential_provider_id": provider["id"],
    }
    outcomes = _race(server, lambda c: c.resources.create(zone, body))
    assert outcomes == Counter({"created": 1, "409 resource_identifier_conflict": RACERS - 1}), f"outcomes: {dict(outcomes)}"
    assert len(admin.resources.list(zone)) == 1


def test_racing_policy_versions_get_distinct_numbers(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    content = author_grants_document([ResourceGrant(application_id="a", resource_identifier="resource://a", scopes=["x"])])
    policy = admin.policies.create(zone, {"name": "grants", "content": content})
    outcomes = _race(server, lambda c: c.policies.add_version(zone, policy["id"], content))
    assert outcomes == Counter({"created": RACERS}), f"outcomes: {dict(outcomes)}"
    versions = [v["version"] for v in admin.policies.get(zone, policy["id"])["versions"]]
    assert versions == list(range(RACERS + 1, 0, -1)), f"version numbers collided or skipped: {versions}"


def test_racing_policy_set_versions_get_distinct_numbers(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    content = author_grants_document([ResourceGrant(application_id="a", resource_identifier="resource://a", scopes=["x"])])
    policy = admin.policies.create(zone, {"name": "grants", "content": content})
    policy_set = admin.policy_sets.create(zone, "main")
    manifest = [{"policy_version_id": policy["version_id"]}]
    outcomes = _race(server, lambda c: c.policy_sets.add_version(zone, policy_set["id"], manifest))
    assert outcomes == Counter({"created": RACERS}), f"outcomes: {dict(outcomes)}"
    versions = sorted(v["version"] for v in admin.policy_sets.list_versions(zone, policy_set["id"]))
    assert versions == list(range(1, RACERS + 1)), f"version numbers collided or skipped: {versions}"


def test_racing_default_provider_identifiers_stay_unique(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    outcomes = _race(server, lambda c: c.providers.create(zone, {"name": "Twin key", "kind": "none"}))
    assert outcomes == Counter({"created": RACERS}), f"outcomes: {dict(outcomes)}"
    identifiers = [p["identifier"] for p in admin.providers.list(zone)]
    assert len(set(identifiers)) == RACERS, f"duplicate identifiers: {identifiers}"


def test_racing_default_resource_identifiers_stay_unique(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    provider = admin.providers.create(zone, {"name": "Key", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": "k"}})
    body = {"name": "Twin", "scopes": ["t:read"], "upstream_url": "https://twin.example.test", "credential_provider_id": provider["id"]}
    outcomes = _race(server, lambda c: c.resources.create(zone, body))
    assert outcomes == Counter({"created": RACERS}), f"outcomes: {dict(outcomes)}"
    identifiers = [r["identifier"] for r in admin.resources.list(zone)]
    assert len(set(identifiers)) == RACERS, f"duplicate identifiers: {identifiers}"


def test_racing_activations_leave_exactly_one_active_set(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    """Activation runs under a zone lock (spec/api.md §3.7): racing activations of different sets
    all succeed, in some order, and the zone ends with exactly one active set."""
    content = author_grants_document([ResourceGrant(application_id="a", resource_identifier="resource://r", scopes=["r"])])
    policy = admin.policies.create(zone, {"name": "race policy", "content": content})
    targets = []
    for i in range(RACERS):
        policy_set = admin.policy_sets.create(zone, f"race set {i}")
        version = admin.policy_sets.add_version(zone, policy_set["id"], [{"policy_version_id": policy["version_id"]}])
        targets.append((policy_set["id"], version["version_id"]))
    clients = [make_admin(server)[0] for _ in range(RACERS)]
    start = threading.Barrier(RACERS)

    def run(index: int) -> str:
        set_id, version_id = targets[index]
        start.wait()
        try:
            clients[index].policy_sets.activate(zone, set_id, version_id)
            return "activated"
        except AdminApiError as error:
            return f"{error.status} {error.code}"

    for _ in range(3):
        with ThreadPoolExecutor(RACERS) as pool:
            outcomes = Counter(pool.map(run, range(RACERS)))
        assert outcomes == Counter({"activated": RACERS}), f"outcomes: {dict(outcomes)}"
        active = [s for s in admin.policy_sets.list(zone) if s.get("active_version_id")]
        assert len(active) == 1, f"active sets: {active}"
