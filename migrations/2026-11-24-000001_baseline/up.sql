-- Caracal baseline schema: one table per aggregate, the partial unique indexes that back the
-- domain's uniqueness rules, and row-level security for zone isolation (spec/api.md §5).
--
-- Conventions:
--   * identifiers are `text COLLATE "C"`, so keyset order `(created_at DESC, id DESC)` is byte
--     order whatever the database locale, exactly as the in-memory adapter compares strings;
--   * every instant is `timestamptz` (microsecond precision, the precision of core's Timestamp);
--   * unique index names are the rule names the store reports in StoreError::Conflict, and the
--     in-memory adapter reports the same names;
--   * foreign keys are DEFERRABLE INITIALLY DEFERRED: a unit of work may write a parent and its
--     child in any order; integrity is checked at commit.

-- ---------------------------------------------------------------------------------------------
-- The application role. Every unit of work runs `SET LOCAL ROLE caracal_app`; RLS is ENABLEd
-- (not FORCEd), so it binds for this non-owner role only (spec/api.md §5). Roles are
-- cluster-wide and tests migrate separate databases concurrently, so creation tolerates a
-- concurrent twin (duplicate_object once committed, unique_violation while racing).
-- ---------------------------------------------------------------------------------------------
DO $$
BEGIN
    CREATE ROLE caracal_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The connecting role must be able to SET ROLE caracal_app. Superusers already can; otherwise
-- grant membership, tolerating a concurrent identical grant ("tuple concurrently updated").
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'caracal_app', 'MEMBER') THEN
        GRANT caracal_app TO CURRENT_USER;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation OR internal_error THEN
    NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO caracal_app', current_schema());
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Zones: the tenancy boundary. Not under RLS (zone routes need to find the zone first).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE zones (
    id                      text COLLATE "C" PRIMARY KEY,
    name                    text        NOT NULL,
    slug                    text        NOT NULL,
    dcr_enabled             boolean     NOT NULL,
    operator_coauthor_badge boolean     NOT NULL,
    operator_governed       boolean     NOT NULL,
    created_by              text        NOT NULL,
    created_via_operator    boolean     NOT NULL,
    updated_by              text        NOT NULL,
    updated_via_operator    boolean     NOT NULL,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    archived_at             timestamptz,
    -- zone_slug_exists counts archived zones too, so a slug is never reused.
    CONSTRAINT zones_slug_key UNIQUE (slug)
);
CREATE INDEX zones_list ON zones (created_at DESC, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Applications.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE applications (
    id                   text COLLATE "C" PRIMARY KEY,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    name                 text        NOT NULL,
    registration_method  text        NOT NULL
                         CONSTRAINT applications_registration_method_check
                         CHECK (registration_method IN ('managed', 'dcr')),
    traits               text[]      NOT NULL,
    client_secret_hash   text,
    expires_at           timestamptz,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    archived_at          timestamptz
);
CREATE INDEX applications_list ON applications (zone_id, created_at DESC, id DESC);
-- Names are unique case-insensitively among the zone's active managed applications (DCR
-- applications may repeat a name; spec/api.md §3.2).
CREATE UNIQUE INDEX applications_active_managed_name ON applications (zone_id, lower(name))
    WHERE archived_at IS NULL AND registration_method = 'managed';

