"""Subject issuers (spec/api.md §3.10) through the admin SDK's `subject_issuers` client: the
CRUD a zone operator runs to trust an external identity system, and every refusal, each leaving
the zone's issuers as they were.

Federation itself (spec/sts.md §9, `ClientSecretExchanger.federate_subject`) is not driven from
here: the STS fetches the issuer's key set over HTTPS only and never from loopback, so a key set
served by this test process can never be reached. The exchange is covered by the STS service
tests (services/sts/tests/federation.rs) with a stand-in key-set fetcher."""

from __future__ import annotations

import httpx
import pytest
from caracalai_admin import AdminClient

from assertions import api_error, assert_timestamp, assert_uuid7, ids, raw_error

ISSUER = "https://login.example.com/tenant-1/v2.0"
JWKS_URL = "https://login.example.com/tenant-1/discovery/v2.0/keys"
AUDIENCE = "api://caracal-portal"


def _body(issuer: str = ISSUER, **extra) -> dict:
    return {"issuer": issuer, "jwks_url": JWKS_URL, "audience": AUDIENCE, **extra}


def test_create_read_patch_delete(admin: AdminClient, zone: str) -> None:
    created = admin.subject_issuers.create(zone, _body())
    assert_uuid7(created["id"])
    assert {k: created[k] for k in ("zone_id", "issuer", "jwks_url", "audience")} == {
        "zone_id": zone,
        "issuer": ISSUER,
        "jwks_url": JWKS_URL,
        "audience": AUDIENCE,
    }
    for field in ("created_at", "updated_at"):
        assert_timestamp(created[field], field)
    assert created["created_by"] == created["updated_by"]
    assert created["created_via_operator"] is False
    assert "archived_at" not in created
    issuer_id = created["id"]

    assert admin.subject_issuers.get(zone, issuer_id) == created
    assert admin.subject_issuers.list(zone) == [created]

    moved = "https://keys.login.example.com/tenant-1/keys"
    patched = admin.subject_issuers.patch(zone, issuer_id, {"jwks_url": moved})
    assert (patched["jwks_url"], patched["audience"], patched["issuer"]) == (moved, AUDIENCE, ISSUER)
    patched = admin.subject_issuers.patch(zone, issuer_id, {"audience": "portal-2"})
    assert (patched["jwks_url"], patched["audience"]) == (moved, "portal-2")
    assert patched["created_at"] == created["created_at"]
    # An empty patch is valid; sending the row's own issuer back is not a change.
    assert admin.subject_issuers.patch(zone, issuer_id, {})["audience"] == "portal-2"
    assert admin.subject_issuers.patch(zone, issuer_id, {"issuer": ISSUER})["issuer"] == ISSUER
    assert admin.subject_issuers.get(zone, issuer_id)["jwks_url"] == moved

    assert admin.subject_issuers.delete(zone, issuer_id) is None
    api_error(404, "subject_issuer_not_found", admin.subject_issuers.get, zone, issuer_id)
    api_error(404, "subject_issuer_not_found", admin.subject_issuers.delete, zone, issuer_id)
    api_error(404, "subject_issuer_not_found", admin.subject_issuers.patch, zone, issuer_id, {})
    assert admin.subject_issuers.list(zone) == []


def test_the_issuer_is_immutable(admin: AdminClient, zone: str) -> None:
    created = admin.subject_issuers.create(zone, _body())
    error = api_error(
        400,
        "invalid_subject_issuer",
        admin.subject_issuers.patch,
        zone,
        created["id"],
        {"issuer": "https://other.example.com", "audience": "changed"},
    )
    assert "issuer" in str(error.body)
    assert admin.subject_issuers.get(zone, created["id"]) == created


@pytest.mark.parametrize(
    ("body", "description"),
    [
        pytest.param(_body("http://login.example.com"), "issuer must use https", id="http-issuer"),
        pytest.param(_body(jwks_url="http://login.example.com/keys"), "jwks_url must use https", id="http-jwks"),
        pytest.param(_body("https://user:pw@login.example.com"), "issuer must not embed credentials", id="userinfo"),
        pytest.param(_body(jwks_url="https://login.example.com/keys?v=2"), "jwks_url must not carry a query or fragment", id="query"),
        pytest.param(_body("https://login.example.com/#x"), "issuer must not carry a query or fragment", id="fragment"),
        pytest.param(_body("login.example.com"), "issuer is not a valid absolute URL", id="relative"),
        pytest.param(_body("https://" + "a" * 2050), "issuer must be 1 to 2048 characters", id="issuer-too-long"),
        pytest.param(_body(audience="a" * 513), "audience must be 1 to 512 characters", id="audience-too-long"),
        pytest.param(_body(audience=""), "audience must be 1 to 512 characters", id="audience-empty"),
        pytest.param({"issuer": ISSUER, "jwks_url": JWKS_URL}, None, id="missing-audience"),
        pytest.param({"issuer": ISSUER, "jwks_url": 7, "audience": AUDIENCE}, None, id="jwks-not-a-string"),
    ],
)
def test_invalid_bodies_are_refused_and_write_nothing(
    admin: AdminClient, zone: str, body: dict, description: str | None
) -> None:
    error = api_error(400, "invalid_subject_issuer", admin.subject_issuers.create, zone, body)
    if description is not None:
        assert error.body.get("error_description") == description, error.body
    assert admin.subject_issuers.list(zone) == []


