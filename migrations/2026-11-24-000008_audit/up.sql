-- The audit ledger (spec/audit-streams-storage.md §6.3–6.5, §7.1–7.4): append-only, hash-chained
-- evidence in monthly range partitions, the anchors retention leaves behind, the ingestor's
-- security alerts and the API-managed retention setting.
--
-- Storage is designed for the issue's budget of bytes per stored event including indexes
-- (upstream: 1,843; ours: see docs/performance.md):
--   * the three JSON fields are stored packed (core/src/audit/pack.rs: a versioned, exact binary
--     form with one-byte codes for the known metadata keys and uuids/hex digests as bytes)
--     instead of jsonb, which repeats every key name in every row. The ledger packs the
--     canonical jsonb text the chain hashed and unpacks it back to the same bytes on read;
--   * what the reads filter on is extracted into columns of the narrowest lossless type:
--     a value that is a canonical lowercase uuid (what every producer sends) is stored as uuid
--     (16 bytes instead of 37), anything else verbatim in the matching `*_text` column, whose
--     domain refuses uuid-shaped text so every value has exactly one place;
--   * hashes and HMACs are raw bytea (33 bytes on disk) instead of 64-character hex text;
--   * empty optional strings are stored as NULL (a bit in the null bitmap): the canonical form
--     treats absent and "" alike (§6.3), so the encoding is lossless;
--   * only the indexes the ledger's reads use, each in its smallest form (see below);
--   * the packed columns are STORAGE MAIN with lz4 where the server has it and partitions set
--     toast_tuple_target = 128. Postgres compresses only rows above ~2 kB
--     (TOAST_TUPLE_THRESHOLD; the target only sets how far it shrinks them once it does), so a
--     typical event is stored raw; a large one (long delegation chains) is compressed in line
--     instead of being moved to the TOAST table.

-- ---------------------------------------------------------------------------------------------
-- The Audit service's role (§7.3): it reads and appends evidence and nothing else. It has no
-- UPDATE or DELETE on evidence; retention goes through two SECURITY DEFINER functions. Roles
-- are cluster-wide: creation tolerates a concurrent twin, as in the baseline.
-- ---------------------------------------------------------------------------------------------
DO $$
BEGIN
    CREATE ROLE caracal_audit NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'caracal_audit', 'MEMBER') THEN
        GRANT caracal_audit TO CURRENT_USER;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation OR internal_error THEN
    NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO caracal_audit', current_schema());
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Evidence. Column order puts the 8-byte fixed-width columns first (no alignment padding), then
-- the uuids (no alignment), then short varlenas. Strings other than zone_id and event_type are
-- NULL when empty.
-- ---------------------------------------------------------------------------------------------

