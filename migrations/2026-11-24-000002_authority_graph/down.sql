-- Reverts the authority graph (development only; production migrations are forward-only).
DROP TABLE IF EXISTS zone_signing_keys;
DROP TABLE IF EXISTS delegation_graph_epochs;
DROP TABLE IF EXISTS delegation_edges;
DROP TABLE IF EXISTS agent_sessions;
DROP TABLE IF EXISTS authority_records;
