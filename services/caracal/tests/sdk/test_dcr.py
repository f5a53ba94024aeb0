"""Dynamic client registration: gated per zone, short-lived, secret shown once; disabling it with
live DCR applications needs an explicit shutdown mode."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from caracalai_admin import AdminClient, ensure_application

from assertions import api_error, assert_timestamp


def _parse(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def test_dcr_is_refused_while_disabled(admin: AdminClient, zone: str) -> None:
    api_error(403, "dcr_disabled", admin.applications.dcr, zone, {"name": "early-bird"})
    assert admin.applications.list(zone) == []
    assert admin.zones.dcr_status(zone) == {"id": zone, "dcr_enabled": False, "live_dcr_applications": 0}


def test_dcr_registration_is_short_lived_and_never_revealed(admin: AdminClient, zone: str) -> None:
    admin.zones.patch(zone, {"dcr_enabled": True})
    before = datetime.now(timezone.utc)
    app = admin.applications.dcr(zone, {"name": "temp-agent", "expires_in": 600})
    assert app["registration_method"] == "dcr"
    assert app["client_secret"].startswith("cs_") and len(app["client_secret"]) == 46
    assert_timestamp(app["expires_at"], "expires_at")
    expires = _parse(app["expires_at"])
    assert before + timedelta(seconds=590) <= expires <= before + timedelta(seconds=660)

    row = admin.applications.get(zone, app["id"])
    assert row["registration_method"] == "dcr" and "client_secret" not in row
    api_error(404, "application_not_found", admin.applications.get_client_secret, zone, app["id"])
    assert admin.zones.dcr_status(zone) == {"id": zone, "dcr_enabled": True, "live_dcr_applications": 1}

    with pytest.raises(RuntimeError, match="not a usable managed credential"):
        ensure_application(admin, zone, name="temp-agent", traits=[], client_secret="cs_" + "x" * 43)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": "x", "expires_in": 0}, id="expires-0"),
        pytest.param({"name": "x", "expires_in": 3601}, id="expires-3601"),
        pytest.param({"name": "x", "expires_in": "60"}, id="expires-string"),
        pytest.param({"name": ""}, id="name-empty"),
        pytest.param({"name": "x", "traits": []}, id="unknown-field"),
    ],
)
def test_invalid_dcr_body(admin: AdminClient, zone: str, body: dict) -> None:
    admin.zones.patch(zone, {"dcr_enabled": True})
    api_error(400, "invalid_application", admin.applications.dcr, zone, body)
    assert admin.applications.list(zone) == []


def test_disabling_dcr_with_live_apps_needs_a_shutdown_mode(admin: AdminClient, zone: str) -> None:
    admin.zones.patch(zone, {"dcr_enabled": True})
    dcr_app = admin.applications.dcr(zone, {"name": "short-lived"})
    managed = admin.applications.create(zone, {"name": "long-lived", "registration_method": "managed"})

    error = api_error(409, "dcr_shutdown_required", admin.zones.patch, zone, {"dcr_enabled": False})
    assert error.body["details"]["live_dcr_applications"] == 1
    assert admin.zones.get(zone)["dcr_enabled"] is True

    api_error(400, "dcr_shutdown_not_applicable", admin.zones.patch, zone, {"dcr_shutdown": "revoke_live"})

    patched = admin.zones.patch(zone, {"dcr_enabled": False, "dcr_shutdown": "revoke_live"})
    assert patched["dcr_enabled"] is False
    api_error(404, "application_not_found", admin.applications.get, zone, dcr_app["id"])
    assert [a["id"] for a in admin.applications.list(zone)] == [managed["id"]]
    assert admin.zones.dcr_status(zone)["live_dcr_applications"] == 0


def test_disabling_dcr_keeping_live_apps(admin: AdminClient, zone: str) -> None:
    admin.zones.patch(zone, {"dcr_enabled": True})
    dcr_app = admin.applications.dcr(zone, {"name": "survivor"})
    patched = admin.zones.patch(zone, {"dcr_enabled": False, "dcr_shutdown": "keep_live"})
    assert patched["dcr_enabled"] is False
    assert admin.applications.get(zone, dcr_app["id"])["name"] == "survivor"
    api_error(403, "dcr_disabled", admin.applications.dcr, zone, {"name": "latecomer"})