-- The text form of a uuid-or-text value: never a canonical lowercase uuid, which goes in the
-- uuid column instead. One place per value keeps uniqueness and equality filters exact.
CREATE DOMAIN audit_text_not_uuid AS text COLLATE "C"
    CHECK (VALUE !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$');

CREATE TABLE audit_events (
    occurred_at               timestamptz NOT NULL,
    ingested_at               timestamptz NOT NULL DEFAULT now(),
    chain_seq                 bigint      NOT NULL,
    -- The event id (required, non-empty): in `id` when a canonical uuid, else in `id_text`.
    id                        uuid,
    request_id                uuid,
    -- metadata_json's application_id / agent_session_id / session_id when they are strings,
    -- for the API's filters (spec/api.md §3.13); uuid or `*_text` as above.
    application_id            uuid,
    agent_session_id          uuid,
    session_id                uuid,
    zone_id                   text COLLATE "C" NOT NULL,
    event_type                text COLLATE "C" NOT NULL,
    decision                  text COLLATE "C",
    policy_set_id             text COLLATE "C",
    policy_set_version_id     text COLLATE "C",
    manifest_sha              text COLLATE "C",
    evaluation_status         text COLLATE "C",
    -- Packed canonical JSON (format byte first); NULL is the spec's SQL NULL.
    determining_policies_json bytea,
    diagnostics_json          bytea,
    metadata_json             bytea,
    -- The labels metadata_json.agent_labels matches (spec/api.md §3.13): every string of an
    -- array; every key of an object and `key:value` for each string member. NULL when none.
    agent_labels              text[] COLLATE "C",
    content_sha256            bytea       NOT NULL CHECK (length(content_sha256) = 32),
    prev_content_sha256       bytea       CHECK (length(prev_content_sha256) = 32),
    -- NULL when the ingestor had no AUDIT_HMAC_KEY (the spec's "").
    chain_hmac                bytea       CHECK (length(chain_hmac) = 32),
    -- The producer's `sig` exactly as received: hex-decoded when it is lowercase hex (what
    -- every producer sends), else verbatim in ingest_signature_text.
    ingest_signature          bytea,
    ingest_signature_text     text,
    -- The text forms of the uuid-or-text columns (NULL when the value is a uuid or absent).
    id_text                   audit_text_not_uuid,
    request_id_text           audit_text_not_uuid,
    application_id_text       audit_text_not_uuid,
    agent_session_id_text     audit_text_not_uuid,
    session_id_text           audit_text_not_uuid,
    CHECK (chain_seq >= 1),
    CHECK ((id IS NULL) <> (id_text IS NULL)),
    CHECK (request_id IS NULL OR request_id_text IS NULL),
    CHECK (application_id IS NULL OR application_id_text IS NULL),
    CHECK (agent_session_id IS NULL OR agent_session_id_text IS NULL),
    CHECK (session_id IS NULL OR session_id_text IS NULL)
) PARTITION BY RANGE (occurred_at);

ALTER TABLE audit_events
    ALTER COLUMN metadata_json SET STORAGE MAIN,
    ALTER COLUMN determining_policies_json SET STORAGE MAIN,
    ALTER COLUMN diagnostics_json SET STORAGE MAIN;
DO $$
BEGIN
    ALTER TABLE audit_events
        ALTER COLUMN metadata_json SET COMPRESSION lz4,
        ALTER COLUMN determining_policies_json SET COMPRESSION lz4,
        ALTER COLUMN diagnostics_json SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    -- A server built without lz4 keeps pglz.
    NULL;
END
$$;

-- The deduplication key (§6.3: (id, occurred_at), unique), as one unique index per form of the
-- id; the text form's is partial (nearly every id is a uuid). A PRIMARY KEY needs NOT NULL
-- columns, so one column would have to hold both forms: as text, 21 more bytes per row and 24
-- more per key entry than a uuid; as an unambiguous bytea encoding, 8 more per key entry. The
-- time leads: inserts then land at the right edge whatever the id's shape (uuidv4 ids are
-- random), so leaf pages fill to ~90% (measured: 41 bytes per event, 59 with the id leading).
-- Lookups give both columns, so the order costs nothing.
CREATE UNIQUE INDEX audit_events_key ON audit_events (occurred_at, id);
CREATE UNIQUE INDEX audit_events_key_text ON audit_events (occurred_at, id_text)
    WHERE id_text IS NOT NULL;
