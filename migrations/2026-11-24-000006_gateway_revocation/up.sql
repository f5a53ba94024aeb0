-- The Gateway's revocation snapshot (spec/coordinator-gateway.md B6): every Gateway reads, at
-- start and every 30 s, the ids revoked within the last 24 h across all zones. Without these
-- indexes each read would scan the whole of `authority_records` (one row per minted mandate)
-- and `agent_sessions`. Partial, as in 000005: they hold only revoked or terminated rows, and
-- the query repeats their predicates verbatim (as constants, not parameters) so the planner
-- uses them under a generic plan too. The edges' read needs none: 000005's
-- `delegation_edges_revoked_end` serves it (`status = 'revoked' AND revoked_at > $1` implies
-- that index's predicate).
CREATE INDEX authority_records_revoked ON authority_records (expires_at)
    WHERE status = 'revoked';
CREATE INDEX agent_sessions_terminated ON agent_sessions (updated_at)
    WHERE status = 'terminated';
