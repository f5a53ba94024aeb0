-- Lookups a Session end runs under the zone lock must cost the same whatever the zone's size.
--
-- The children of a Session are read newest first, a page at a time (`ORDER BY id DESC
-- LIMIT n`). With only (zone_id, parent_id), a planner whose statistics say "almost every
-- parent_id is NULL" (true of most zones) estimates one child and prefers walking the whole
-- zone backwards on (zone_id, id), filtering on parent_id: measured at 1–6 ms per Session end
-- at 20k Sessions in a zone, against 20 µs here. (zone_id, parent_id, id) serves the filter and
-- the order at once, so no statistics can make the walk look cheaper.
CREATE INDEX agent_sessions_children ON agent_sessions (zone_id, parent_id, id);
DROP INDEX agent_sessions_parent;

-- Same for the edge listings by endpoint and by parent edge (newest first, paged).
CREATE INDEX delegation_edges_by_source ON delegation_edges (zone_id, source_session_id, id);
DROP INDEX delegation_edges_source;
CREATE INDEX delegation_edges_by_target ON delegation_edges (zone_id, target_session_id, id);
DROP INDEX delegation_edges_target;
CREATE INDEX delegation_edges_by_parent ON delegation_edges (zone_id, parent_edge_id, id);
DROP INDEX delegation_edges_parent;
