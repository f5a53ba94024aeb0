//! Approval holds (`spec/sts.md §8`): the round trip of every field, reads by id across zones
//! (the id is a capability) but never across a unit's zone scope, the request-key lookup
//! issuance converges on, deletes, the operator list's keyset order, and rollback on drop.

use crate::approval::{ApprovalHold, ApproverClass, PrivacyMode, HUMAN_APPROVAL};

use super::*;

/// A pending hold with every optional field empty.
fn hold(run: &Run, zone: &ZoneId, at: Timestamp) -> ApprovalHold {
    ApprovalHold {
        id: run.text("hold"),
        zone_id: zone.clone(),
        session_id: run.text("ar"),
        principal_id: run.text("principal"),
        application_id: None,
        approval_type: HUMAN_APPROVAL.into(),
        tier: "high".into(),
        approver_class: ApproverClass::Operator,
        privacy_mode: PrivacyMode::Identified,
        subject_anchor: None,
        binding: format!("{:064x}", run.counter.fetch_add(1, Ordering::Relaxed)),
        metadata_json: Map::new(),
        decision_reason: None,
        created_at: at,
        expires_at: at.plus_millis(900_000),
        satisfied_at: None,
        rejected_at: None,
        consumed_at: None,
        approver_subject_id: None,
        approver_session_id: None,
        consumed_authority_record_id: None,
    }
}

/// Every case of the approval repository, in order.
pub(super) async fn approvals(store: &dyn Store, run: &Run) {
    round_trip_and_zone_scope(store, run).await;
    find_by_request_key_oldest_first(store, run).await;
    deletes(store, run).await;
    lists_page_newest_first(store, run).await;
    approval_writes_roll_back_on_drop(store, run).await;
}

/// A save is an upsert keeping every field (microsecond instants, JSON metadata, every class
/// and privacy spelling); a get by id finds a hold in any zone under `ZoneScope::All`, but a
/// zone-scoped unit neither reads nor writes another zone's holds.
async fn round_trip_and_zone_scope(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let bare = hold(run, &z.id, run.at(1));
    let mut full = hold(run, &z.id, run.at(2));
    full.application_id = Some(run.text("app"));
    full.tier = "critical,high".into();
    full.approver_class = ApproverClass::Any;
    full.privacy_mode = PrivacyMode::Pseudonymous;
    full.subject_anchor = Some("user@example.com".into());
    full.metadata_json = json!({
        "requested_scopes": ["read", "write"],
        "resources": ["resource://billing"],
        "agent_labels": {"team": "ops"},
        "policy_set_version_id": "psv-1",
        "decision_contract_version": 3,
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    let mut foreign = hold(run, &other.id, run.at(3));
    foreign.approver_class = ApproverClass::Subject;
    foreign.privacy_mode = PrivacyMode::Anonymous;

    let mut uow = begin_all(store).await;
    for h in [&bare, &full, &foreign] {
        ok(uow.save_approval(h).await, "save_approval");
    }
    commit(uow, "approval fixtures").await;

    let mut uow = begin_all(store).await;
    for h in [&bare, &full, &foreign] {
        assert_eq!(
            ok(uow.get_approval(&h.id).await, "get_approval"),
            Some(h.clone()),
            "a saved hold reads back field for field, found by id in any zone"
        );
    }
    assert_eq!(
        ok(uow.get_approval(&run.text("missing")).await, "get_approval"),
        None,
        "an unknown id is missing"
    );
    let mut decided = full.clone();
    decided.satisfied_at = Some(run.at(4));
    decided.rejected_at = Some(run.at(5));
    decided.consumed_at = Some(run.at(6));
    decided.decision_reason = Some("looks right".into());
    decided.approver_subject_id = Some("admin:tok-1".into());
    decided.approver_session_id = Some(run.text("ar"));
    decided.consumed_authority_record_id = Some(run.text("ar"));
    decided.expires_at = run.at(7);
    ok(uow.save_approval(&decided).await, "upsert");
    commit(uow, "approval upsert").await;

    let mut uow = begin(store, &ZoneScope::Zone(z.id.clone())).await;
    assert_eq!(
        ok(uow.get_approval(&full.id).await, "get_approval"),
        Some(decided.clone()),
        "the upsert replaced every field"
    );
    assert_eq!(
        ok(uow.get_approval(&foreign.id).await, "get_approval"),
        None,
        "a zone-scoped unit does not see another zone's hold, even by id"
    );
    assert!(
        uow.save_approval(&hold(run, &other.id, run.at(8)))
            .await
            .is_err(),
        "a zone-scoped unit cannot write a hold into another zone"
    );
    let mut stolen = foreign.clone();
    stolen.satisfied_at = Some(run.at(9));
    assert!(
        uow.save_approval(&stolen).await.is_err(),
        "nor decide another zone's hold"
    );
    drop(uow);

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_approval(&foreign.id).await, "get_approval"),
        Some(foreign),
        "the refused write changed nothing"
    );
}

