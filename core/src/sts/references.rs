//! Session and Delegation references of a token request (`spec/sts.md §3.6`, §3.8's
//! delegation clamp). A delegated mint must prove, against the *current* graph, that the
//! edge is live, targets the caller's Session, narrows what it names, and sits on an unbroken
//! chain of live edges back to a root. Every failure is `403 access_denied` with the
//! contract's message; nothing here trusts what a token claims about the graph.

use serde_json::{Map, Value};

use crate::authority::{AgentSession, AuthorityRecord, DelegationEdge, SessionType};
use crate::error::Error;
use crate::ids::ZoneId;
use crate::ports::UnitOfWork;
use crate::time::Timestamp;

/// Platform maximum of `max_hops`.
pub const MAX_HOPS: i64 = 10;

/// `403 access_denied` with a description.
pub fn denied(description: impl Into<String>) -> Error {
    Error::forbidden("access_denied", description)
}

/// The typed constraints of an edge, decoded strictly (§3.6 step 7).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    /// Identifiers the edge is confined to (empty: unconstrained).
    pub resources: Vec<String>,
    /// Longest mandate lifetime the edge allows.
    pub ttl_seconds: Option<i64>,
    /// Hop limit (`max_depth` is an alias).
    pub max_hops: Option<i64>,
    /// Expiry of the constraint set, as sent (RFC 3339).
    pub expires_at: Option<String>,
    /// Most scopes one mandate may carry through the edge.
    pub budget: Option<i64>,
}

fn non_negative(value: &Value) -> Option<i64> {
    value.as_i64().filter(|v| *v >= 0)
}

