//! Diesel's view of the tables created by `migrations/` (the baseline, the authority graph, the
//! subject issuers, the approvals and the Coordinator's tables).
//! Kept by hand, column for column with the migrations (there is no `diesel print-schema` without
//! libpq); the store contract suite exercises every column, so a drift fails a test.

diesel::table! {
    zones (id) {
        id -> Text,
        name -> Text,
        slug -> Text,
        dcr_enabled -> Bool,
        operator_coauthor_badge -> Bool,
        operator_governed -> Bool,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    applications (id) {
        id -> Text,
        zone_id -> Text,
        name -> Text,
        registration_method -> Text,
        traits -> Array<Text>,
        client_secret_hash -> Nullable<Text>,
        expires_at -> Nullable<Timestamptz>,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    providers (id) {
        id -> Text,
        zone_id -> Text,
        name -> Text,
        identifier -> Text,
        kind -> Text,
        config_json -> Jsonb,
        secret_config_keys -> Array<Text>,
        connectivity_failed_at -> Nullable<Timestamptz>,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    resources (id) {
        id -> Text,
        zone_id -> Text,
        name -> Text,
        identifier -> Text,
        upstream_url -> Nullable<Text>,
        scopes -> Array<Text>,
        credential_provider_id -> Nullable<Text>,
        operations -> Jsonb,
        operation_enforcement -> Text,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    policies (id) {
        id -> Text,
        zone_id -> Text,
        name -> Text,
        description -> Nullable<Text>,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    policy_versions (id) {
        id -> Text,
        policy_id -> Text,
        zone_id -> Text,
        version -> Int4,
        content -> Text,
        content_sha256 -> Text,
        schema_version -> Text,
        created_by -> Text,
        created_via_operator -> Bool,
        created_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    policy_sets (id) {
        id -> Text,
        zone_id -> Text,
        name -> Text,
        description -> Nullable<Text>,
        active_version_id -> Nullable<Text>,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    policy_set_versions (id) {
        id -> Text,
        policy_set_id -> Text,
        zone_id -> Text,
        version -> Int4,
        manifest -> Jsonb,
        manifest_sha256 -> Text,
        schema_version -> Text,
        created_by -> Text,
        created_via_operator -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    grants (id) {
        id -> Text,
        zone_id -> Text,
        application_id -> Text,
        user_id -> Text,
        resource_id -> Text,
        scopes -> Array<Text>,
        status -> Text,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    subject_issuers (id) {
        id -> Text,
        zone_id -> Text,
        issuer -> Text,
        jwks_url -> Text,
        audience -> Text,
        created_by -> Text,
        created_via_operator -> Bool,
        updated_by -> Text,
        updated_via_operator -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    admin_tokens (id) {
        id -> Text,
        name -> Text,
        token_sha256 -> Text,
        token_hash -> Text,
        scope -> Text,
        zone_id -> Nullable<Text>,
        capability -> Text,
        created_by -> Text,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    admin_audit_events (id) {
        id -> Text,
        request_id -> Text,
        actor_id -> Nullable<Text>,
        actor_name -> Nullable<Text>,
        actor_scope -> Nullable<Text>,
        action -> Text,
        method -> Text,
        path -> Text,
        zone_id -> Nullable<Text>,
        entity_type -> Nullable<Text>,
        entity_id -> Nullable<Text>,
        status_code -> Int4,
        payload_json -> Jsonb,
        occurred_at -> Timestamptz,
        content_sha256 -> Text,
        prev_content_sha256 -> Nullable<Text>,
        chain_seq -> Int8,
        chain_hmac -> Nullable<Text>,
    }
}

diesel::table! {
    event_outbox (id) {
        id -> Text,
        stream_name -> Text,
        payload_json -> Jsonb,
        attempts -> Int4,
        available_at -> Nullable<Timestamptz>,
        locked_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        dispatched_at -> Nullable<Timestamptz>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    secret_store (reference) {
        #[sql_name = "ref"]
        reference -> Text,
        zone_id -> Text,
        envelope -> Bytea,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    authority_records (id) {
        id -> Text,
        zone_id -> Text,
        session_type -> Text,
        subject_id -> Text,
        client_id -> Text,
        parent_id -> Nullable<Text>,
        status -> Text,
        expires_at -> Timestamptz,
        authenticated_at -> Timestamptz,
        claims_json -> Nullable<Jsonb>,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    agent_sessions (id) {
        id -> Text,
        zone_id -> Text,
        application_id -> Text,
        subject_session_id -> Text,
        parent_id -> Nullable<Text>,
        lifecycle -> Text,
        labels -> Array<Text>,
        status -> Text,
        depth -> Int4,
        ttl_seconds -> Nullable<Int8>,
        started_at -> Timestamptz,
        last_heartbeat_at -> Nullable<Timestamptz>,
        heartbeat_deadline_at -> Nullable<Timestamptz>,
        lease_generation -> Int8,
        child_count -> Int4,
        metadata -> Jsonb,
        status_reason -> Nullable<Text>,
        ended_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    delegation_edges (id) {
        id -> Text,
        zone_id -> Text,
        source_session_id -> Text,
        target_session_id -> Text,
        issuer_application_id -> Text,
        receiver_application_id -> Text,
        parent_edge_id -> Nullable<Text>,
        resource_id -> Nullable<Text>,
        scopes -> Array<Text>,
        constraints_json -> Jsonb,
        status -> Text,
        expires_at -> Timestamptz,
        edge_version -> Int8,
        revoked_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    delegation_graph_epochs (zone_id) {
        zone_id -> Text,
        epoch -> Int8,
    }
}

diesel::table! {
    zone_signing_keys (id) {
        id -> Text,
        zone_id -> Text,
        version -> Int4,
        envelope -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    step_up_challenges (id) {
        id -> Text,
        zone_id -> Text,
        session_id -> Text,
        principal_id -> Text,
        application_id -> Nullable<Text>,
        approval_type -> Text,
        tier -> Text,
        approver_class -> Text,
        privacy_mode -> Text,
        subject_anchor -> Nullable<Text>,
        binding -> Text,
        metadata_json -> Jsonb,
        decision_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        satisfied_at -> Nullable<Timestamptz>,
        rejected_at -> Nullable<Timestamptz>,
        consumed_at -> Nullable<Timestamptz>,
        approver_subject_id -> Nullable<Text>,
        approver_session_id -> Nullable<Text>,
        consumed_authority_record_id -> Nullable<Text>,
    }
}

diesel::table! {
    idempotency_receipts (scope, key_hash) {
        scope -> Text,
        key_hash -> Text,
        zone_id -> Text,
        request_hash -> Text,
        object_id -> Text,
        status -> Int4,
        body -> Jsonb,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    agent_services (id) {
        id -> Text,
        zone_id -> Text,
        application_id -> Text,
        endpoint_url -> Text,
        protocol_versions -> Array<Text>,
        framework_name -> Nullable<Text>,
        framework_version -> Nullable<Text>,
        capabilities -> Array<Text>,
        health -> Text,
        metadata -> Jsonb,
        last_heartbeat_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    invocations (id) {
        id -> Text,
        zone_id -> Text,
        service_id -> Text,
        source_session_id -> Nullable<Text>,
        target_session_id -> Nullable<Text>,
        invoking_application_id -> Text,
        method -> Text,
        params -> Jsonb,
        metadata -> Jsonb,
        status -> Text,
        attempts -> Int4,
        max_attempts -> Int4,
        backoff_ms -> Int8,
        timeout_ms -> Int8,
        deadline_at -> Nullable<Timestamptz>,
        error_json -> Nullable<Jsonb>,
        cancel_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    zones,
    applications,
    providers,
    resources,
    policies,
    policy_versions,
    policy_sets,
    policy_set_versions,
    grants,
    subject_issuers,
    admin_tokens,
    admin_audit_events,
    event_outbox,
    secret_store,
    authority_records,
    agent_sessions,
    delegation_edges,
    delegation_graph_epochs,
    zone_signing_keys,
    step_up_challenges,
    idempotency_receipts,
    agent_services,
    invocations,
);
