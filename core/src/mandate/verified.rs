//! Mandates whose signature a service verified a moment ago.
//!
//! An SDK presents the same lifecycle mandate on every Coordinator call, and checking its ES256
//! signature again each time was the largest single CPU cost of a Session create or close. A
//! [`VerifiedMandates`] remembers the claims of a token that verified, keyed by the token's exact
//! text, for at most [`VERIFIED_TTL_SECONDS`] and never past the instant the token stops
//! verifying (`exp` plus the leeway). Within that window a lookup answers exactly what
//! verification would: every other check of the signature and the registered claims does not
//! depend on the time, and `nbf`/`iat` only become easier to meet. A key retired from the zone's
//! key set stops verifying new tokens at once and cached ones within the window, which is shorter
//! than the verification-key cache in front of it.
//!
//! Only tokens that verified are kept; a refusal is always decided afresh.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::mandate::claims::MandateClaims;

/// Longest a verified token is taken on trust, in seconds.
pub const VERIFIED_TTL_SECONDS: i64 = 5;

/// Tokens kept at most (each holds its text and claims, about 2 KiB).
pub const VERIFIED_MAX: usize = 1024;

/// What a verification answered for each recent token (see the module documentation).
#[derive(Debug, Default)]
pub struct VerifiedMandates {
    entries: Mutex<HashMap<String, Kept>>,
}

#[derive(Debug, Clone)]
struct Kept {
    claims: MandateClaims,
    /// First second at which the entry no longer answers.
    until: i64,
}

impl VerifiedMandates {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The claims `token` verified to, if it did within the window and still would at `now`
    /// (unix seconds).
    pub fn get(&self, token: &str, now: i64) -> Option<MandateClaims> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(token)
            .filter(|kept| now < kept.until)
            .map(|kept| kept.claims.clone())
    }

    /// Remembers that `token` verified at `now` to `claims`, under `leeway` seconds of clock
    /// skew on `exp`. When full, expired entries go first, then everything (the cache only
    /// saves work; forgetting is always safe).
    pub fn keep(&self, token: &str, claims: &MandateClaims, now: i64, leeway: i64) {
        let until = claims
            .exp
            .saturating_add(leeway.max(0))
            .min(now.saturating_add(VERIFIED_TTL_SECONDS));
        if until <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_MAX && !entries.contains_key(token) {
            entries.retain(|_, kept| now < kept.until);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(
            token.to_owned(),
            Kept {
                claims: claims.clone(),
                until,
            },
        );
    }

    /// How many tokens are kept (tests).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> MandateClaims {
        serde_json::from_value(serde_json::json!({
            "iss": "https://sts.example",
            "sub": "app",
            "aud": "https://sts.example",
            "exp": exp,
            "iat": 0,
            "jti": "j",
            "zone_id": "z",
            "client_id": "app",
            "scope": "agent:lifecycle",
            "use": "session",
            "sub_type": "application",
            "sid": "s",
            "root_sid": "s",
        }))
        .expect("claims")
    }

    #[test]
    fn answers_within_the_window_and_never_past_expiry() {
        let cache = VerifiedMandates::new();
        // Expires long after the window: the window bounds it.
        cache.keep("long", &claims(10_000), 100, 60);
        assert!(cache.get("long", 100).is_some());
        assert!(cache.get("long", 100 + VERIFIED_TTL_SECONDS - 1).is_some());
        assert!(cache.get("long", 100 + VERIFIED_TTL_SECONDS).is_none());
        // Stops verifying (exp + leeway) inside the window: that bounds it.
        cache.keep("short", &claims(40), 100, 62);
        assert!(cache.get("short", 101).is_some());
        assert!(cache.get("short", 102).is_none());
        // Already past: not kept at all.
        cache.keep("gone", &claims(10), 100, 60);
        assert!(cache.get("gone", 100).is_none());
        assert!(cache.get("unknown", 100).is_none());
    }

    #[test]
    fn stays_bounded() {
        let cache = VerifiedMandates::new();
        for i in 0..(VERIFIED_MAX + 10) {
            cache.keep(&format!("t{i}"), &claims(10_000), 100, 60);
        }
        assert!(cache.len() <= VERIFIED_MAX);
        assert!(
            cache.get(&format!("t{}", VERIFIED_MAX + 9), 100).is_some(),
            "the newest is kept"
        );
    }
}
