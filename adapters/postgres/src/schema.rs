//! Diesel's view of the tables created by `migrations/2026-11-24-000001_baseline`. Kept by hand,
//! column for column with the migration (there is no `diesel print-schema` without libpq); the
//! store contract suite exercises every column, so a drift fails a test.

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
    admin_tokens,
    admin_audit_events,
    event_outbox,
    secret_store,
);
