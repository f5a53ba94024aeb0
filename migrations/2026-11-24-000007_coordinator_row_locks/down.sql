-- Restores the stored child count (development only; production migrations are forward-only).
DROP INDEX IF EXISTS agent_sessions_open_children;
ALTER TABLE agent_sessions ADD COLUMN child_count integer NOT NULL DEFAULT 0;
UPDATE agent_sessions p SET child_count = (
    SELECT count(*) FROM agent_sessions c
    WHERE c.zone_id = p.zone_id AND c.parent_id = p.id AND c.status IN ('active', 'suspended'));
ALTER TABLE agent_sessions ALTER COLUMN child_count DROP DEFAULT;