/// Issuance looks holds up by `(zone, principal, authority record, binding)`: every state,
/// oldest first (ties by id), and nothing that differs in one part of the key.
async fn find_by_request_key_oldest_first(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let base = hold(run, &z.id, run.at(30));
    let same_key = |id: String, at: Timestamp| ApprovalHold {
        id,
        created_at: at,
        expires_at: at.plus_millis(60_000),
        ..base.clone()
    };
    let mut expected = vec![
        same_key(format!("{}-b", run.text("hold")), run.at(10)),
        same_key(format!("{}-a", run.text("hold")), run.at(20)),
        same_key(format!("{}-c", run.text("hold")), run.at(20)),
        base.clone(),
    ];
    expected[0].consumed_at = Some(run.at(11));
    expected[1].rejected_at = Some(run.at(21));
    expected.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let misses = [
        ApprovalHold {
            id: run.text("hold"),
            principal_id: run.text("principal"),
            ..base.clone()
        },
        ApprovalHold {
            id: run.text("hold"),
            session_id: run.text("ar"),
            ..base.clone()
        },
        ApprovalHold {
            id: run.text("hold"),
            binding: format!("{:064x}", u64::MAX),
            ..base.clone()
        },
        ApprovalHold {
            id: run.text("hold"),
            zone_id: other.id.clone(),
            ..base.clone()
        },
    ];

    let mut uow = begin_all(store).await;
    // Saved newest first, so an adapter returning insertion order fails.
    for h in expected.iter().rev().chain(&misses) {
        ok(uow.save_approval(h).await, "save_approval");
    }
    commit(uow, "find fixtures").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.find_approvals(&z.id, &base.principal_id, &base.session_id, &base.binding)
                .await,
            "find_approvals"
        ),
        expected,
        "every hold of the key, any state, oldest first"
    );
    assert!(
        ok(
            uow.find_approvals(
                &z.id,
                &base.principal_id,
                &base.session_id,
                &format!("{:064x}", 7)
            )
            .await,
            "find_approvals"
        )
        .is_empty(),
        "an unknown key finds nothing"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert!(
        ok(
            scoped
                .find_approvals(&z.id, &base.principal_id, &base.session_id, &base.binding)
                .await,
            "find_approvals"
        )
        .is_empty(),
        "a unit scoped to another zone finds none of this zone's holds"
    );
}

