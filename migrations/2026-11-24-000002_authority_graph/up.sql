-- The authority graph the STS mints against (spec/sts.md §3.6, §3.9, §5): authority records
-- (the `sid` of every mandate), governed agent Sessions and Delegation edges (written by the
-- Coordinator), the per-zone delegation graph epoch, and the zones' ES256 signing keys.
--
-- Conventions as in the baseline: `text COLLATE "C"` identifiers, `timestamptz` instants, unique
-- index names that are the rule names StoreError::Conflict reports (the in-memory adapter
-- reports the same), deferrable foreign keys to zones, row-level security on every table.
-- Graph rows reference each other by id without foreign keys: the in-memory adapter does not
-- enforce them either, and the readers (STS) treat a dangling id as "not live".

-- ---------------------------------------------------------------------------------------------
-- Authority records: one per minted mandate; `parent_id` links a `use=resource` record to the
-- presented mandate's record (revocation walks that tree).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE authority_records (
    id               text COLLATE "C" PRIMARY KEY,
    zone_id          text COLLATE "C" NOT NULL
                     REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    session_type     text        NOT NULL
                     CONSTRAINT authority_records_session_type_check
                     CHECK (session_type IN ('application', 'user')),
    subject_id       text        NOT NULL,
    client_id        text        NOT NULL,
    parent_id        text COLLATE "C",
    status           text        NOT NULL
                     CONSTRAINT authority_records_status_check
                     CHECK (status IN ('active', 'revoked')),
    expires_at       timestamptz NOT NULL,
    authenticated_at timestamptz NOT NULL,
    claims_json      jsonb,
    revoked_at       timestamptz,
    revoked_reason   text,
    created_at       timestamptz NOT NULL
);
CREATE INDEX authority_records_parent ON authority_records (parent_id);

-- ---------------------------------------------------------------------------------------------
-- Governed agent Sessions (spec/coordinator-gateway.md A6.2).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE agent_sessions (
    id                    text COLLATE "C" PRIMARY KEY,
    zone_id               text COLLATE "C" NOT NULL
                          REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    application_id        text COLLATE "C" NOT NULL,
    subject_session_id    text COLLATE "C" NOT NULL,
    parent_id             text COLLATE "C",
    lifecycle             text        NOT NULL
                          CONSTRAINT agent_sessions_lifecycle_check
                          CHECK (lifecycle IN ('task', 'service')),
    labels                text[]      NOT NULL,
    status                text        NOT NULL,
    depth                 integer     NOT NULL,
    ttl_seconds           bigint,
    started_at            timestamptz NOT NULL,
    last_heartbeat_at     timestamptz,
    heartbeat_deadline_at timestamptz,
    lease_generation      bigint      NOT NULL,
    child_count           integer     NOT NULL,
    metadata              jsonb       NOT NULL
                          CONSTRAINT agent_sessions_metadata_check
                          CHECK (jsonb_typeof(metadata) = 'object'),
    status_reason         text,
    ended_at              timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE INDEX agent_sessions_parent ON agent_sessions (zone_id, parent_id);

-- ---------------------------------------------------------------------------------------------
-- Delegation edges between Sessions.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE delegation_edges (
    id                      text COLLATE "C" PRIMARY KEY,
    zone_id                 text COLLATE "C" NOT NULL
                            REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    source_session_id       text COLLATE "C" NOT NULL,
    target_session_id       text COLLATE "C" NOT NULL,
    issuer_application_id   text COLLATE "C" NOT NULL,
    receiver_application_id text COLLATE "C" NOT NULL,
    parent_edge_id          text COLLATE "C",
    resource_id             text COLLATE "C",
    scopes                  text[]      NOT NULL,
    constraints_json        jsonb       NOT NULL
                            CONSTRAINT delegation_edges_constraints_json_check
                            CHECK (jsonb_typeof(constraints_json) = 'object'),
    status                  text        NOT NULL,
    expires_at              timestamptz NOT NULL,
    edge_version            bigint      NOT NULL,
    revoked_at              timestamptz,
    created_at              timestamptz NOT NULL
);
CREATE INDEX delegation_edges_target ON delegation_edges (zone_id, target_session_id);
CREATE INDEX delegation_edges_parent ON delegation_edges (zone_id, parent_edge_id);

-- ---------------------------------------------------------------------------------------------
-- The zone's delegation graph epoch: bumped on every graph change so cached graph reads can
-- tell they are stale. A missing row is epoch 0.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE delegation_graph_epochs (
    zone_id text COLLATE "C" PRIMARY KEY
            REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    epoch   bigint NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- Zone signing keys (spec/sts.md §5): sealed private keys only; the id is the JWT `kid`.
-- Versions are per zone; two writers racing to rotate get a conflict on the second.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE zone_signing_keys (
    id         text COLLATE "C" PRIMARY KEY,
    zone_id    text COLLATE "C" NOT NULL
               REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    version    integer     NOT NULL,
    envelope   bytea       NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX zone_signing_keys_version ON zone_signing_keys (zone_id, version);

-- ---------------------------------------------------------------------------------------------
-- Privileges: least privilege. Graph rows are revoked or expired, never deleted; signing keys
-- are append-only (a rotation inserts the next version).
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE ON
    authority_records, agent_sessions, delegation_edges, delegation_graph_epochs
    TO caracal_app;
GRANT SELECT, INSERT ON zone_signing_keys TO caracal_app;

-- ---------------------------------------------------------------------------------------------
-- Zone isolation, the same policy as the baseline's (spec/api.md §5).
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'authority_records', 'agent_sessions', 'delegation_edges', 'delegation_graph_epochs',
        'zone_signing_keys'
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
