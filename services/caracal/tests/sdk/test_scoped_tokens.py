"""Zone-scoped and read-only admin tokens through the official SDK. In postgres mode the zone
confinement is also enforced by row-level security, so this drives the RLS-bound path end to end.
The SDK has no admin-token client, so tokens are minted over raw HTTP (`/v1/admin-tokens`)."""

from __future__ import annotations

import httpx

from assertions import api_error
from caracal_server import CaracalServer
from conftest import make_admin


def mint(raw: httpx.Client, auth: dict[str, str], body: dict) -> dict:
    res = raw.post("/v1/admin-tokens", json=body, headers=auth)
    assert res.status_code == 201, res.text
    assert res.json()["token"].startswith("cat_")
    return res.json()


def test_zone_token_is_confined_to_its_zone(server: CaracalServer, raw: httpx.Client, auth: dict[str, str], admin, zone: str) -> None:
    other = admin.zones.create({"name": "scoped tokens other zone"})["id"]
    theirs = admin.applications.create(other, {"name": "other-app", "registration_method": "managed"})
    token = mint(raw, auth, {"name": "zone token", "scope": "zone", "zone_id": zone})["token"]
    scoped, _ = make_admin(server, token=token)

    created = scoped.applications.create(zone, {"name": "mine", "registration_method": "managed"})
    assert created["client_secret"].startswith("cs_")
    assert [a["name"] for a in scoped.applications.list(zone)] == ["mine"]
    assert "traits" not in scoped.applications.get(zone, created["id"]), "traits are for global callers"
    api_error(403, "admin_token_zone_mismatch", scoped.applications.list, other)
    api_error(403, "admin_token_zone_mismatch", scoped.applications.get, other, theirs["id"])
    api_error(403, "admin_token_zone_mismatch", scoped.zones.list)
    api_error(404, "application_not_found", scoped.applications.get, zone, theirs["id"])
    assert [a["name"] for a in admin.applications.list(other)] == ["other-app"], "nothing leaked or changed"


def test_read_only_token_cannot_write(server: CaracalServer, raw: httpx.Client, auth: dict[str, str], admin, zone: str) -> None:
    token = mint(raw, auth, {"name": "reader", "scope": "global", "capability": "read"})["token"]
    reader, _ = make_admin(server, token=token)
    assert reader.zones.get(zone)["id"] == zone
    api_error(403, "admin_token_read_only", reader.applications.create, zone, {"name": "x", "registration_method": "managed"})
    assert admin.applications.list(zone) == []


def test_revoked_token_stops_at_once(server: CaracalServer, raw: httpx.Client, auth: dict[str, str], zone: str) -> None:
    minted = mint(raw, auth, {"name": "short-lived", "scope": "zone", "zone_id": zone})
    client, _ = make_admin(server, token=minted["token"])
    assert client.applications.list(zone) == []
    assert raw.delete(f"/v1/admin-tokens/{minted['id']}", headers=auth).status_code == 204
    api_error(401, "invalid_admin_token", client.applications.list, zone)
    listed = raw.get("/v1/admin-tokens", headers=auth).json()["items"]
    row = next(t for t in listed if t["id"] == minted["id"])
    assert row["revoked_at"] is not None and "token" not in row
