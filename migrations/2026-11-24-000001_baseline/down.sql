-- Reverts the baseline (development only; production migrations are forward-only).
-- The caracal_app role is cluster-wide and may serve other databases, so it is left in place.
DROP TABLE IF EXISTS secret_store;
DROP TABLE IF EXISTS event_outbox;
DROP TABLE IF EXISTS admin_audit_events;
DROP TABLE IF EXISTS admin_tokens;
DROP TABLE IF EXISTS grants;
ALTER TABLE IF EXISTS policy_sets DROP CONSTRAINT IF EXISTS policy_sets_active_version_id_fkey;
DROP TABLE IF EXISTS policy_set_versions;
DROP TABLE IF EXISTS policy_sets;
DROP TABLE IF EXISTS policy_versions;
DROP TABLE IF EXISTS policies;
DROP TABLE IF EXISTS resources;
DROP TABLE IF EXISTS providers;
DROP TABLE IF EXISTS applications;
DROP TABLE IF EXISTS zones;
