"""`POST /v1/policies/validate` and the same validator guarding policy writes: documents the SDK
authors pass, anything else is a 422 `invalid_rego` naming the first rule it broke."""

from __future__ import annotations

import pytest
from caracalai_admin import AdminClient, ResourceGrant, author_grants_document

from assertions import api_error

SCHEMA_VERSION = "2026-05-20"

MARKER = "# caracal:data-document\n"


def test_sdk_authored_document_is_valid(admin: AdminClient) -> None:
    content = author_grants_document(
        [
            ResourceGrant(application_id="app-b", resource_identifier="resource://b", scopes=["b:write", "b:read"]),
            ResourceGrant(application_id="app-a", resource_identifier="resource://a", scopes=["a:read"], role="reader"),
        ]
    )
    result = admin.policies.validate(content)
    assert result["valid"] is True
    assert result["schema_version"] == SCHEMA_VERSION
    assert result["input_schema_version"] == SCHEMA_VERSION
    assert result["output_contract"] == {
        "package": "caracal.authz",
        "rule": "result",
        "decision": ["allow", "deny"],
        "evaluation_status": ["complete"],
    }
    preview = result["preview"]
    assert preview["package"] == "caracal.authz"
    assert preview["rules"] == ["app_ids", "grants"]


def test_empty_grant_document_is_valid(admin: AdminClient) -> None:
    assert admin.policies.validate(author_grants_document([]))["valid"] is True


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param("", "empty_policy", id="empty_policy"),
        pytest.param("package caracal.authz\nx := \"open\n", "unterminated_string", id="unterminated_string"),
        pytest.param("package caracal.authz\nx := [1, 2\n", "unbalanced_delimiters", id="unbalanced_delimiters"),
        pytest.param("app_ids := {}\n", "missing_package_declaration", id="missing_package_declaration"),
        pytest.param("package caracal.authz\nx := http.send({})\n", "forbidden_builtin:http.send", id="forbidden_builtin:http.send"),
        pytest.param("package other.pkg\n", "must_use_package_caracal_authz", id="must_use_package_caracal_authz"),
        pytest.param("package caracal.authz\nimport rego.v1\napp_ids := {}\n", "must_be_data_document", id="must_be_data_document"),
        pytest.param(MARKER + "package caracal.authz\nresult := {}\n", "data_document_must_not_define_result", id="data_document_must_not_define_result"),
        pytest.param(MARKER + "package caracal.authz\nimport rego.v1\n", "data_document_must_define_data", id="data_document_must_define_data"),
        pytest.param(MARKER + "package caracal.authz\nimport rego.v1\nfoo := 1\n", "data_document_rule_not_allowed:foo", id="data_document_rule_not_allowed:foo"),
    ],
)
def test_invalid_content_is_rejected_with_reason(admin: AdminClient, content: str, reason: str) -> None:
    error = api_error(422, "invalid_rego", admin.policies.validate, content)
    assert error.body["valid"] is False
    assert error.body["error_description"] == reason


def test_policy_write_with_invalid_content_writes_nothing(admin: AdminClient, zone: str) -> None:
    api_error(422, "invalid_rego", admin.policies.create, zone, {"name": "broken", "content": "package other.pkg\n"})
    assert admin.policies.list(zone) == []

    good = author_grants_document([])
    policy = admin.policies.create(zone, {"name": "grants", "content": good})
    api_error(422, "invalid_rego", admin.policies.add_version, zone, policy["id"], "not rego at all")
    versions = admin.policies.get(zone, policy["id"])["versions"]
    assert [v["version"] for v in versions] == [1], "a rejected version must not be stored"
