-- The Coordinator locks the Session rows a change touches instead of one lock per zone
-- (spec/coordinator-gateway.md A8.6 as built; docs/performance.md, Coordinator section). A
-- cascade locks top-down, so it must never write a parent it does not end: a stored
-- `child_count` would have to be decremented upwards for every ended child. The count is
-- derived on read instead (open children: status `active` or `suspended`), served by the partial
-- index below; every query repeats its predicate verbatim so the planner uses it.
ALTER TABLE agent_sessions DROP COLUMN child_count;
CREATE INDEX agent_sessions_open_children ON agent_sessions (zone_id, parent_id)
    WHERE parent_id IS NOT NULL AND status IN ('active', 'suspended');