-- The zone-keyed indexes use hashtext(zone_id), the chain's lock key, instead of the zone text:
-- 24 bytes an entry instead of 56; each zone appends at the end of its own key range. Readers
-- always add `zone_id = $zone` (a hash collision costs a heap recheck, never a wrong row).
--   chain heads, chain pages and the Audit search (keyset on chain_seq):
CREATE INDEX audit_events_zone_seq ON audit_events (hashtext(zone_id), chain_seq);
--   the API's zone list, newest first:
CREATE INDEX audit_events_zone_time ON audit_events (hashtext(zone_id), occurred_at);
-- Correlation and filter lookups are equality only, all on B-trees: on a 16-byte uuid a B-tree
-- entry is as small as a hash index's, and it packs better (request_id measured 32 bytes per
-- event against 60 for a hash index, whose buckets split half-full). The metadata ids repeat
-- across a session's events, where B-tree deduplication (posting lists) makes them smaller
-- still. Every index is partial, so absent values cost nothing; the text forms are rare.
CREATE INDEX audit_events_request ON audit_events (request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX audit_events_request_text ON audit_events (request_id_text)
    WHERE request_id_text IS NOT NULL;
CREATE INDEX audit_events_application ON audit_events (application_id)
    WHERE application_id IS NOT NULL;
CREATE INDEX audit_events_application_text ON audit_events (application_id_text)
    WHERE application_id_text IS NOT NULL;
CREATE INDEX audit_events_agent_session ON audit_events (agent_session_id)
    WHERE agent_session_id IS NOT NULL;
CREATE INDEX audit_events_agent_session_text ON audit_events (agent_session_id_text)
    WHERE agent_session_id_text IS NOT NULL;
CREATE INDEX audit_events_authority_record ON audit_events (session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX audit_events_authority_record_text ON audit_events (session_id_text)
    WHERE session_id_text IS NOT NULL;
-- Label sets: GIN without the pending list (fastupdate), which is never given back once
-- flushed and made this index 8 bytes per event instead of 1.
CREATE INDEX audit_events_labels ON audit_events USING gin (agent_labels)
    WITH (fastupdate = off)
    WHERE agent_labels IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Retention bookkeeping (§6.5). An anchor is the last link of a zone's chain that retention
-- removed before a surviving row (or before the zone's next row): the verifier bridges a gap
-- only through one, so dropping evidence on schedule never reads as tampering.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE audit_chain_anchors (
    zone_id        text COLLATE "C" NOT NULL,
    chain_seq      bigint      NOT NULL,
    content_sha256 bytea       NOT NULL CHECK (length(content_sha256) = 32),
    partition_name text        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone_id, chain_seq)
);

-- Security signals of the ingestor (§6.2): not under RLS (§7.2).
CREATE TABLE audit_ingest_alerts (
    id          bigserial   PRIMARY KEY,
    event_id    text        NOT NULL,
    zone_id     text        NOT NULL,
    kind        text        NOT NULL,
    detail      text        NOT NULL,
    observed_at timestamptz NOT NULL
);

-- The console's retention override: one row at most (§6.5).
CREATE TABLE audit_retention (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    retention_days integer     NOT NULL CHECK (retention_days >= 1),
    updated_by     text,
    updated_at     timestamptz NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- Partitions (§6.5). Monthly children `audit_events_yYYYYmMM` hold [month start, next month
-- start) in UTC; `audit_events_default` takes everything else and is never dropped.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

-- Creates the partition of the month containing `month` (UTC) unless it exists; returns whether
-- it created one. Rows of that month already in the default partition (an event from a month
-- that had no partition yet) move into the new partition unchanged, in this transaction:
-- Postgres refuses to attach a range the default partition still holds.
CREATE FUNCTION audit_partition_ensure(month timestamptz) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    first timestamptz := date_trunc('month', month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    next  timestamptz := (date_trunc('month', month AT TIME ZONE 'UTC') + interval '1 month')
                         AT TIME ZONE 'UTC';
    name  text := 'audit_events_' || to_char(month AT TIME ZONE 'UTC', '"y"YYYY"m"MM');
BEGIN
    -- Serialises concurrent ensure/drop passes (two retention leaders during a hand-over).
    PERFORM pg_advisory_xact_lock(hashtext('caracal.audit.partitions'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM audit_events_default
               WHERE occurred_at >= first AND occurred_at < next) THEN
        EXECUTE format('CREATE TABLE %I (LIKE audit_events INCLUDING ALL) '
                       'WITH (toast_tuple_target = 128)', name);
        EXECUTE format('WITH moved AS (DELETE FROM audit_events_default '
                       'WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', name)
            USING first, next;
        EXECUTE format('ALTER TABLE audit_events ATTACH PARTITION %I '
                       'FOR VALUES FROM (%L) TO (%L)', name, first, next);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_events '
                       'FOR VALUES FROM (%L) TO (%L) WITH (toast_tuple_target = 128)',
                       name, first, next);
    END IF;
    RETURN true;
END
$$;

-- Drops one month partition: first records an anchor for every row of it whose chain successor
-- is not in it (including each zone's head), then drops it, in one transaction. Returns the
-- rows dropped and the anchors recorded; (0, 0) when the partition does not exist.
CREATE FUNCTION audit_partition_drop(name text, OUT rows_dropped bigint, OUT anchors bigint)
    LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    rows_dropped := 0;
    anchors := 0;
    IF name !~ '^audit_events_y[0-9]{4}m[0-9]{2}$' THEN
        RAISE EXCEPTION 'not an audit month partition: %', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('caracal.audit.partitions'));
    IF NOT EXISTS (SELECT 1 FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = 'audit_events'::regclass AND c.relname = name) THEN
        RETURN;
    END IF;
    -- The parent first: every writer locks it before a partition, so taking it first cannot
    -- deadlock with an append routing a late row into this month. Appends and reads wait for
    -- the anchor pass; nothing can reach the partition between anchoring and dropping.
    LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('SELECT count(*) FROM %I', name) INTO rows_dropped;
    EXECUTE format(
        'INSERT INTO audit_chain_anchors (zone_id, chain_seq, content_sha256, partition_name) '
        'SELECT d.zone_id, d.chain_seq, d.content_sha256, $1 FROM %I d '
        'WHERE NOT EXISTS (SELECT 1 FROM %I n '
        '                  WHERE n.zone_id = d.zone_id AND n.chain_seq = d.chain_seq + 1) '
        'ON CONFLICT (zone_id, chain_seq) DO NOTHING', name, name)
        USING name;
    GET DIAGNOSTICS anchors = ROW_COUNT;
    EXECUTE format('DROP TABLE %I', name);
END
$$;

-- Both functions run as the migrating role: pin their search_path to this schema with pg_temp
-- last, so a caller's temporary table can never stand in for audit_events_default or a
-- partition.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_partition_ensure(timestamptz) SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION audit_partition_drop(text) SET search_path = %I, pg_temp',
                   current_schema());
END
$$;

-- The current month and the next three (§6.5).
SELECT audit_partition_ensure(now() + make_interval(months => m)) FROM generate_series(0, 3) AS m;

-- ---------------------------------------------------------------------------------------------
-- Privileges (§7.3): evidence is SELECT + INSERT for the Audit role, SELECT for the API; no
-- role but the owner may UPDATE or DELETE it. Grants on the parent cover reads and writes
-- through it; partitions themselves are reachable by the owner only.
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT ON audit_events, audit_chain_anchors, audit_ingest_alerts TO caracal_audit;
GRANT USAGE ON SEQUENCE audit_ingest_alerts_id_seq TO caracal_audit;
GRANT SELECT ON audit_retention TO caracal_audit;
REVOKE ALL ON FUNCTION audit_partition_ensure(timestamptz), audit_partition_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_partition_ensure(timestamptz), audit_partition_drop(text)
    TO caracal_audit;
GRANT SELECT ON audit_events TO caracal_app;
GRANT SELECT, INSERT, UPDATE ON audit_retention TO caracal_app;

-- Zone isolation, the same policy as the baseline's (spec/api.md §5, §7.2).
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY zone_isolation ON audit_events FOR ALL
    USING (current_setting('caracal.zone_id', true) = '*'
           OR zone_id = current_setting('caracal.zone_id', true))
    WITH CHECK (current_setting('caracal.zone_id', true) = '*'
                OR zone_id = current_setting('caracal.zone_id', true));
