-- Restores the two-column lookup indexes (development only; production migrations are
-- forward-only).
CREATE INDEX IF NOT EXISTS agent_sessions_parent ON agent_sessions (zone_id, parent_id);
DROP INDEX IF EXISTS agent_sessions_children;
CREATE INDEX IF NOT EXISTS delegation_edges_source ON delegation_edges (zone_id, source_session_id);
DROP INDEX IF EXISTS delegation_edges_by_source;
CREATE INDEX IF NOT EXISTS delegation_edges_target ON delegation_edges (zone_id, target_session_id);
DROP INDEX IF EXISTS delegation_edges_by_target;
CREATE INDEX IF NOT EXISTS delegation_edges_parent ON delegation_edges (zone_id, parent_edge_id);
DROP INDEX IF EXISTS delegation_edges_by_parent;
