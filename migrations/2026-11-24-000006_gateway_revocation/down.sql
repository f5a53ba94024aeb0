-- Reverts the revocation-snapshot indexes (development only; production migrations are
-- forward-only).
DROP INDEX IF EXISTS agent_sessions_terminated;
DROP INDEX IF EXISTS authority_records_revoked;