def test_invalid_patches_change_nothing(admin: AdminClient, zone: str) -> None:
    created = admin.subject_issuers.create(zone, _body())
    for patch in (
        {"jwks_url": "http://login.example.com/keys"},
        {"jwks_url": None},
        {"audience": ""},
        {"audience": None},
        {"audience": "a" * 513},
    ):
        api_error(400, "invalid_subject_issuer", admin.subject_issuers.patch, zone, created["id"], patch)
    assert admin.subject_issuers.get(zone, created["id"]) == created


def test_one_active_row_per_issuer(admin: AdminClient, zone: str) -> None:
    first = admin.subject_issuers.create(zone, _body())
    api_error(409, "subject_issuer_exists", admin.subject_issuers.create, zone, _body())
    # Exact match: another spelling is another issuer.
    other = admin.subject_issuers.create(zone, _body(ISSUER + "/"))
    assert ids(admin.subject_issuers.list(zone)) == {first["id"], other["id"]}
    # Once deleted, the issuer can be registered again.
    admin.subject_issuers.delete(zone, first["id"])
    again = admin.subject_issuers.create(zone, _body())
    assert again["id"] != first["id"]


def test_a_zone_trusts_at_most_twenty_issuers(admin: AdminClient, zone: str) -> None:
    rows = [admin.subject_issuers.create(zone, _body(f"https://idp{i}.example.com")) for i in range(20)]
    api_error(
        409,
        "subject_issuer_limit_reached",
        admin.subject_issuers.create,
        zone,
        _body("https://idp20.example.com"),
    )
    assert len(admin.subject_issuers.list(zone)) == 20
    admin.subject_issuers.delete(zone, rows[0]["id"])
    admin.subject_issuers.create(zone, _body("https://idp20.example.com"))
    assert len(admin.subject_issuers.list(zone)) == 20


def test_issuers_belong_to_their_zone(admin: AdminClient, zone: str) -> None:
    created = admin.subject_issuers.create(zone, _body())
    other = admin.zones.create({"name": "subject issuers elsewhere"})["id"]
    api_error(404, "subject_issuer_not_found", admin.subject_issuers.get, other, created["id"])
    api_error(404, "subject_issuer_not_found", admin.subject_issuers.delete, other, created["id"])
    assert admin.subject_issuers.list(other) == []
    # The same issuer may be trusted by another zone.
    admin.subject_issuers.create(other, _body())


def test_unknown_zone(admin: AdminClient) -> None:
    missing = "00000000-0000-7000-8000-000000000000"
    api_error(404, "zone_not_found", admin.subject_issuers.create, missing, _body())
    api_error(404, "zone_not_found", admin.subject_issuers.list, missing)


def test_raw_pagination_and_bad_json(raw: httpx.Client, auth: dict[str, str], admin: AdminClient, zone: str) -> None:
    for i in range(3):
        admin.subject_issuers.create(zone, _body(f"https://page{i}.example.com"))
    first = raw.get(f"/v1/zones/{zone}/subject-issuers", params={"limit": 2}, headers=auth)
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    second = raw.get(
        f"/v1/zones/{zone}/subject-issuers",
        params={"limit": 2, "cursor": page["next_cursor"]},
        headers=auth,
    ).json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    assert ids(page["items"]) | ids(second["items"]) == ids(admin.subject_issuers.list(zone))

    res = raw.post(
        f"/v1/zones/{zone}/subject-issuers",
        content=b'{"issuer": "https://half',
        headers={**auth, "content-type": "application/json"},
    )
    raw_error(res, 400)
    raw_error(raw.get(f"/v1/zones/{zone}/subject-issuers/bad%20id", headers=auth), 400, "invalid_params")
    assert len(admin.subject_issuers.list(zone)) == 3
