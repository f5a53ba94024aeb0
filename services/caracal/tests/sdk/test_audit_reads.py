"""Audit reads through the official admin SDK (spec/api.md §3.13, §3.15): a governed decision
made at the STS becomes evidence the Audit service ingests, and `caracalai-admin` reads it back
with `audit.list`, `audit.by_request` and `audit.explain`; `admin_audit.list` reads the zone's
admin audit chain. The SDK has no retention client, so `/v1/audit-retention` is driven over
raw HTTP.

Ingestion is asynchronous (STS → `caracal.audit.events` → Audit service → ledger), so the tests
poll the read surface with a deadline instead of sleeping."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from caracalai_admin import AdminClient

from assertions import api_error, assert_timestamp
from caracal_server import CaracalServer
from sts_support import bootstrap_form, make_resource, mint_zone, token

EVENT_KEYS = {
    "id", "zone_id", "event_type", "request_id", "decision", "policy_set_id",
    "policy_set_version_id", "manifest_sha", "evaluation_status", "determining_policies_json",
    "diagnostics_json", "metadata_json", "occurred_at", "ingested_at",
}
ADMIN_KEYS = {
    "id", "request_id", "actor_id", "actor_name", "actor_scope", "action", "method", "path",
    "entity_type", "entity_id", "status_code", "payload_json", "occurred_at", "chain_seq", "signed",
}


def eventually(read: Callable[[], list[Any]], what: str, timeout: float = 20.0) -> list[Any]:
    """Polls `read` until it returns a non-empty list."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read()
        if rows:
            return rows
        assert time.monotonic() < deadline, f"{what}: nothing after {timeout:.0f}s (is the Audit service ingesting?)"
        time.sleep(0.2)


def test_governed_decisions_read_back_through_the_sdk(server: CaracalServer, admin: AdminClient, zone: str) -> None:
    mz = mint_zone(admin, zone)
    allow_id = f"audit-allow-{uuid.uuid4()}"
    assert token(server, bootstrap_form(mz), headers={"X-Request-Id": allow_id}).status_code == 200
    ungranted = make_resource(admin, zone, f"{mz.resource}-ungranted", ["x:y"])
    deny_id = f"audit-deny-{uuid.uuid4()}"
    denied = token(server, bootstrap_form(mz, resource=ungranted["identifier"]), headers={"X-Request-Id": deny_id})
    assert denied.status_code == 403, denied.text

    allowed = eventually(lambda: admin.audit.list(zone, {"request_id": allow_id}), "the allow decision")
    assert len(allowed) == 1
    event = allowed[0]
    assert set(event) == EVENT_KEYS
    assert (event["zone_id"], event["request_id"]) == (zone, allow_id)
    assert (event["event_type"], event["decision"], event["evaluation_status"]) == ("token_exchange", "allow", "complete")
    assert event["determining_policies_json"] == [{"policy": "caracal-bootstrap"}]
    assert event["metadata_json"]["application_id"] == mz.app
    assert event["metadata_json"]["resource"] == mz.resource
    if "session_id" in event["metadata_json"]:
        assert event["metadata_json"]["session_id"] == "[redacted]", "authority-record ids read redacted"
    assert_timestamp(event["occurred_at"], "occurred_at")
    assert_timestamp(event["ingested_at"], "ingested_at")

    assert admin.audit.by_request(zone, allow_id) == allowed, "by-request is a bare array of the same rows"

    eventually(lambda: admin.audit.list(zone, {"request_id": deny_id}), "the deny decision")
    explained = admin.audit.explain(zone, deny_id)
    assert (explained["request_id"], explained["zone_id"], explained["final_decision"]) == (deny_id, zone, "deny")
    assert [e["request_id"] for e in explained["events"]] == [deny_id]
    (why,) = explained["denied"]
    assert why["event_type"] == "token_exchange"
    assert why["evaluation_status"] == "complete"
    policy_input = why["policy_input"]
    assert policy_input["schema_version"] == "2026-05-20"
    assert policy_input["principal"]["id"] == mz.app and policy_input["principal"]["zone_id"] == zone
    assert policy_input["resource"]["identifier"] == ungranted["identifier"]
    assert policy_input["action"] == {"id": "TokenExchange"}
    assert admin.audit.explain(zone, allow_id)["final_decision"] == "allow"

    # Filters the SDK passes through, newest first.
    decisions = admin.audit.list(zone, {"application_id": mz.app, "event_type": "token_exchange,step_up_issued"})
    assert [e["request_id"] for e in decisions][:2] == [deny_id, allow_id]
    assert deny_id not in {e["request_id"] for e in admin.audit.list(zone, {"decision": "allow"})}
    assert [e["request_id"] for e in admin.audit.list(zone, {"decision": "deny", "limit": 1})] == [deny_id]

    # Another zone never sees this zone's evidence.
    elsewhere = admin.zones.create({"name": f"audit elsewhere {uuid.uuid4().hex[:8]}"})["id"]
    assert admin.audit.list(elsewhere, {"request_id": allow_id}) == []
    api_error(404, "request_not_found", admin.audit.by_request, elsewhere, allow_id)
    api_error(404, "request_not_found", admin.audit.explain, elsewhere, deny_id)