/// A delete removes exactly one hold and says whether there was one; a zone-scoped unit cannot
/// delete another zone's hold.
async fn deletes(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let (gone, kept) = (hold(run, &z.id, run.at(1)), hold(run, &z.id, run.at(2)));
    let foreign = hold(run, &other.id, run.at(3));

    let mut uow = begin_all(store).await;
    for h in [&gone, &kept, &foreign] {
        ok(uow.save_approval(h).await, "save_approval");
    }
    commit(uow, "delete fixtures").await;

    let mut uow = begin(store, &ZoneScope::Zone(z.id.clone())).await;
    assert!(
        ok(uow.delete_approval(&gone.id).await, "delete_approval"),
        "deleting a hold reports it"
    );
    assert!(
        !ok(uow.delete_approval(&gone.id).await, "delete_approval"),
        "a repeated delete finds nothing"
    );
    assert!(
        !ok(uow.delete_approval(&foreign.id).await, "delete_approval"),
        "a zone-scoped unit cannot delete another zone's hold"
    );
    assert!(
        !ok(uow.delete_approval(&run.text("missing")).await, "delete"),
        "an unknown id deletes nothing"
    );
    commit(uow, "deletes").await;

    let mut uow = begin_all(store).await;
    assert_eq!(ok(uow.get_approval(&gone.id).await, "get"), None, "deleted");
    assert_eq!(
        ok(uow.get_approval(&kept.id).await, "get"),
        Some(kept),
        "its neighbour stays"
    );
    assert_eq!(
        ok(uow.get_approval(&foreign.id).await, "get"),
        Some(foreign),
        "the other zone's hold stays"
    );
}

/// The operator list: one zone's holds, newest first, keyset paged with ties broken by id.
async fn lists_page_newest_first(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let mut rows: Vec<ApprovalHold> = instants(run, 9)
        .into_iter()
        .map(|at| hold(run, &z.id, at))
        .collect();
    rows[1].satisfied_at = Some(run.at(25));
    rows[2].consumed_at = Some(run.at(26));
    rows[3].expires_at = run.at(27);
    let foreign = hold(run, &other.id, run.at(20));

    let mut uow = begin_all(store).await;
    for h in rows.iter().chain([&foreign]) {
        ok(uow.save_approval(h).await, "save_approval");
    }
    commit(uow, "list fixtures").await;

    let key = |h: &ApprovalHold| (h.created_at, h.id.clone());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_approvals",
        sorted_keys(rows.iter().map(key).collect()),
        |p| uow.list_approvals(&z.id, &p),
        key
    );
    let first = ok(uow.list_approvals(&z.id, &page(500)).await, "list");
    assert_eq!(
        first.iter().find(|h| h.id == rows[1].id),
        Some(&rows[1]),
        "listed holds carry every field"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert!(
        ok(scoped.list_approvals(&z.id, &page(500)).await, "list").is_empty(),
        "a unit scoped to another zone lists none of this zone's holds"
    );
    assert_eq!(
        ok(scoped.list_approvals(&other.id, &page(500)).await, "list"),
        vec![foreign],
        "its own zone's holds only"
    );
}

/// Dropping a unit of work discards its hold writes: an insert, a decision and a delete.
async fn approval_writes_roll_back_on_drop(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let existing = hold(run, &z.id, run.at(1));
    let doomed = hold(run, &z.id, run.at(2));
    let mut uow = begin_all(store).await;
    ok(uow.save_approval(&existing).await, "save_approval");
    commit(uow, "rollback fixture").await;

    let mut uow = begin_all(store).await;
    ok(uow.save_approval(&doomed).await, "save_approval");
    let mut decided = existing.clone();
    decided.satisfied_at = Some(run.at(3));
    decided.approver_subject_id = Some("admin:tok".into());
    ok(uow.save_approval(&decided).await, "decide");
    assert_eq!(
        ok(uow.get_approval(&existing.id).await, "get"),
        Some(decided),
        "a unit reads its own writes"
    );
    drop(uow);

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_approval(&doomed.id).await, "get"),
        None,
        "dropped insert"
    );
    assert_eq!(
        ok(uow.get_approval(&existing.id).await, "get"),
        Some(existing.clone()),
        "dropped decision"
    );
    assert!(ok(uow.delete_approval(&existing.id).await, "delete"));
    drop(uow);

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_approval(&existing.id).await, "get"),
        Some(existing),
        "dropped delete"
    );
}
