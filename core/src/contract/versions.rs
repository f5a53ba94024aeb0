//! The authority-versions contract: a zone starts at 0, every advance moves it forward (none
//! lost when replicas advance at once), and zones never see each other's advances.

use crate::ids::ZoneId;
use crate::ports::AuthorityVersions;

/// Runs every check on zones named after `unique`, so concurrent and repeated runs against one
/// backend never share a counter. Returns the zones it used (a Redis test deletes their keys).
pub async fn run_authority_versions_contract(
    versions: &dyn AuthorityVersions,
    unique: &str,
) -> Vec<ZoneId> {
    let a = ZoneId::parse(&format!("ver-a-{unique}")).expect("zone id");
    let b = ZoneId::parse(&format!("ver-b-{unique}")).expect("zone id");
    assert_eq!(
        current(versions, &a).await,
        0,
        "an unseen zone is at version 0"
    );

    versions.advance(&a).await.expect("advance");
    let first = current(versions, &a).await;
    assert!(first > 0, "an advance moves the version forward");
    assert_eq!(current(versions, &b).await, 0, "zones are independent");

    // Eight advances at once, as eight replicas ending Sessions together would send them.
    let (r1, r2, r3, r4, r5, r6, r7, r8) = tokio::join!(
        versions.advance(&a),
        versions.advance(&a),
        versions.advance(&a),
        versions.advance(&a),
        versions.advance(&a),
        versions.advance(&a),
        versions.advance(&a),
        versions.advance(&a),
    );
    for result in [r1, r2, r3, r4, r5, r6, r7, r8] {
        result.expect("concurrent advance");
    }
    assert_eq!(
        current(versions, &a).await,
        first + 8,
        "no concurrent advance is lost"
    );
    assert_eq!(
        current(versions, &b).await,
        0,
        "zones are still independent"
    );
    vec![a, b]
}

async fn current(versions: &dyn AuthorityVersions, zone: &ZoneId) -> u64 {
    versions
        .current(zone)
        .await
        .unwrap_or_else(|e| panic!("current({zone}) failed: {e}"))
}
