//! The expiring-keys contract: set-if-absent where the first claimant wins (on every replica),
//! later claimants lose until the key expires, and expiry really happens.
//!
//! The expiry case waits on the real clock (about 1.2 s): the port's TTLs are whole seconds,
//! and Redis keeps its own time, so there is no clock to move instead.

use std::time::Duration;

use crate::ports::ExpiringKeys;

/// Runs every check. `unique` keeps concurrent and repeated runs against one backend apart
/// (every key starts with it), so runs never see each other's keys.
pub async fn run_expiring_keys_contract(keys: &dyn ExpiringKeys, unique: &str) {
    let prefix = format!("caracal:contract:exp:{unique}");
    first_claim_wins(keys, &prefix).await;
    keys_are_independent(keys, &prefix).await;
    concurrent_claims_have_one_winner(keys, &prefix).await;
    a_zero_ttl_still_holds_the_key(keys, &prefix).await;
    keys_expire_after_their_ttl(keys, &prefix).await;
}

async fn claim(keys: &dyn ExpiringKeys, key: &str, value: &str, ttl: u64) -> bool {
    keys.set_if_absent(key, value, ttl)
        .await
        .unwrap_or_else(|e| panic!("set_if_absent({key}) failed: {e}"))
}

async fn exists(keys: &dyn ExpiringKeys, key: &str) -> bool {
    keys.exists(key)
        .await
        .unwrap_or_else(|e| panic!("exists({key}) failed: {e}"))
}

async fn first_claim_wins(keys: &dyn ExpiringKeys, prefix: &str) {
    let key = format!("{prefix}:jti");
    assert!(!exists(keys, &key).await, "an unseen key does not exist");
    assert!(claim(keys, &key, "1", 60).await, "the first claim wins");
    assert!(exists(keys, &key).await, "a claimed key exists");
    assert!(
        !claim(keys, &key, "1", 60).await,
        "a second claim of a live key loses"
    );
    assert!(
        !claim(keys, &key, "other", 60).await,
        "a claim with another value loses too"
    );
    assert!(
        exists(keys, &key).await,
        "losing claims leave the key in place"
    );
}

async fn keys_are_independent(keys: &dyn ExpiringKeys, prefix: &str) {
    let a = format!("{prefix}:independent:a");
    let b = format!("{prefix}:independent:b");
    assert!(claim(keys, &a, "1", 60).await, "first claim of a");
    assert!(!exists(keys, &b).await, "claiming a does not create b");
    assert!(claim(keys, &b, "1", 60).await, "b is claimed on its own");
}

async fn concurrent_claims_have_one_winner(keys: &dyn ExpiringKeys, prefix: &str) {
    let key = format!("{prefix}:race");
    let (a, b, c, d) = tokio::join!(
        keys.set_if_absent(&key, "a", 60),
        keys.set_if_absent(&key, "b", 60),
        keys.set_if_absent(&key, "c", 60),
        keys.set_if_absent(&key, "d", 60),
    );
    let winners = [a, b, c, d]
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("concurrent set_if_absent failed: {e}")))
        .filter(|won| *won)
        .count();
    assert_eq!(winners, 1, "exactly one of concurrent claims wins");
}

async fn a_zero_ttl_still_holds_the_key(keys: &dyn ExpiringKeys, prefix: &str) {
    // A TTL of zero must not make a single-use key reusable at once: it counts as one second.
    let key = format!("{prefix}:zero-ttl");
    assert!(
        claim(keys, &key, "1", 0).await,
        "a zero-TTL claim is accepted"
    );
    assert!(exists(keys, &key).await, "a zero-TTL key exists");
    assert!(
        !claim(keys, &key, "1", 0).await,
        "a zero-TTL key is not claimable again at once"
    );
}

async fn keys_expire_after_their_ttl(keys: &dyn ExpiringKeys, prefix: &str) {
    let short = format!("{prefix}:short");
    let long = format!("{prefix}:long");
    assert!(claim(keys, &short, "1", 1).await, "claim with a 1 s TTL");
    assert!(claim(keys, &long, "1", 60).await, "claim with a 60 s TTL");
    assert!(
        exists(keys, &short).await,
        "the short key exists before its TTL"
    );

    tokio::time::sleep(Duration::from_millis(1_200)).await;

    assert!(!exists(keys, &short).await, "a key is gone after its TTL");
    assert!(exists(keys, &long).await, "a key with TTL left survives");
    assert!(
        claim(keys, &short, "2", 1).await,
        "an expired key can be claimed again"
    );
    assert!(
        !claim(keys, &long, "2", 60).await,
        "a live key still cannot be claimed"
    );
}
