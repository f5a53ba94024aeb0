-- Subject issuers (spec/api.md §3.10, spec/sts.md §9): the external identity systems a zone
-- trusts for federated users. The STS looks a token's `iss` up among the zone's active rows,
-- fetches keys from `jwks_url` and requires `audience` in the token.
--
-- Conventions as in the baseline: `text COLLATE "C"` identifiers, `timestamptz` instants, unique
-- index names that are the rule names StoreError::Conflict reports (the in-memory adapter
-- reports the same), deferrable foreign key to zones, row-level security.

CREATE TABLE subject_issuers (
    id                   text COLLATE "C" PRIMARY KEY,
    zone_id              text COLLATE "C" NOT NULL
                         REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    -- Compared byte for byte: trust is an exact `iss` match, so "C" leaves no collation room
    -- for two spellings to meet.
    issuer               text COLLATE "C" NOT NULL,
    jwks_url             text        NOT NULL,
    audience             text        NOT NULL,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    archived_at          timestamptz
);
CREATE INDEX subject_issuers_list ON subject_issuers (zone_id, created_at DESC, id DESC);
-- One active trust declaration per issuer and zone: two rows for one `iss` would make the
-- key set and audience a token is checked against ambiguous.
CREATE UNIQUE INDEX subject_issuers_active_issuer ON subject_issuers (zone_id, issuer)
    WHERE archived_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Privileges: least privilege. Deletes are soft (archived_at).
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE ON subject_issuers TO caracal_app;

-- ---------------------------------------------------------------------------------------------
-- Zone isolation, the same policy as the baseline's (spec/api.md §5).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE subject_issuers ENABLE ROW LEVEL SECURITY;
CREATE POLICY zone_isolation ON subject_issuers FOR ALL
    USING (current_setting('caracal.zone_id', true) = '*'
           OR zone_id = current_setting('caracal.zone_id', true))
    WITH CHECK (current_setting('caracal.zone_id', true) = '*'
                OR zone_id = current_setting('caracal.zone_id', true));
