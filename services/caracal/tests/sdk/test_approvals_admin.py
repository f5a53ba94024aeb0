"""Operator approvals through the official admin SDK (`admin.approvals.list/get/approve/reject`,
spec/api.md §3.14) and the capability rows that guard decisions (§2 rows 2–4).

Holds are issued by the STS for delegated or workload mints, which need the Coordinator's
Sessions and Delegations; until the Coordinator exists they are written into Postgres directly,
so this module runs in postgres mode only. The same routes run in memory mode in the API
service tests (services/api/tests/approvals.rs), which park holds in the in-process store."""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import pytest
from caracalai_admin import AdminClient

from assertions import api_error, assert_timestamp
from caracal_server import PG_HOST, PG_USER, CaracalServer
from conftest import make_admin


def sql(server: CaracalServer, statement: str) -> str:
    assert server.config.database is not None
    result = subprocess.run(
        ["psql", "-h", PG_HOST, "-U", PG_USER, "-d", server.config.database.name, "-v", "ON_ERROR_STOP=1",
         "-At", "-c", statement],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def park(server: CaracalServer, zone: str, *, age_seconds: int, principal: str = "app-principal",
         approver_class: str = "operator", decided: str | None = None, tier: str = "high") -> str:
    """A hold created `age_seconds` ago that expires in an hour; `decided` is None, "approved"
    or "rejected". Returns its id (a random UUIDv4, as the STS issues them)."""
    hold = str(uuid.uuid4())
    satisfied = "now()" if decided == "approved" else "NULL"
    rejected = "now()" if decided == "rejected" else "NULL"
    approver = "'admin:earlier'" if decided else "NULL"
    metadata = json.dumps({"requested_scopes": ["svc:write"], "resources": ["resource://svc"],
                           "agent_labels": ["billing"]})
    sql(
        server,
        "INSERT INTO step_up_challenges (id, zone_id, session_id, principal_id, application_id, approval_type, "
        "tier, approver_class, privacy_mode, subject_anchor, binding, metadata_json, created_at, expires_at, "
        "satisfied_at, rejected_at, approver_subject_id) VALUES "
        f"('{hold}', '{zone}', 'ar-{hold[:8]}', '{principal}', 'app-1', 'human_approval', '{tier}', "
        f"'{approver_class}', 'identified', NULL, '{'ab' * 32}', '{metadata}', "
        f"now() - interval '{age_seconds} seconds', now() + interval '1 hour', {satisfied}, {rejected}, {approver})",
    )
    return hold


def mint_token(raw: httpx.Client, auth: dict[str, str], body: dict) -> dict:
    res = raw.post("/v1/admin-tokens", json=body, headers=auth)
    assert res.status_code == 201, res.text
    return res.json()


@pytest.fixture
def postgres_only(server: CaracalServer) -> None:
    if server.mode != "postgres":
        pytest.skip("these tests seed holds in every state straight into Postgres with SQL; memory mode has "
                    "no SQL to seed with, and its approval routes are covered by the API service tests")


@pytest.mark.usefixtures("postgres_only")
def test_operator_lists_reads_and_approves(server: CaracalServer, admin: AdminClient, raw: httpx.Client,
                                           auth: dict[str, str], zone: str) -> None:
    older = park(server, zone, age_seconds=30, decided="rejected")
    subject = park(server, zone, age_seconds=20, approver_class="subject", principal="user-1")
    pending = park(server, zone, age_seconds=10)

    listed = admin.approvals.list(zone)
    assert [h["id"] for h in listed] == [pending, subject, older], "newest first"
    assert [h["state"] for h in listed] == ["pending", "pending", "rejected"]
    row = admin.approvals.get(zone, pending)
    assert row["approval_type"] == "human_approval" and row["approver_class"] == "operator"
    assert row["binding"] == "ab" * 32 and row["metadata_json"]["agent_labels"] == ["billing"]
    assert (row["prior_approved"], row["prior_rejected"]) == (0, 1), "the principal's earlier rejection"
    assert row["principal_federated"] is False
    assert_timestamp(row["created_at"], "created_at")
    assert_timestamp(row["expires_at"], "expires_at")

    minted = mint_token(raw, auth, {"name": "approver", "scope": "global", "capability": "approve"})
    approver, _ = make_admin(server, token=minted["token"])
    decided = approver.approvals.approve(zone, pending, reason="ticket 42")
    assert decided["id"] == pending and decided["state"] == "approved"
    assert decided["approver_subject_id"] == f"admin:{minted['id']}"
    assert_timestamp(decided["satisfied_at"], "satisfied_at")
    assert decided["rejected_at"] is None
    assert admin.approvals.get(zone, pending)["state"] == "approved"
    assert sql(server, f"SELECT decision_reason FROM step_up_challenges WHERE id = '{pending}'") == "ticket 42"
    frames = sql(
        server,
        "SELECT count(*) FROM event_outbox WHERE stream_name = 'caracal.audit.events' "
        f"AND payload_json->>'id' = '{pending}' AND payload_json->>'data' LIKE '%\"step_up_decided\"%'",
    )
    assert frames == "1", "the decision's audit frame committed with it"

    error = api_error(409, "approval_not_decidable", approver.approvals.approve, zone, pending)
    assert error.body["state"] == "approved", "a repeat lands on the current state"
    error = api_error(409, "approval_not_decidable", approver.approvals.reject, zone, older)
    assert error.body["state"] == "rejected"
    api_error(403, "subject_approval_required", approver.approvals.approve, zone, subject)
    api_error(404, "approval_not_found", approver.approvals.approve, zone, str(uuid.uuid4()))
    api_error(404, "approval_not_found", admin.approvals.get, zone, str(uuid.uuid4()))
    api_error(400, "invalid_body", approver.approvals.reject, zone, subject, reason="x" * 501)
    assert admin.approvals.get(zone, subject)["state"] == "pending", "refused decisions change nothing"


@pytest.mark.usefixtures("postgres_only")
def test_capabilities_guard_decisions(server: CaracalServer, admin: AdminClient, raw: httpx.Client,
                                      auth: dict[str, str], zone: str) -> None:
    hold = park(server, zone, age_seconds=5, approver_class="any")
    reader, _ = make_admin(server, token=mint_token(raw, auth, {"name": "r", "scope": "global",
                                                                "capability": "read"})["token"])
    writer, _ = make_admin(server, token=mint_token(raw, auth, {"name": "w", "scope": "global"})["token"])
    approver, _ = make_admin(server, token=mint_token(raw, auth, {"name": "a", "scope": "zone", "zone_id": zone,
                                                                  "capability": "approve"})["token"])

    api_error(403, "admin_token_read_only", reader.approvals.approve, zone, hold)
    api_error(403, "approve_capability_required", writer.approvals.reject, zone, hold)
    api_error(403, "admin_token_approve_only", approver.applications.create, zone,
              {"name": "nope", "registration_method": "managed"})
    for client in (reader, writer, approver):
        assert [h["id"] for h in client.approvals.list(zone)] == [hold], "every capability reads"
    assert admin.approvals.get(zone, hold)["state"] == "pending"

    # The env-bootstrap token is the one write token allowed to decide.
    decided = admin.approvals.reject(zone, hold)
    assert decided["state"] == "rejected" and decided["satisfied_at"] is None
    assert_timestamp(decided["rejected_at"], "rejected_at")
    assert [h["state"] for h in approver.approvals.list(zone)] == ["rejected"]
