"""Credentials handed to the API never sit in plaintext where an operator's backups and streams
go: not in any Postgres row, not in any Redis stream entry. (Postgres mode: the memory store has
no at-rest form to inspect.)"""

from __future__ import annotations

import secrets
import subprocess
import time

from caracal_server import PG_HOST, PG_PORT, PG_USER, REDIS_DB, ServerConfig
from conftest import fresh_database, make_admin, running_server


def _database_dump(name: str) -> str:
    result = subprocess.run(
        ["pg_dump", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "--data-only", name],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, f"pg_dump failed: {result.stderr}"
    return result.stdout


def _redis(*args: str) -> str:
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-n", str(REDIS_DB), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )
    assert result.returncode == 0, f"redis-cli {args} failed: {result.stderr}"
    return result.stdout


def _recent_stream_entries() -> str:
    out = []
    for key in _redis("--scan", "--pattern", "caracal*").split():
        if _redis("TYPE", key).strip() == "stream":
            out.append(_redis("XREVRANGE", key, "+", "-", "COUNT", "2000"))
    return "\n".join(out)


def test_credentials_are_not_stored_in_plaintext() -> None:
    api_key = "k-" + secrets.token_hex(16)
    chosen_secret = "cs_" + secrets.token_urlsafe(32)
    with fresh_database() as database:
        config = ServerConfig(mode="postgres", database=database)
        with running_server(config) as server:
            admin, _ = make_admin(server)
            z = admin.zones.create({"name": "at rest"})["id"]
            app = admin.applications.create(z, {"name": "app", "registration_method": "managed"})
            rotated = admin.applications.rotate_secret(z, app["id"])["client_secret"]
            other = admin.applications.create(z, {"name": "other", "registration_method": "managed"})
            admin.applications.patch(z, other["id"], {"client_secret": chosen_secret})
            admin.providers.create(
                z, {"name": "Key", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": api_key}}
            )
            # A reveal hands the secret to the caller and publishes its audit event through the
            # outbox: the one stream entry written right beside a plaintext secret.
            revealed = admin.applications.get_client_secret(z, app["id"])
            assert rotated in str(revealed), "the reveal answers the current secret"
            deadline = time.monotonic() + 15
            streams = _recent_stream_entries()
            while "credential_revealed" not in streams and time.monotonic() < deadline:
                time.sleep(0.2)
                streams = _recent_stream_entries()

            dump = _database_dump(database.name)

        secrets_given = {
            "provider api_key": api_key,
            "first client secret": app["client_secret"],
            "rotated client secret": rotated,
            "patched client secret": chosen_secret,
            "admin token": config.admin_token,
        }
        assert "Key" in dump and "X-Api-Key" in dump, "the dump should hold the provider row at all"
        assert "credential_revealed" in streams, "the streams should hold the reveal's audit event at all"
        for label, value in secrets_given.items():
            assert value not in dump, f"{label} is stored in plaintext in Postgres"
            assert value not in streams, f"{label} appears in plaintext in a Redis stream"
