"""Keyset pagination: the SDK's `list` drains every page, so a collection larger than one page
comes back whole and without duplicates; the raw `limit`/`cursor` parameters (which the SDK
never sends) are validated."""

from __future__ import annotations

import httpx
import pytest
from caracalai_admin import AdminClient

from assertions import raw_error

DEFAULT_PAGE = 200


def _providers(admin: AdminClient, zone: str, count: int) -> set[str]:
    return {admin.providers.create(zone, {"name": f"p{i:04d}", "kind": "none"})["id"] for i in range(count)}


def test_sdk_list_drains_every_page(admin: AdminClient, zone: str) -> None:
    created = _providers(admin, zone, DEFAULT_PAGE + 7)
    listed = admin.providers.list(zone)
    listed_ids = [p["id"] for p in listed]
    assert len(listed_ids) == len(set(listed_ids)), "a row appeared on two pages"
    assert set(listed_ids) == created, "rows were skipped between pages"
    stamps = [p["created_at"] for p in listed]
    assert stamps == sorted(stamps, reverse=True), "lists are newest first"


def test_cursor_walk_with_explicit_limit(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str], zone: str
) -> None:
    created = _providers(admin, zone, 5)
    url = f"/v1/zones/{zone}/providers"

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        res = raw.get(url, params=params, headers=auth)
        assert res.status_code == 200, res.text
        page = res.json()
        assert len(page["items"]) <= 2
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(created) and len(seen) == 5


def test_next_cursor_is_set_only_for_a_full_page(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str], zone: str
) -> None:
    _providers(admin, zone, 3)
    url = f"/v1/zones/{zone}/providers"

    partial = raw.get(url, params={"limit": 4}, headers=auth).json()
    assert len(partial["items"]) == 3 and partial["next_cursor"] is None

    full = raw.get(url, params={"limit": 3}, headers=auth).json()
    assert len(full["items"]) == 3 and isinstance(full["next_cursor"], str)
    after = raw.get(url, params={"limit": 3, "cursor": full["next_cursor"]}, headers=auth).json()
    assert after == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        pytest.param({"limit": 0}, "invalid_query", id="limit-0"),
        pytest.param({"limit": 501}, "invalid_query", id="limit-501"),
        pytest.param({"limit": "ten"}, "invalid_query", id="limit-text"),
        pytest.param({"cursor": "not-a-cursor"}, "invalid_cursor", id="cursor-garbage"),
    ],
)
def test_bad_pagination_parameters(
    raw: httpx.Client, auth: dict[str, str], zone: str, params: dict, code: str
) -> None:
    raw_error(raw.get(f"/v1/zones/{zone}/providers", params=params, headers=auth), 400, code)
    raw_error(raw.get("/v1/zones", params=params, headers=auth), 400, code)


def test_largest_page_is_accepted(raw: httpx.Client, auth: dict[str, str], zone: str) -> None:
    res = raw.get(f"/v1/zones/{zone}/providers", params={"limit": 500}, headers=auth)
    assert res.status_code == 200
    assert res.json() == {"items": [], "next_cursor": None}


def test_status_filter_lists_archived_rows(
    admin: AdminClient, raw: httpx.Client, auth: dict[str, str], zone: str
) -> None:
    keep = admin.applications.create(zone, {"name": "keep", "registration_method": "managed"})
    gone = admin.applications.create(zone, {"name": "gone", "registration_method": "managed"})
    admin.applications.delete(zone, gone["id"])
    url = f"/v1/zones/{zone}/applications"

    active = raw.get(url, params={"status": "active"}, headers=auth).json()["items"]
    assert [a["id"] for a in active] == [keep["id"]]
    archived = raw.get(url, params={"status": "archived"}, headers=auth).json()["items"]
    assert [a["id"] for a in archived] == [gone["id"]]
    assert archived[0]["archived_at"] is not None
    raw_error(raw.get(url, params={"status": "deleted"}, headers=auth), 400, "invalid_query")