-- ---------------------------------------------------------------------------------------------
-- Providers.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE providers (
    id                     text COLLATE "C" PRIMARY KEY,
    zone_id                text COLLATE "C" NOT NULL
                           REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    name                   text        NOT NULL,
    identifier             text        NOT NULL,
    kind                   text        NOT NULL,
    config_json            jsonb       NOT NULL
                           CONSTRAINT providers_config_json_check
                           CHECK (jsonb_typeof(config_json) = 'object'),
    secret_config_keys     text[]      NOT NULL,
    connectivity_failed_at timestamptz,
    created_by             text        NOT NULL,
    created_via_operator   boolean     NOT NULL,
    updated_by             text        NOT NULL,
    updated_via_operator   boolean     NOT NULL,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    archived_at            timestamptz
);
CREATE INDEX providers_list ON providers (zone_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX providers_active_identifier ON providers (zone_id, identifier)
    WHERE archived_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Resources.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE resources (
    id                     text COLLATE "C" PRIMARY KEY,
    zone_id                text COLLATE "C" NOT NULL
                           REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    name                   text        NOT NULL,
    identifier             text        NOT NULL,
    upstream_url           text,
    scopes                 text[]      NOT NULL,
    credential_provider_id text COLLATE "C",
    operations             jsonb       NOT NULL
                           CONSTRAINT resources_operations_check
                           CHECK (jsonb_typeof(operations) = 'array'),
    operation_enforcement  text        NOT NULL,
    created_by             text        NOT NULL,
    created_via_operator   boolean     NOT NULL,
    updated_by             text        NOT NULL,
    updated_via_operator   boolean     NOT NULL,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    archived_at            timestamptz
);
CREATE INDEX resources_list ON resources (zone_id, created_at DESC, id DESC);
-- The identifier is the mandate audience the Gateway routes on: one active row per zone.
CREATE UNIQUE INDEX resources_active_identifier ON resources (zone_id, identifier)
    WHERE archived_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Policies and their immutable versions.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE policies (
    id                   text COLLATE "C" PRIMARY KEY,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    name                 text        NOT NULL,
    description          text,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    archived_at          timestamptz
);
CREATE INDEX policies_list ON policies (zone_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX policies_active_name ON policies (zone_id, name) WHERE archived_at IS NULL;

CREATE TABLE policy_versions (
    id                   text COLLATE "C" PRIMARY KEY,
    policy_id            text COLLATE "C" NOT NULL
                         REFERENCES policies (id) DEFERRABLE INITIALLY DEFERRED,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    version              integer     NOT NULL,
    content              text        NOT NULL,
    content_sha256       text        NOT NULL,
    schema_version       text        NOT NULL,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    archived_at          timestamptz,
    CONSTRAINT policy_versions_policy_version UNIQUE (policy_id, version)
);

-- ---------------------------------------------------------------------------------------------
-- Policy sets, their versions and the zone's single active binding.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE policy_sets (
    id                   text COLLATE "C" PRIMARY KEY,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    name                 text        NOT NULL,
    description          text,
    active_version_id    text COLLATE "C",
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    archived_at          timestamptz
);
CREATE INDEX policy_sets_list ON policy_sets (zone_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX policy_sets_active_name ON policy_sets (zone_id, name)
    WHERE archived_at IS NULL;
-- A zone evaluates exactly one policy set: at most one unarchived set holds an active version.
CREATE UNIQUE INDEX policy_sets_one_active_per_zone ON policy_sets (zone_id)
    WHERE active_version_id IS NOT NULL AND archived_at IS NULL;

CREATE TABLE policy_set_versions (
    id                   text COLLATE "C" PRIMARY KEY,
    policy_set_id        text COLLATE "C" NOT NULL
                         REFERENCES policy_sets (id) DEFERRABLE INITIALLY DEFERRED,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    version              integer     NOT NULL,
    -- Policy version ids in manifest order.
    manifest             jsonb       NOT NULL
                         CONSTRAINT policy_set_versions_manifest_check
                         CHECK (jsonb_typeof(manifest) = 'array'),
    manifest_sha256      text        NOT NULL,
    schema_version       text        NOT NULL,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    CONSTRAINT policy_set_versions_set_version UNIQUE (policy_set_id, version)
);
CREATE INDEX policy_set_versions_list
    ON policy_set_versions (policy_set_id, created_at DESC, id DESC);

ALTER TABLE policy_sets
    ADD CONSTRAINT policy_sets_active_version_id_fkey FOREIGN KEY (active_version_id)
    REFERENCES policy_set_versions (id) DEFERRABLE INITIALLY DEFERRED;

-- ---------------------------------------------------------------------------------------------
-- Grants.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE grants (
    id                   text COLLATE "C" PRIMARY KEY,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    application_id       text COLLATE "C" NOT NULL
                         REFERENCES applications (id) DEFERRABLE INITIALLY DEFERRED,
    user_id              text        NOT NULL,
    resource_id          text COLLATE "C" NOT NULL
                         REFERENCES resources (id) DEFERRABLE INITIALLY DEFERRED,
    scopes               text[]      NOT NULL,
    status               text        NOT NULL,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE INDEX grants_list ON grants (zone_id, created_at DESC, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Admin tokens (never the plaintext). zone_id NULL = a global token, visible only to '*'.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE admin_tokens (
    id           text COLLATE "C" PRIMARY KEY,
    name         text        NOT NULL,
    token_sha256 text        NOT NULL,
    token_hash   text        NOT NULL,
    scope        text        NOT NULL
                 CONSTRAINT admin_tokens_scope_check CHECK (scope IN ('global', 'zone')),
    zone_id      text COLLATE "C"
                 REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    capability   text        NOT NULL
                 CONSTRAINT admin_tokens_capability_check
                 CHECK (capability IN ('read', 'write', 'approve')),
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    -- A token names a zone iff its scope is `zone`.
    CONSTRAINT admin_tokens_zone_iff_zone_scope CHECK ((scope = 'zone') = (zone_id IS NOT NULL)),
    -- The SHA-256 of the plaintext is the authentication lookup key (spec/api.md §2).
    CONSTRAINT admin_tokens_token_sha256_key UNIQUE (token_sha256)
);
CREATE INDEX admin_tokens_created_by ON admin_tokens (created_by, created_at DESC, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Admin audit: append-only, hash-chained per zone (spec/api.md §7). zone_id NULL = the global
-- chain. No foreign key: a failed call may name a zone that does not exist.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE admin_audit_events (
    id                  text COLLATE "C" PRIMARY KEY,
    request_id          text        NOT NULL,
    actor_id            text,
    actor_name          text,
    actor_scope         text,
    action              text        NOT NULL,
    method              text        NOT NULL,
    path                text        NOT NULL,
    zone_id             text COLLATE "C",
    entity_type         text,
    entity_id           text,
    status_code         integer     NOT NULL,
    payload_json        jsonb       NOT NULL,
    occurred_at         timestamptz NOT NULL,
    content_sha256      text        NOT NULL,
    prev_content_sha256 text,
    chain_seq           bigint      NOT NULL,
    chain_hmac          text
);
-- One record per position of each chain: two writers that raced past the advisory lock would
-- fork the chain; this makes the second one fail instead.
CREATE UNIQUE INDEX admin_audit_events_chain_seq
    ON admin_audit_events ((coalesce(zone_id, '')), chain_seq);
CREATE INDEX admin_audit_events_list
    ON admin_audit_events ((coalesce(zone_id, '')), occurred_at DESC, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Transactional outbox (spec/api.md §4). available_at NULL = dead (never delivered again).
-- Not under RLS: the dispatcher drains every zone.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE event_outbox (
    id            text COLLATE "C" PRIMARY KEY,
    stream_name   text        NOT NULL,
    -- Message fields: an object of string values (nulls already dropped).
    payload_json  jsonb       NOT NULL
                  CONSTRAINT event_outbox_payload_json_check
                  CHECK (jsonb_typeof(payload_json) = 'object'),
    attempts      integer     NOT NULL DEFAULT 0,
    available_at  timestamptz,
    locked_until  timestamptz,
    last_error    text,
    dispatched_at timestamptz,
    request_id    text,
    created_at    timestamptz NOT NULL
);
-- The dispatcher's claim scans only undelivered, live rows in due order.
CREATE INDEX event_outbox_due ON event_outbox (available_at, id)
    WHERE dispatched_at IS NULL AND available_at IS NOT NULL;
-- Dead rows (never delivered, never retried): what /ready's outbox_dead_messages check counts.
CREATE INDEX event_outbox_dead ON event_outbox (id)
    WHERE dispatched_at IS NULL AND available_at IS NULL;
CREATE INDEX event_outbox_stream ON event_outbox (stream_name, created_at DESC, id DESC);
-- find_latest_outbox filters by a subset of fields (payload_json @> {...}).
CREATE INDEX event_outbox_payload ON event_outbox USING gin (payload_json jsonb_path_ops);

-- ---------------------------------------------------------------------------------------------
-- Builtin secret store: sealed envelopes only (spec/api.md §6).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE secret_store (
    ref        text PRIMARY KEY,
    zone_id    text COLLATE "C" NOT NULL,
    envelope   bytea       NOT NULL,
    version    integer     NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX secret_store_zone ON secret_store (zone_id);

-- ---------------------------------------------------------------------------------------------
-- Privileges of the application role: least privilege. Deletes are soft everywhere except the
-- secret store; the admin audit log is append-only (no UPDATE, no DELETE); the outbox is only
-- written by units of work (the dispatcher runs as the connecting role).
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE ON
    zones, applications, providers, resources, policies, policy_versions, policy_sets,
    policy_set_versions, grants, admin_tokens
    TO caracal_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON secret_store TO caracal_app;
GRANT SELECT, INSERT ON admin_audit_events, event_outbox TO caracal_app;

-- ---------------------------------------------------------------------------------------------
-- Zone isolation (spec/api.md §5): every unit of work sets caracal.zone_id to its zone or '*'.
-- Unset (NULL or '') matches no row: fail closed. Rows with zone_id NULL (global tokens, the
-- global audit chain) are visible to '*' only.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'applications', 'providers', 'resources', 'policies', 'policy_sets', 'grants',
        'admin_tokens', 'admin_audit_events', 'secret_store', 'policy_versions',
        'policy_set_versions'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY zone_isolation ON %I FOR ALL '
            'USING (current_setting(''caracal.zone_id'', true) = ''*'' '
            'OR zone_id = current_setting(''caracal.zone_id'', true)) '
            'WITH CHECK (current_setting(''caracal.zone_id'', true) = ''*'' '
            'OR zone_id = current_setting(''caracal.zone_id'', true))',
            t
        );
    END LOOP;
END
$$;