impl Constraints {
    /// Decodes `constraints_json`: only the contract's keys, right types, no negatives,
    /// `max_depth` and `max_hops` equal when both are set.
    pub fn decode(raw: &Map<String, Value>) -> Option<Self> {
        let mut out = Self::default();
        let mut depth = None;
        for (key, value) in raw {
            match key.as_str() {
                "resources" => {
                    if value.is_null() {
                        continue;
                    }
                    let items = value.as_array()?;
                    out.resources = items
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<_>>()?;
                }
                "ttl_seconds" => {
                    if !value.is_null() {
                        out.ttl_seconds = Some(non_negative(value)?);
                    }
                }
                "max_depth" => {
                    if !value.is_null() {
                        depth = Some(non_negative(value)?);
                    }
                }
                "max_hops" => {
                    if !value.is_null() {
                        out.max_hops = Some(non_negative(value)?);
                    }
                }
                "policy_approved" => {
                    if !value.is_null() && !value.is_boolean() {
                        return None;
                    }
                }
                "expires_at" => {
                    if !value.is_null() {
                        out.expires_at = Some(value.as_str()?.to_owned());
                    }
                }
                "budget" => {
                    if !value.is_null() {
                        out.budget = Some(value.as_i64().filter(|b| *b >= 1)?);
                    }
                }
                "broad_reason" => {
                    if !value.is_null() && !value.is_string() {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        match (depth, out.max_hops) {
            (Some(d), Some(h)) if d != h => return None,
            (Some(d), None) => out.max_hops = Some(d),
            _ => {}
        }
        Some(out)
    }
}

/// One element of the `delegation_chain` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The application acting at this hop.
    pub application_id: String,
    /// Its Session.
    pub agent_session_id: Option<String>,
    /// The edge leaving this hop (absent on the final hop).
    pub delegation_edge_id: Option<String>,
}

/// A verified delegation: what the mint needs for claims, policy input and TTL.
#[derive(Debug, Clone)]
pub struct Delegation {
    /// The immediate edge.
    pub edge: DelegationEdge,
    /// Its decoded constraints.
    pub constraints: Constraints,
    /// Edge ids, root first (ends with `edge`).
    pub path: Vec<String>,
    /// The chain of hops.
    pub chain: Vec<Hop>,
    /// The zone's graph epoch when checked.
    pub epoch: i64,
    /// Source Session of the immediate edge.
    pub source: AgentSession,
    /// Target Session (the caller's).
    pub target: AgentSession,
}

/// Whether a Session is active in the contract's sense, including its user anchor.
async fn session_active(
    uow: &mut Box<dyn UnitOfWork>,
    zone: &ZoneId,
    session: &AgentSession,
    now: Timestamp,
) -> Result<bool, Error> {
    if &session.zone_id != zone || !session.is_live(now) {
        return Ok(false);
    }
    let anchor = uow
        .get_authority_record(zone, &session.subject_session_id)
        .await?;
    Ok(anchor_allows(anchor.as_ref(), now))
}

/// Only a `user` anchor can lapse under a running Session (an application re-mints its own).
fn anchor_allows(anchor: Option<&AuthorityRecord>, now: Timestamp) -> bool {
    match anchor {
        Some(record) if record.session_type == SessionType::User => record.is_live(now),
        _ => true,
    }
}

/// `agent_session_id` without a delegation: the Session must be active and the caller's.
pub async fn check_own_session(
    uow: &mut Box<dyn UnitOfWork>,
    zone: &ZoneId,
    session_id: &str,
    caller: &str,
    now: Timestamp,
) -> Result<AgentSession, Error> {
    let session = uow.get_agent_session(zone, session_id).await?;
    let Some(session) = session else {
        return Err(denied("session inactive or expired"));
    };
    if !session_active(uow, zone, &session, now).await? {
        return Err(denied("session inactive or expired"));
    }
    if session.application_id != caller {
        return Err(denied("session not owned by caller"));
    }
    Ok(session)
}

/// What a delegated request names.
pub struct DelegationRequest<'a> {
    /// The edge.
    pub edge_id: &'a str,
    /// The caller's (target) Session.
    pub agent_session_id: &'a str,
    /// The authenticated application.
    pub caller: &'a str,
    /// Requested scope tokens.
    pub requested_scopes: &'a [String],
    /// Requested lifetime, when given.
    pub ttl_seconds: Option<i64>,
}

/// A Session as the delegation checks see it: the row and its anchor record.
#[derive(Debug, Clone)]
pub struct AnchoredSession {
    /// The Session.
    pub session: AgentSession,
    /// The authority record it names (`subject_session_id`), when it exists.
    pub anchor: Option<AuthorityRecord>,
}

impl AnchoredSession {
    fn active(&self, zone: &ZoneId, now: Timestamp) -> bool {
        &self.session.zone_id == zone
            && self.session.is_live(now)
            && anchor_allows(self.anchor.as_ref(), now)
    }
}

/// Every row the delegation checks read, as read: [`load_delegation`] fetches them and
/// [`evaluate_delegation`] decides on them, so the STS can keep the rows of a granted
/// delegation and decide the next request on them without reading again. Nothing here is a
/// decision: liveness is judged against the clock at evaluation.
#[derive(Debug, Clone)]
pub struct DelegationRows {
    /// The named edge, when it exists.
    pub edge: Option<DelegationEdge>,
    /// The edge's source Session.
    pub source: Option<AnchoredSession>,
    /// The requested target Session.
    pub target: Option<AnchoredSession>,
    /// The edge's ancestors, nearest first, as far as they could be read (the walk stops at
    /// a missing edge, a repeated edge or past the hop maximum).
    pub ancestors: Vec<DelegationEdge>,
    /// The zone's graph epoch when read.
    pub epoch: i64,
}

async fn anchored(
    uow: &mut Box<dyn UnitOfWork>,
    zone: &ZoneId,
    session_id: &str,
) -> Result<Option<AnchoredSession>, Error> {
    let Some(session) = uow.get_agent_session(zone, session_id).await? else {
        return Ok(None);
    };
    let anchor = uow
        .get_authority_record(zone, &session.subject_session_id)
        .await?;
    Ok(Some(AnchoredSession { session, anchor }))
}

/// Reads what [`evaluate_delegation`] needs for `edge_id` towards `agent_session_id`.
pub async fn load_delegation(
    uow: &mut Box<dyn UnitOfWork>,
    zone: &ZoneId,
    edge_id: &str,
    agent_session_id: &str,
) -> Result<DelegationRows, Error> {
    let mut rows = DelegationRows {
        edge: uow.get_delegation_edge(zone, edge_id).await?,
        source: None,
        target: None,
        ancestors: Vec::new(),
        epoch: 0,
    };
    let Some(edge) = &rows.edge else {
        return Ok(rows);
    };
    rows.source = anchored(uow, zone, &edge.source_session_id).await?;
    rows.target = anchored(uow, zone, agent_session_id).await?;
    let mut seen = vec![edge.id.clone()];
    let mut cursor = edge.parent_edge_id.clone();
    while let Some(parent_id) = cursor {
        if rows.ancestors.len() + 1 >= MAX_HOPS as usize {
            break;
        }
        let Some(parent) = uow.get_delegation_edge(zone, &parent_id).await? else {
            break;
        };
        let repeated = seen.contains(&parent.id);
        seen.push(parent.id.clone());
        cursor = parent.parent_edge_id.clone();
        rows.ancestors.push(parent);
        if repeated {
            break;
        }
    }
    rows.epoch = uow.delegation_graph_epoch(zone).await?;
    Ok(rows)
}

/// The twelve delegation checks of §3.6, in order, reading from the store.
pub async fn check_delegation(
    uow: &mut Box<dyn UnitOfWork>,
    zone: &ZoneId,
    request: &DelegationRequest<'_>,
    now: Timestamp,
) -> Result<Delegation, Error> {
    if request.agent_session_id.is_empty() {
        return Err(denied("delegation requires a target Session"));
    }
    let rows = load_delegation(uow, zone, request.edge_id, request.agent_session_id).await?;
    evaluate_delegation(&rows, zone, request, now)
}

/// The twelve delegation checks of §3.6, in order, on rows already read.
pub fn evaluate_delegation(
    rows: &DelegationRows,
    zone: &ZoneId,
    request: &DelegationRequest<'_>,
    now: Timestamp,
) -> Result<Delegation, Error> {
    let DelegationRequest {
        edge_id,
        agent_session_id,
        caller,
        requested_scopes,
        ttl_seconds,
    } = *request;
    if agent_session_id.is_empty() {
        return Err(denied("delegation requires a target Session"));
    }
    let edge = match &rows.edge {
        Some(edge) if edge.id == edge_id && edge.is_live(now) => edge.clone(),
        _ => return Err(denied("delegation edge inactive or expired")),
    };
    if edge.target_session_id != agent_session_id {
        return Err(denied("delegation edge target mismatch"));
    }
    let source = match &rows.source {
        Some(s) if s.session.id == edge.source_session_id && s.active(zone, now) => {
            s.session.clone()
        }
        _ => return Err(denied("delegation source inactive or expired")),
    };
    let target = match &rows.target {
        Some(s)
            if s.session.id == agent_session_id
                && s.active(zone, now)
                && s.session.application_id == caller =>
        {
            s.session.clone()
        }
        _ => return Err(denied("delegation target inactive or unauthorized")),
    };
    if source.application_id != edge.issuer_application_id
        || target.application_id != edge.receiver_application_id
    {
        return Err(denied("delegation application mismatch"));
    }
    let Some(constraints) = Constraints::decode(&edge.constraints_json) else {
        return Err(denied("delegation constraints invalid"));
    };
    if !requested_scopes.iter().all(|s| edge.scopes.contains(s)) {
        return Err(denied("requested scopes exceed delegation scopes"));
    }
    if let (Some(asked), Some(limit)) = (ttl_seconds, constraints.ttl_seconds) {
        if asked > limit {
            return Err(denied("requested ttl exceeds delegation ttl"));
        }
    }
    let max_hops = constraints.max_hops.unwrap_or(1);
    if max_hops > MAX_HOPS {
        return Err(denied("delegation hop limit exceeds platform maximum"));
    }

    if let Some(budget) = constraints.budget {
        if requested_scopes.len() as i64 > budget {
            return Err(denied("requested scopes exceed delegation budget"));
        }
    }

    // Walk to the root through live edges (at most the platform's hop maximum). Each edge's
    // `max_hops` is the allowance for the path from it down to the requested edge: the
    // Coordinator gives every re-delegated edge at most its parent's allowance minus one, so
    // an edge with `max_hops` n may have at most n − 1 edges below it.
    let mut path_edges = vec![edge.clone()];
    let mut cursor = edge.parent_edge_id.clone();
    let mut ancestors = rows.ancestors.iter();
    while let Some(parent_id) = cursor {
        if path_edges.len() as i64 >= MAX_HOPS {
            return Err(denied("delegation path invalid"));
        }
        let parent = match ancestors.next() {
            Some(p) if p.id == parent_id && p.is_live(now) => p.clone(),
            _ => return Err(denied("delegation path invalid")),
        };
        if path_edges.iter().any(|e| e.id == parent.id) {
            return Err(denied("delegation path invalid"));
        }
        let below = path_edges.len() as i64;
        let allowance = match Constraints::decode(&parent.constraints_json) {
            Some(c) => c.max_hops.unwrap_or(1),
            None => return Err(denied("delegation path invalid")),
        };
        if allowance <= below {
            return Err(denied("delegation path invalid"));
        }
        cursor = parent.parent_edge_id.clone();
        path_edges.push(parent);
    }
    path_edges.reverse();
    let epoch = rows.epoch;

    let mut chain = Vec::with_capacity(path_edges.len() + 1);
    for (i, e) in path_edges.iter().enumerate() {
        if !e.is_live(now) {
            return Err(denied("delegation path invalid"));
        }
        if i > 0 && path_edges[i - 1].receiver_application_id != e.issuer_application_id {
            return Err(denied("delegation chain discontinuous"));
        }
        chain.push(Hop {
            application_id: e.issuer_application_id.clone(),
            agent_session_id: Some(e.source_session_id.clone()),
            delegation_edge_id: Some(e.id.clone()),
        });
    }
    chain.push(Hop {
        application_id: edge.receiver_application_id.clone(),
        agent_session_id: Some(edge.target_session_id.clone()),
        delegation_edge_id: None,
    });
    // Upstream compares the first hop with the *immediate* edge's source (a multi-hop chain
    // across distinct applications therefore fails; kept for wire compatibility).
    let first_ok = chain
        .first()
        .is_some_and(|h| h.application_id == source.application_id);
    let last_ok = chain
        .last()
        .is_some_and(|h| h.application_id == target.application_id);
    if !first_ok || !last_ok {
        return Err(denied("delegation chain endpoints mismatch"));
    }
    let path = path_edges.iter().map(|e| e.id.clone()).collect();
    Ok(Delegation {
        edge,
        constraints,
        path,
        chain,
        epoch,
        source,
        target,
    })
}

/// §3.8 delegation clamp: the lifetime is lowered to the edge's remaining life, the
/// constraint `ttl_seconds` and the constraint `expires_at`.
pub fn clamp_ttl(ttl: i64, delegation: &Delegation, now: Timestamp) -> Result<i64, Error> {
    let edge_left = (delegation.edge.expires_at.unix_micros() - now.unix_micros()) / 1_000_000;
    if edge_left <= 0 {
        return Err(denied("delegation edge inactive or expired"));
    }
    let mut ttl = ttl.min(edge_left);
    if let Some(limit) = delegation.constraints.ttl_seconds {
        ttl = ttl.min(limit);
    }
    if let Some(text) = &delegation.constraints.expires_at {
        let Some(at) = chrono::DateTime::parse_from_rfc3339(text).ok() else {
            return Err(denied("delegation constraint expiry invalid"));
        };
        let left = at.timestamp_micros().saturating_sub(now.unix_micros()) / 1_000_000;
        if left <= 0 {
            return Err(denied("delegation constraint expired"));
        }
        ttl = ttl.min(left);
    }
    if ttl <= 0 {
        return Err(denied("effective delegation ttl expired"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> Option<Constraints> {
        Constraints::decode(v.as_object().expect("object"))
    }

    #[test]
    fn constraints_decode_strictly() {
        let c = decode(
            json!({"resources":["r"],"ttl_seconds":60,"max_depth":2,"policy_approved":true,
            "expires_at":"2030-01-01T00:00:00Z","broad_reason":"x"}),
        )
        .expect("valid");
        assert_eq!(c.max_hops, Some(2));
        assert_eq!(c.resources, vec!["r"]);
        assert_eq!(decode(json!({"budget":2})).expect("budget").budget, Some(2));
        assert!(
            decode(json!({"budget":0})).is_none(),
            "a budget allows one scope at least"
        );
        assert!(decode(json!({"ttl_seconds":-1})).is_none());
        assert!(decode(json!({"max_hops":2,"max_depth":3})).is_none());
        assert!(decode(json!({"resources":"r"})).is_none());
        assert!(decode(json!({"policy_approved":"yes"})).is_none());
        assert_eq!(decode(json!({})), Some(Constraints::default()));
    }
}
