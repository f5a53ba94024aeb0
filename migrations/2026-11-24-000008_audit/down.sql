-- Reverts the audit ledger (development only; production migrations are forward-only). The
-- caracal_audit role is cluster-wide and may serve other databases, so it is left in place.
DROP FUNCTION IF EXISTS audit_partition_drop(text);
DROP FUNCTION IF EXISTS audit_partition_ensure(timestamptz);
DROP TABLE IF EXISTS audit_retention;
DROP TABLE IF EXISTS audit_ingest_alerts;
DROP TABLE IF EXISTS audit_chain_anchors;
DROP TABLE IF EXISTS audit_events;
DROP DOMAIN IF EXISTS audit_text_not_uuid;
