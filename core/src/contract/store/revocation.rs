//! The Gateway's revocation snapshot (`spec/coordinator-gateway.md` B6):
//! `AgentGraphRepo::revoked_anchors`.
//!
//! The snapshot has no upper bound and sees every zone the unit's scope allows, so the case
//! works after an instant no real row reaches (1 January 2990) and reads the snapshot once
//! before seeding: what a previous run left there is expected again, and nothing else. A unit
//! scoped to one of the case's fresh zones sees exactly that zone's ids.

use super::*;

/// The case's `since`: 2990-01-01T00:00:00Z.
fn window_since() -> Timestamp {
    Timestamp::from_unix_micros(32_188_147_200 * 1_000_000)
}

/// `micros` after (or, negative, before) `since`.
fn off(since: Timestamp, micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(since.unix_micros() + micros)
}

const HOUR: i64 = 3_600 * 1_000_000;
const DAY: i64 = 24 * HOUR;

/// The ids one zone contributes to the snapshot.
#[derive(Default)]
struct Expected {
    records: Vec<String>,
    sessions: Vec<String>,
    edges: Vec<String>,
}

/// `anchors` with every list sorted, so lists compare whatever order the adapter returns.
fn sorted(mut anchors: RevokedAnchors) -> RevokedAnchors {
    anchors.records.sort();
    anchors.sessions.sort();
    anchors.edges.sort();
    anchors
}

/// Seeds one zone with rows of every relevant status and instant around `since`, committed by
/// a global unit, and returns the ids the snapshot must list.
async fn seed_zone(store: &dyn Store, run: &Run, zone: &ZoneId, since: Timestamp) -> Expected {
    let created = off(since, -30 * DAY);
    let mut expected = Expected::default();
    let mut uow = begin_all(store).await;

    // Authority records: revoked and expiring after `since` count, whenever they were revoked.
    let record = |status: RecordStatus, expires_at: Timestamp, revoked_at: Option<Timestamp>| {
        let mut r = authority_record(run, zone, None, created);
        r.status = status;
        r.expires_at = expires_at;
        r.revoked_at = revoked_at;
        r.revoked_reason = revoked_at.map(|_| "session_revoked".to_owned());
        r
    };
    let records = [
        // Revoked within the window, still unexpired.
        (
            record(
                RecordStatus::Revoked,
                off(since, HOUR),
                Some(off(since, 10 * 60 * 1_000_000)),
            ),
            true,
        ),
        // Revoked before `since` but expiring one microsecond after it: still listed.
        (
            record(
                RecordStatus::Revoked,
                off(since, 1),
                Some(off(since, -2 * DAY)),
            ),
            true,
        ),
        // Revoked, but expired exactly at `since` (the bound is strict).
        (
            record(RecordStatus::Revoked, since, Some(off(since, -HOUR))),
            false,
        ),
        // Revoked and expired long ago.
        (
            record(
                RecordStatus::Revoked,
                off(since, -2 * DAY),
                Some(off(since, -3 * DAY)),
            ),
            false,
        ),
        // Active, live well past `since`.
        (record(RecordStatus::Active, off(since, HOUR), None), false),
        // Active and expired.
        (record(RecordStatus::Active, off(since, -DAY), None), false),
    ];
    for (r, listed) in &records {
        ok(uow.save_authority_record(r).await, "save_authority_record");
        if *listed {
            expected.records.push(r.id.clone());
        }
    }

    // Sessions: `terminated` with `updated_at` after `since` count; no other status does.
    let session = |status: &str, updated_at: Timestamp, service: bool| {
        let mut s = agent_session(run, zone, created);
        if service {
            s.lifecycle = Lifecycle::Service;
            s.last_heartbeat_at = Some(created);
            s.heartbeat_deadline_at = Some(off(created, 120 * 1_000_000));
            s.lease_generation = 1;
        }
        s.status = status.into();
        if status == "terminated" || status == "expired" {
            s.ended_at = Some(updated_at);
            s.status_reason = Some(format!("{status} by the contract"));
        }
        s.updated_at = updated_at;
        s
    };
    let sessions = [
        // Terminated just after `since`.
        (session("terminated", off(since, 1), false), true),
        // A service Session terminated within the window.
        (session("terminated", off(since, 5 * HOUR), true), true),
        // Terminated exactly at `since` (strict bound).
        (session("terminated", since, false), false),
        // Terminated long ago.
        (session("terminated", off(since, -2 * DAY), false), false),
        // Ended by expiry within the window: not a revocation.
        (session("expired", off(since, 1), false), false),
        // Suspended within the window: not a revocation.
        (session("suspended", off(since, HOUR), true), false),
        // Active, touched within the window.
        (session("active", off(since, HOUR), false), false),
    ];
    for (s, listed) in &sessions {
        ok(uow.save_agent_session(s).await, "save_agent_session");
        if *listed {
            expected.sessions.push(s.id.clone());
        }
    }

    // Edges: `revoked` with `revoked_at` after `since` count.
    let edge = |status: &str, expires_at: Timestamp, revoked_at: Option<Timestamp>| {
        let mut e = delegation_edge(run, zone, created);
        e.status = status.into();
        e.expires_at = expires_at;
        e.revoked_at = revoked_at;
        e
    };
    let edges = [
        // Revoked just after `since`, expiry long gone: the revocation instant is what counts.
        (edge("revoked", off(since, -DAY), Some(off(since, 1))), true),
        // Revoked within the window.
        (
            edge("revoked", off(since, DAY), Some(off(since, 2 * HOUR))),
            true,
        ),
        // Revoked exactly at `since` (strict bound).
        (edge("revoked", off(since, DAY), Some(since)), false),
        // Revoked before `since`, though unexpired.
        (
            edge("revoked", off(since, DAY), Some(off(since, -HOUR))),
            false,
        ),
        // Active and unexpired.
        (edge("active", off(since, DAY), None), false),
        // Expired within the window: not a revocation.
        (edge("expired", off(since, 1), None), false),
        // Status `expired` with a revocation instant in the window: the status decides.
        (edge("expired", off(since, 1), Some(off(since, 1))), false),
    ];
    for (e, listed) in &edges {
        ok(uow.save_delegation_edge(e).await, "save_delegation_edge");
        if *listed {
            expected.edges.push(e.id.clone());
        }
    }

    commit(uow, "revocation snapshot fixtures").await;
    expected
}

