-- Approval holds (spec/sts.md §8, spec/api.md §3.14): a mint the policy gates behind a human
-- decision is parked here, bound to a hash of everything that decided it. The STS issues and
-- consumes holds; the API (operators) and the STS (subjects) decide them.
--
-- Conventions as in the baseline: `text COLLATE "C"` identifiers, `timestamptz` instants,
-- deferrable foreign key to zones, row-level security. The table keeps upstream's name.

CREATE TABLE step_up_challenges (
    id                           text COLLATE "C" PRIMARY KEY,
    zone_id                      text COLLATE "C" NOT NULL
                                 REFERENCES zones (id) DEFERRABLE INITIALLY DEFERRED,
    -- The authority record of the gated request ('' when it had none).
    session_id                   text COLLATE "C" NOT NULL,
    principal_id                 text COLLATE "C" NOT NULL,
    application_id               text COLLATE "C",
    approval_type                text        NOT NULL
                                 CONSTRAINT step_up_challenges_approval_type_check
                                 CHECK (approval_type IN ('human_approval')),
    tier                         text        NOT NULL,
    approver_class               text        NOT NULL
                                 CONSTRAINT step_up_challenges_approver_class_check
                                 CHECK (approver_class IN ('operator', 'subject', 'any')),
    privacy_mode                 text        NOT NULL
                                 CONSTRAINT step_up_challenges_privacy_mode_check
                                 CHECK (privacy_mode IN ('identified', 'pseudonymous', 'anonymous')),
    subject_anchor               text,
    binding                      text COLLATE "C" NOT NULL,
    metadata_json                jsonb       NOT NULL
                                 CONSTRAINT step_up_challenges_metadata_json_check
                                 CHECK (jsonb_typeof(metadata_json) = 'object'),
    decision_reason              text,
    created_at                   timestamptz NOT NULL,
    expires_at                   timestamptz NOT NULL,
    satisfied_at                 timestamptz,
    rejected_at                  timestamptz,
    consumed_at                  timestamptz,
    approver_subject_id          text,
    approver_session_id          text COLLATE "C",
    consumed_authority_record_id text COLLATE "C"
);
-- The request key a retry recomputes (issuance converges on it, spec/sts.md §8).
CREATE INDEX step_up_challenges_key
    ON step_up_challenges (zone_id, principal_id, session_id, binding);
CREATE INDEX step_up_challenges_list ON step_up_challenges (zone_id, created_at DESC, id DESC);

-- A decision wakes long-poll waiters (`GET /approvals/{id}?wait=`) on the channel upstream uses;
-- the notification is delivered at commit, so a waiter never reads an uncommitted decision.
-- Readers also re-read on a timer, so a missed notification only delays them.
CREATE FUNCTION step_up_challenges_notify_decided() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('caracal_approval_decided', NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER step_up_challenges_decided
    AFTER UPDATE ON step_up_challenges
    FOR EACH ROW
    WHEN (OLD.satisfied_at IS DISTINCT FROM NEW.satisfied_at
          OR OLD.rejected_at IS DISTINCT FROM NEW.rejected_at)
    EXECUTE FUNCTION step_up_challenges_notify_decided();

-- ---------------------------------------------------------------------------------------------
-- Privileges: least privilege. Holds are deleted when an expired one is replaced at issuance.
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON step_up_challenges TO caracal_app;

-- ---------------------------------------------------------------------------------------------
-- Zone isolation, the same policy as the baseline's (spec/api.md §5).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE step_up_challenges ENABLE ROW LEVEL SECURITY;
CREATE POLICY zone_isolation ON step_up_challenges FOR ALL
    USING (current_setting('caracal.zone_id', true) = '*'
           OR zone_id = current_setting('caracal.zone_id', true))
    WITH CHECK (current_setting('caracal.zone_id', true) = '*'
                OR zone_id = current_setting('caracal.zone_id', true));
