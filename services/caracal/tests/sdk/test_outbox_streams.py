"""The transactional outbox end to end: an activation commits its `caracal.policy.invalidate` row
with the state change; the dispatcher publishes it; activation status then reports it dispatched.
In postgres mode the entry is read back from the real Redis stream and its `_sig` is verified
with STREAMS_HMAC_KEY, the way a consumer (the STS) will verify it."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
import time

from caracalai_admin.ensure import ResourceGrant, author_grants_document

from caracal_server import REDIS_DB, CaracalServer

STREAM = "caracal.policy.invalidate"
ENTRY_ID = re.compile(r"^\d+-\d+$")


def activate(admin, zone: str) -> dict:
    content = author_grants_document([ResourceGrant(application_id="app-1", resource_identifier="resource://r", scopes=["r:read"])])
    policy = admin.policies.create(zone, {"name": "outbox policy", "content": content})
    policy_set = admin.policy_sets.create(zone, "outbox set")
    version = admin.policy_sets.add_version(zone, policy_set["id"], [{"policy_version_id": policy["version_id"]}])
    done = admin.policy_sets.activate(zone, policy_set["id"], version["version_id"])
    return {"set": policy_set["id"], "version": version["version_id"], "outbox": done["outbox_id"]}


def wait_dispatched(admin, zone: str, activation: dict) -> dict:
    deadline = time.monotonic() + 15
    while True:
        status = admin.policy_sets.activation_status(zone, activation["set"], activation["version"], activation["outbox"])
        if status["outbox"]["state"] == "dispatched" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def stream_entries() -> list[dict[str, str]]:
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-n", str(REDIS_DB), "XREVRANGE", STREAM, "+", "-", "COUNT", "500"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, str]] = []
    lines = result.stdout.splitlines()
    i = 0
    while i < len(lines):
        if ENTRY_ID.match(lines[i]):
            fields: dict[str, str] = {}
            i += 1
            while i + 1 < len(lines) and not ENTRY_ID.match(lines[i]):
                fields[lines[i]] = lines[i + 1]
                i += 2
            entries.append(fields)
        else:
            i += 1
    return entries


def test_activation_is_published_once_and_reported_dispatched(server: CaracalServer, admin, zone: str) -> None:
    activation = activate(admin, zone)
    status = wait_dispatched(admin, zone, activation)
    assert status["outbox"]["state"] == "dispatched", status
    assert status["outbox"]["attempts"] == 1
    assert status["active"] is True
    assert status["propagation_status"] == "waiting_for_sts"
    if server.config.mode != "postgres":
        return
    mine = [e for e in stream_entries() if e.get("outbox_id") == activation["outbox"]]
    assert len(mine) == 1, f"published exactly once, found {len(mine)}"
    entry = mine[0]
    assert entry["zone_id"] == zone
    assert entry["policy_set_id"] == activation["set"]
    assert entry["policy_set_version_id"] == activation["version"]
    canonical = STREAM + "\n" + "".join(f"{k}={v}\n" for k, v in sorted(entry.items()) if k != "_sig")
    key = bytes.fromhex(server.config.streams_hmac_key)
    expected = hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(entry["_sig"], expected), "the stream signature verifies with STREAMS_HMAC_KEY"