def test_admin_audit_and_typed_refusals(admin: AdminClient, zone: str) -> None:
    app = admin.applications.create(zone, {"name": "audited", "registration_method": "managed"})
    admin.applications.patch(zone, app["id"], {"name": "audited 2"})

    rows = admin.admin_audit.list(zone)
    assert set(rows[0]) == ADMIN_KEYS
    assert [r["action"] for r in rows[:2]] == [
        f"PATCH /v1/zones/{zone}/applications/{app['id']}",
        f"POST /v1/zones/{zone}/applications",
    ]
    assert rows[0]["entity_id"] == app["id"] and rows[0]["status_code"] == 200
    assert rows[1]["payload_json"]["change_kind"] == "create"
    assert "client_secret" not in str(rows), "change summaries carry names, never values"
    assert [r["method"] for r in admin.admin_audit.list(zone, {"method": "PATCH"})] == ["PATCH"]
    assert len(admin.admin_audit.list(zone, {"limit": 1})) == 1

    api_error(400, "invalid_query", admin.audit.list, zone, {"limit": 0})
    api_error(400, "invalid_query", admin.audit.list, zone, {"decision": "maybe"})
    api_error(400, "invalid_fields", admin.audit.list, zone, {"fields": "id,secret"})
    api_error(400, "invalid_cursor", admin.audit.list, zone, {"cursor": "not-a-cursor"})
    api_error(400, "invalid_query", admin.admin_audit.list, zone, {"method": "GET"})
    api_error(404, "request_not_found", admin.audit.by_request, zone, "never-seen")


def test_retention_is_set_within_the_ceiling(raw: httpx.Client, auth: dict[str, str]) -> None:
    before = raw.get("/v1/audit-retention", headers=auth)
    assert before.status_code == 200, before.text
    assert before.json()["max_days"] == 365
    try:
        res = raw.put("/v1/audit-retention", json={"retention_days": 30}, headers=auth)
        assert res.status_code == 200, res.text
        body = res.json()
        assert (body["retention_days"], body["max_days"]) == (30, 365)
        assert body["updated_by"].startswith("admin:")
        assert_timestamp(body["updated_at"], "updated_at")
        assert raw.get("/v1/audit-retention", headers=auth).json() == body

        above = raw.put("/v1/audit-retention", json={"retention_days": 366}, headers=auth)
        assert (above.status_code, above.json()["error"], above.json()["max_days"]) == (400, "retention_above_limit", 365)
        for bad in ({"retention_days": 0}, {"retention_days": "30"}, {"retention_days": 30, "x": 1}):
            res = raw.put("/v1/audit-retention", json=bad, headers=auth)
            assert (res.status_code, res.json()["error"]) == (400, "invalid_body"), bad
        assert raw.get("/v1/audit-retention", headers=auth).json() == body, "refusals change nothing"
    finally:
        # The server is shared by the module: leave the window as the other tests expect it.
        raw.put("/v1/audit-retention", json={"retention_days": before.json()["retention_days"]}, headers=auth)
