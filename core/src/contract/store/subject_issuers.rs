//! Subject issuers (`spec/api.md §3.10`): the round trip, zone isolation, active-only lists and
//! lookups, the active count behind the per-zone limit, and one active row per `(zone, issuer)`.

use super::*;

fn issuer(run: &Run, zone: &ZoneId, iss: &str, at: Timestamp) -> SubjectIssuer {
    SubjectIssuer {
        id: run.id("si", SubjectIssuerId::parse),
        zone_id: zone.clone(),
        issuer: iss.into(),
        jwks_url: format!("{iss}/.well-known/jwks.json"),
        audience: "caracal-contract".into(),
        attr: attr(at),
        archived_at: None,
    }
}

/// Every case of the subject-issuer repository, in order.
pub(super) async fn subject_issuers(store: &dyn Store, run: &Run) {
    round_trip_and_isolation(store, run).await;
    lists_lookups_and_count(store, run).await;
    one_active_issuer_per_zone(store, run).await;
}

/// A save is an upsert that keeps every field (microsecond instants included); a get names its
/// zone, so a foreign id reads as missing, and a zone-scoped unit sees only its zone.
async fn round_trip_and_isolation(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let mut row = issuer(run, &z.id, "https://idp.example/round-trip", run.at(1));
    row.attr.created_via_operator = true;
    let foreign = issuer(run, &other.id, "https://idp.example/foreign", run.at(1));

    let mut uow = begin_all(store).await;
    ok(uow.save_subject_issuer(&row).await, "save_subject_issuer");
    ok(
        uow.save_subject_issuer(&foreign).await,
        "save_subject_issuer",
    );
    commit(uow, "subject issuer fixtures").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_subject_issuer(&z.id, &row.id).await, "get"),
        Some(row.clone()),
        "a saved issuer reads back field for field"
    );
    assert_eq!(
        ok(uow.get_subject_issuer(&other.id, &row.id).await, "get"),
        None,
        "an issuer read through another zone is missing"
    );
    let mut changed = row.clone();
    changed.jwks_url = "https://keys.example/rotated.json".into();
    changed.audience = "another-audience".into();
    changed.attr.touch("admin:other", false, run.at(5));
    changed.archived_at = Some(run.at(6));
    ok(uow.save_subject_issuer(&changed).await, "upsert");
    commit(uow, "subject issuer upsert").await;

    let mut uow = begin(store, &ZoneScope::Zone(z.id.clone())).await;
    assert_eq!(
        ok(uow.get_subject_issuer(&z.id, &row.id).await, "get"),
        Some(changed),
        "a second save replaces the row, archived_at included"
    );
    assert_eq!(
        ok(uow.get_subject_issuer(&other.id, &foreign.id).await, "get"),
        None,
        "a zone-scoped unit of work cannot read another zone's issuer"
    );
    assert_eq!(
        ok(
            uow.find_subject_issuer(&other.id, &foreign.issuer).await,
            "find"
        ),
        None,
        "nor find it by issuer"
    );
    assert_eq!(
        ok(uow.count_active_subject_issuers(&other.id).await, "count"),
        0,
        "nor count it"
    );
    assert!(
        ok(
            uow.list_subject_issuers(&other.id, &page(500)).await,
            "list"
        )
        .is_empty(),
        "nor list it"
    );
    assert!(
        uow.save_subject_issuer(&issuer(run, &other.id, "https://idp.example/x", run.at(7)))
            .await
            .is_err(),
        "a zone-scoped unit of work cannot write into another zone"
    );
}

/// Lists hold active issuers only, keyset-paginated; the issuer lookup is exact and ignores
/// archived rows; the count is of active rows.
async fn lists_lookups_and_count(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let mut active = Vec::new();
    let mut archived = Vec::new();
    for (i, at) in instants(run, 7).into_iter().enumerate() {
        let mut row = issuer(run, &z.id, &format!("https://idp.example/list/{i}"), at);
        if i % 3 == 0 {
            row.archived_at = Some(run.at(40));
            archived.push(row);
        } else {
            active.push(row);
        }
    }
    let mut uow = begin_all(store).await;
    for row in active.iter().chain(&archived) {
        ok(uow.save_subject_issuer(row).await, "save_subject_issuer");
    }
    commit(uow, "subject issuer list fixtures").await;

    let key = |i: &SubjectIssuer| (i.attr.created_at, i.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_subject_issuers",
        sorted_keys(active.iter().map(key).collect()),
        |p| uow.list_subject_issuers(&z.id, &p),
        key
    );
    assert_eq!(
        ok(uow.count_active_subject_issuers(&z.id).await, "count"),
        active.len() as u64,
        "archived issuers do not count toward the limit"
    );
    let live = &active[0];
    assert_eq!(
        ok(uow.find_subject_issuer(&z.id, &live.issuer).await, "find"),
        Some(live.clone()),
        "the lookup finds the active issuer by its exact string"
    );
    for near in [
        live.issuer.to_uppercase(),
        format!("{}/", live.issuer),
        format!(" {}", live.issuer),
    ] {
        assert_eq!(
            ok(uow.find_subject_issuer(&z.id, &near).await, "find"),
            None,
            "{near:?} is another issuer: the match is byte for byte"
        );
    }
    assert_eq!(
        ok(
            uow.find_subject_issuer(&z.id, &archived[0].issuer).await,
            "find"
        ),
        None,
        "an archived issuer is not found"
    );
}

/// A second active row for the same `(zone, issuer)` is refused with the rule's name and
/// changes nothing; archived namesakes and other zones do not clash.
async fn one_active_issuer_per_zone(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let iss = "https://idp.example/unique";
    let mut old = issuer(run, &z.id, iss, run.at(1));
    old.archived_at = Some(run.at(2));
    let current = issuer(run, &z.id, iss, run.at(3));
    let elsewhere = issuer(run, &other.id, iss, run.at(3));

    let mut uow = begin_all(store).await;
    ok(uow.save_subject_issuer(&old).await, "archived namesake");
    ok(uow.save_subject_issuer(&current).await, "active issuer");
    ok(
        uow.save_subject_issuer(&elsewhere).await,
        "same issuer, other zone",
    );
    let twin = issuer(run, &z.id, iss, run.at(4));
    assert_conflict(
        uow.save_subject_issuer(&twin).await,
        "subject_issuers_active_issuer",
        "same issuer twice in one zone",
    );
    let later = issuer(run, &z.id, "https://idp.example/after-conflict", run.at(5));
    ok(
        uow.save_subject_issuer(&later).await,
        "the unit of work stays usable after a conflict",
    );
    commit(uow, "subject issuer uniqueness").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_subject_issuer(&z.id, &twin.id).await, "get"),
        None,
        "the refused row was not written"
    );
    assert_eq!(
        ok(uow.find_subject_issuer(&z.id, iss).await, "find"),
        Some(current),
        "the active issuer is the one that was saved first"
    );
    assert_eq!(
        ok(uow.get_subject_issuer(&z.id, &later.id).await, "get"),
        Some(later),
        "writes after the conflict committed"
    );
}
