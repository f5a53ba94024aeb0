-- Reverts the Coordinator tables and graph indexes (development only; production migrations
-- are forward-only).
REVOKE DELETE ON agent_sessions, delegation_edges FROM caracal_app;
DROP INDEX IF EXISTS delegation_edges_expired_end;
DROP INDEX IF EXISTS delegation_edges_revoked_end;
DROP INDEX IF EXISTS delegation_edges_active_expiry;
DROP INDEX IF EXISTS delegation_edges_active;
DROP INDEX IF EXISTS delegation_edges_source;
DROP INDEX IF EXISTS agent_sessions_ended;
DROP INDEX IF EXISTS agent_sessions_service_lease;
DROP INDEX IF EXISTS agent_sessions_task_open;
DROP INDEX IF EXISTS agent_sessions_live;
DROP INDEX IF EXISTS agent_sessions_list;
DROP TABLE IF EXISTS invocations;
DROP TABLE IF EXISTS agent_services;
DROP TABLE IF EXISTS idempotency_receipts;
