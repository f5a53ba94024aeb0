-- The Coordinator's own rows (spec/coordinator-gateway.md A7, A9) and the indexes behind its
-- reads and background passes over the authority graph (A6.1 capacity, A6.6, A8.4, A11):
-- idempotency receipts, agent services, invocations.
--
-- Conventions as in the baseline: `text COLLATE "C"` identifiers (so `id DESC` paging is byte
-- order, exactly as the in-memory adapter compares), `timestamptz` instants, unique index and
-- key names that are the rule names StoreError::Conflict reports (the in-memory adapter reports
-- the same), deferrable foreign keys to zones, row-level security on every table. As in the
-- authority graph, rows reference Sessions and services by id without foreign keys, and
-- free-text statuses (a `String` in the domain) carry no CHECK, so both adapters accept the
-- same values; JSON columns the domain types as objects are checked to be objects.

-- ---------------------------------------------------------------------------------------------
-- Idempotency receipts (A7): the stored response to an idempotent creation, under the HMAC of
-- the key. A receipt past `expires_at` is ignored, replaced by a new insert, and purged.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE idempotency_receipts (
    scope        text COLLATE "C" NOT NULL,
    key_hash     text COLLATE "C" NOT NULL,
    zone_id      text COLLATE "C" NOT NULL
                 REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    request_hash text        NOT NULL,
    object_id    text COLLATE "C" NOT NULL,
    status       integer     NOT NULL,
    body         jsonb       NOT NULL,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    CONSTRAINT idempotency_receipts_key PRIMARY KEY (scope, key_hash)
);
-- The per-scope cap counts unexpired receipts of one scope (A7).
CREATE INDEX idempotency_receipts_scope ON idempotency_receipts (scope, expires_at);
-- Retention purges the expired ones, oldest first (A11).
CREATE INDEX idempotency_receipts_expiry ON idempotency_receipts (expires_at);

-- ---------------------------------------------------------------------------------------------
-- Agent services (A9): one registered endpoint per (zone, application, URL).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE agent_services (
    id                text COLLATE "C" PRIMARY KEY,
    zone_id           text COLLATE "C" NOT NULL
                      REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    application_id    text COLLATE "C" NOT NULL,
    endpoint_url      text COLLATE "C" NOT NULL,
    protocol_versions text[]      NOT NULL,
    framework_name    text,
    framework_version text,
    capabilities      text[]      NOT NULL,
    health            text        NOT NULL,
    metadata          jsonb       NOT NULL
                      CONSTRAINT agent_services_metadata_check
                      CHECK (jsonb_typeof(metadata) = 'object'),
    last_heartbeat_at timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE UNIQUE INDEX agent_services_endpoint
    ON agent_services (zone_id, application_id, endpoint_url);
CREATE INDEX agent_services_list ON agent_services (zone_id, id);

-- ---------------------------------------------------------------------------------------------
-- Invocations of agent services (A9). `params` is any JSON value and never echoed.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE invocations (
    id                      text COLLATE "C" PRIMARY KEY,
    zone_id                 text COLLATE "C" NOT NULL
                            REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    service_id              text COLLATE "C" NOT NULL,
    source_session_id       text COLLATE "C",
    target_session_id       text COLLATE "C",
    invoking_application_id text COLLATE "C" NOT NULL,
    method                  text        NOT NULL,
    params                  jsonb       NOT NULL,
    metadata                jsonb       NOT NULL
                            CONSTRAINT invocations_metadata_check
                            CHECK (jsonb_typeof(metadata) = 'object'),
    status                  text        NOT NULL,
    attempts                integer     NOT NULL,
    max_attempts            integer     NOT NULL,
    backoff_ms              bigint      NOT NULL,
    timeout_ms              bigint      NOT NULL,
    deadline_at             timestamptz,
    error_json              jsonb,
    cancel_reason           text,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    completed_at            timestamptz
);
CREATE INDEX invocations_list ON invocations (zone_id, id);
-- The deadline enforcer: running invocations by deadline (A11).
CREATE INDEX invocations_running_deadline ON invocations (deadline_at)
    WHERE status = 'running';

-- ---------------------------------------------------------------------------------------------
-- Indexes for the Coordinator's reads and passes over the authority graph. The partial ones
-- index only the rows a query can select, so they stay as small as the live graph however many
-- ended rows accumulate; every query repeats the predicate verbatim so the planner uses them.
-- ---------------------------------------------------------------------------------------------
-- Listings `id DESC` within a zone (A6.6).
CREATE INDEX agent_sessions_list ON agent_sessions (zone_id, id);
-- Capacity counts under the start lock, per zone and per application (A6.1).
CREATE INDEX agent_sessions_live ON agent_sessions (zone_id, application_id)
    WHERE status IN ('active', 'suspended');
-- TTL sweeper (A11).
CREATE INDEX agent_sessions_task_open ON agent_sessions (started_at)
    WHERE lifecycle = 'task' AND status IN ('active', 'suspended');
-- Lease sweeper (A11).
CREATE INDEX agent_sessions_service_lease ON agent_sessions (heartbeat_deadline_at)
    WHERE lifecycle = 'service' AND status = 'active';
-- Retention of ended Sessions (A11).
CREATE INDEX agent_sessions_ended ON agent_sessions (ended_at)
    WHERE status IN ('terminated', 'expired');
-- Outbound listings and the terminate cascade's edge sweep (A6.5, A8.4).
CREATE INDEX delegation_edges_source ON delegation_edges (zone_id, source_session_id);
-- `…/delegations/active` (A8.4).
CREATE INDEX delegation_edges_active ON delegation_edges (zone_id, id)
    WHERE status = 'active';
-- Retention flips active edges past expiry (A11).
CREATE INDEX delegation_edges_active_expiry ON delegation_edges (expires_at)
    WHERE status = 'active';
-- Retention deletes edges that ended (`COALESCE(revoked_at, expires_at)`) long ago (A11): one
-- index per arm of that COALESCE, because row-level security keeps a COALESCE (not provably
-- leakproof) from ever becoming an index condition, while plain comparisons can.
CREATE INDEX delegation_edges_revoked_end ON delegation_edges (revoked_at)
    WHERE status IN ('revoked', 'expired') AND revoked_at IS NOT NULL;
CREATE INDEX delegation_edges_expired_end ON delegation_edges (expires_at)
    WHERE status IN ('revoked', 'expired') AND revoked_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Privileges: least privilege. Retention now deletes old graph rows and expired receipts;
-- services and invocations are upserted and never deleted.
-- ---------------------------------------------------------------------------------------------
GRANT DELETE ON agent_sessions, delegation_edges TO caracal_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_receipts TO caracal_app;
GRANT SELECT, INSERT, UPDATE ON agent_services, invocations TO caracal_app;

-- ---------------------------------------------------------------------------------------------
-- Zone isolation, the same policy as the baseline's (spec/api.md §5).
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['idempotency_receipts', 'agent_services', 'invocations'] LOOP
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
