"""What the suite checks over and over: the typed error a user sees, the wire formats of
timestamps and ids, and digests the SDK recomputes on its side."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from caracalai_admin import AdminApiError

ISO_MILLIS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def api_error(status: int, code: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> AdminApiError:
    """Runs an SDK call that must fail, and checks the status and wire code it raised."""
    with pytest.raises(AdminApiError) as raised:
        call(*args, **kwargs)
    error = raised.value
    assert (error.status, error.code) == (status, code), (
        f"expected HTTP {status} {code}, got HTTP {error.status} {error.code}: {error.body!r}"
    )
    return error


def raw_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Checks a raw response is the given error; the body must be a JSON object with a string
    `error`, the shape the SDK turns into AdminApiError.code."""
    body_text = response.text
    assert response.status_code == status, (
        f"expected HTTP {status}, got {response.status_code}: {body_text[:500]}"
    )
    try:
        body = response.json()
    except ValueError:
        pytest.fail(f"HTTP {status} body is not JSON: {body_text[:500]!r}")
    assert isinstance(body, dict) and isinstance(body.get("error"), str), (
        f"HTTP {status} body has no string `error`: {body!r}"
    )
    if code is not None:
        assert body["error"] == code, f"expected error {code!r}, got {body!r}"
    return body


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_sha256(policy_version_ids: list[str]) -> str:
    manifest = [{"policy_version_id": v} for v in policy_version_ids]
    return sha256_hex(json.dumps(manifest, separators=(",", ":")))


def assert_timestamp(value: Any, field: str = "timestamp") -> None:
    assert isinstance(value, str) and ISO_MILLIS_UTC.match(value), (
        f"{field} must be ISO-8601 UTC with milliseconds, got {value!r}"
    )


def assert_uuid7(value: Any, field: str = "id") -> None:
    try:
        parsed = uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        pytest.fail(f"{field} must be a UUID string, got {value!r}")
    assert parsed.version == 7, f"{field} must be a UUIDv7, got {value!r}"


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {row["id"] for row in rows}