/// `revoked_anchors`: revoked authority records not expired by `since`, Sessions terminated
/// after `since` (not expired or suspended ones) and edges revoked after `since`, every zone of
/// a global unit, only its zone for a zone-scoped unit, each id once.
pub(super) async fn revoked_anchors(store: &dyn Store, run: &Run) {
    let since = window_since();
    let mut uow = begin_all(store).await;
    let before = ok(
        uow.revoked_anchors(since).await,
        "revoked_anchors before seeding",
    );
    drop(uow);

    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let mine = seed_zone(store, run, &z.id, since).await;
    let theirs = seed_zone(store, run, &other.id, since).await;

    let zone_only = |e: &Expected| {
        sorted(RevokedAnchors {
            records: e.records.clone(),
            sessions: e.sessions.clone(),
            edges: e.edges.clone(),
        })
    };
    let mut all = before.clone();
    for e in [&mine, &theirs] {
        all.records.extend(e.records.iter().cloned());
        all.sessions.extend(e.sessions.iter().cloned());
        all.edges.extend(e.edges.iter().cloned());
    }

    let mut uow = begin_all(store).await;
    let got = ok(uow.revoked_anchors(since).await, "revoked_anchors");
    assert_eq!(
        sorted(got),
        sorted(all),
        "a global unit lists, across zones and once each, revoked records unexpired at `since`, \
         Sessions terminated after it and edges revoked after it (and what the window already \
         held)"
    );
    let seeded: BTreeSet<&String> = [&mine, &theirs]
        .into_iter()
        .flat_map(|e| e.records.iter().chain(&e.sessions).chain(&e.edges))
        .collect();
    let later = ok(
        uow.revoked_anchors(off(since, 3 * DAY)).await,
        "revoked_anchors later",
    );
    let still: Vec<&String> = later
        .records
        .iter()
        .chain(&later.sessions)
        .chain(&later.edges)
        .filter(|id| seeded.contains(id))
        .collect();
    assert!(
        still.is_empty(),
        "a later `since` leaves out every revocation the case put before it, got {still:?}"
    );
    drop(uow);

    for (zone, expected) in [(&z.id, &mine), (&other.id, &theirs)] {
        let mut scoped = begin(store, &ZoneScope::Zone(zone.clone())).await;
        let got = ok(
            scoped.revoked_anchors(since).await,
            "revoked_anchors in a zone-scoped unit",
        );
        assert_eq!(
            sorted(got),
            zone_only(expected),
            "a zone-scoped unit lists its own zone's revocations only"
        );
    }
}
