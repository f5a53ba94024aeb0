//! The per-zone hash chain (`spec/audit-streams-storage.md §6.3`) and its offline verifier.
//!
//! Each stored event carries `content_sha256` (SHA-256 over its canonical fields), the previous
//! row's hash of the same zone (`prev_content_sha256`), a dense `chain_seq` starting at 1 and
//! `chain_hmac` = HMAC(`AUDIT_HMAC_KEY`, content ‖ "|" ‖ prev). Editing any stored field breaks
//! the row's content hash; deleting or reordering rows breaks the next row's link; forging a
//! whole consistent suffix needs the HMAC key.
//!
//! Retention drops whole partitions (by `occurred_at`, so usually a prefix of each zone's chain,
//! but a late event can leave holes). Before it drops rows, the ledger records every dropped
//! row whose successor survives as an [`Anchor`]; the verifier bridges a gap only through such
//! an anchor: dropping evidence on schedule never reads as tampering, and removing it any
//! other way always does.

use super::event::CanonicalEvent;
use crate::digest::sha256_hex;
use crate::ports::MessageAuthenticator;

const SEPARATOR: u8 = 0x1F;

/// SHA-256 (lowercase hex) of the twelve fields, each followed by 0x1F, then the decimal Unix
/// nanoseconds of `occurred_at` with no separator after it. A NULL JSON field is `null`.
pub fn content_sha256(event: &CanonicalEvent) -> String {
    let json = |text: &Option<String>| text.clone().unwrap_or_else(|| "null".to_string());
    let fields = [
        event.id.clone(),
        event.zone_id.clone(),
        event.event_type.clone(),
        event.request_id.clone(),
        event.decision.clone(),
        event.policy_set_id.clone(),
        event.policy_set_version_id.clone(),
        event.manifest_sha.clone(),
        event.evaluation_status.clone(),
        json(&event.determining_policies_json),
        json(&event.diagnostics_json),
        json(&event.metadata_json),
    ];
    let mut bytes = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum::<usize>() + 20);
    for field in &fields {
        bytes.extend_from_slice(field.as_bytes());
        bytes.push(SEPARATOR);
    }
    let nanos = i128::from(event.occurred_at_micros) * 1000;
    bytes.extend_from_slice(nanos.to_string().as_bytes());
    sha256_hex(&bytes)
}

/// `chain_hmac`: hex HMAC-SHA256(key, content ‖ "|" ‖ prev), `""` without a key.
pub fn chain_hmac(mac: Option<&dyn MessageAuthenticator>, content: &str, prev: &str) -> String {
    match mac {
        Some(mac) => mac.sign_hex(format!("{content}|{prev}").as_bytes()),
        None => String::new(),
    }
}

/// The head of a zone's chain: what the next row links to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainHead {
    /// `chain_seq` of the last row, 0 when the zone has none.
    pub seq: i64,
    /// Its `content_sha256`, `""` when the zone has none.
    pub content_sha256: String,
}

/// The chain columns of a row about to be written after `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `chain_seq` = head + 1.
    pub seq: i64,
    /// The row's content hash.
    pub content_sha256: String,
    /// The head's hash (`None` for the first row of a zone).
    pub prev_content_sha256: Option<String>,
    /// HMAC over both.
    pub chain_hmac: String,
}

impl ChainHead {
    /// Links a row with `content_sha256` after this head and moves the head to it.
    pub fn link(&mut self, content_sha256: &str, mac: Option<&dyn MessageAuthenticator>) -> Link {
        let prev = std::mem::replace(&mut self.content_sha256, content_sha256.to_string());
        self.seq += 1;
        Link {
            seq: self.seq,
            content_sha256: content_sha256.to_string(),
            chain_hmac: chain_hmac(mac, content_sha256, &prev),
            prev_content_sha256: (!prev.is_empty()).then_some(prev),
        }
    }
}

/// One row as stored in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event.
    pub event: CanonicalEvent,
    /// When the ledger committed it (Unix microseconds).
    pub ingested_at_micros: i64,
    /// Stored content hash.
    pub content_sha256: String,
    /// Stored link to the previous row of the zone.
    pub prev_content_sha256: Option<String>,
    /// Stored HMAC (`""` when written without a key).
    pub chain_hmac: String,
    /// Position in the zone's chain, from 1.
    pub chain_seq: i64,
    /// The producer's `sig` as received.
    pub ingest_signature: Option<String>,
}

/// The last link retention removed from a zone: the surviving chain continues from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Zone.
    pub zone_id: String,
    /// `chain_seq` of the last dropped row.
    pub seq: i64,
    /// Its content hash.
    pub content_sha256: String,
}

/// What is wrong with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The stored fields no longer hash to the stored `content_sha256`.
    ContentMismatch,
    /// `prev_content_sha256` is not the previous row's hash.
    PrevMismatch,
    /// `chain_seq` is not the previous row's + 1 (a row is missing or was inserted).
    SeqGap,
    /// `chain_hmac` does not verify under the key (checked only when a key is given).
    HmacMismatch,
}

impl BreakKind {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::ContentMismatch => "content_mismatch",
            BreakKind::PrevMismatch => "prev_mismatch",
            BreakKind::SeqGap => "seq_gap",
            BreakKind::HmacMismatch => "hmac_mismatch",
        }
    }
}

/// The first broken link of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Zone.
    pub zone_id: String,
    /// `chain_seq` of the offending row (for a gap: the row found after the gap).
    pub seq: i64,
    /// Event id of the offending row.
    pub event_id: String,
    /// What broke.
    pub kind: BreakKind,
    /// Expected vs found, for the report.
    pub detail: String,
}

/// Walks one zone's rows in `chain_seq` order and stops at the first broken link. Feed rows
/// with [`ZoneVerifier::check`] in order; it returns the break, if any, and then stays broken.
#[derive(Debug, Clone)]
pub struct ZoneVerifier {
    zone_id: String,
    head: ChainHead,
    anchors: std::collections::BTreeMap<i64, String>,
    checked: u64,
    broken: Option<Break>,
}

impl ZoneVerifier {
    /// A verifier for `zone_id` that accepts a gap before row `n` only where `anchors` (the
    /// links retention removed) hold row `n − 1`.
    pub fn new(zone_id: &str, anchors: &[Anchor]) -> ZoneVerifier {
        ZoneVerifier {
            zone_id: zone_id.to_string(),
            head: ChainHead::default(),
            anchors: anchors
                .iter()
                .filter(|a| a.zone_id == zone_id)
                .map(|a| (a.seq, a.content_sha256.clone()))
                .collect(),
            checked: 0,
            broken: None,
        }
    }

    /// Rows checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The first break found, if any.
    pub fn broken(&self) -> Option<&Break> {
        self.broken.as_ref()
    }

    /// The last verified link.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Checks the next row. Returns the first break (once found, later rows are ignored).
    pub fn check(
        &mut self,
        row: &StoredEvent,
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Option<&Break> {
        if self.broken.is_some() {
            return self.broken.as_ref();
        }
        self.checked += 1;
        let fail = |kind: BreakKind, detail: String| Break {
            zone_id: self.zone_id.clone(),
            seq: row.chain_seq,
            event_id: row.event.id.clone(),
            kind,
            detail,
        };
        // Rows retention dropped right before this one: continue from their recorded link.
        if row.chain_seq != self.head.seq + 1 {
            if let Some(hash) = self.anchors.get(&(row.chain_seq - 1)) {
                self.head = ChainHead {
                    seq: row.chain_seq - 1,
                    content_sha256: hash.clone(),
                };
            }
        }
        let recomputed = content_sha256(&row.event);
        let prev = row.prev_content_sha256.clone().unwrap_or_default();
        let found = if row.event.zone_id != self.zone_id {
            Some(fail(
                BreakKind::ContentMismatch,
                format!("row belongs to zone {}", row.event.zone_id),
            ))
        } else if recomputed != row.content_sha256 {
            Some(fail(
                BreakKind::ContentMismatch,
                format!("stored {} recomputed {}", row.content_sha256, recomputed),
            ))
        } else if row.chain_seq != self.head.seq + 1 {
            Some(fail(
                BreakKind::SeqGap,
                format!(
                    "expected chain_seq {} found {}",
                    self.head.seq + 1,
                    row.chain_seq
                ),
            ))
        } else if prev != self.head.content_sha256 {
            Some(fail(
                BreakKind::PrevMismatch,
                format!(
                    "links to {:?}, previous row is {:?}",
                    prev, self.head.content_sha256
                ),
            ))
        } else if mac.is_some() && chain_hmac(mac, &row.content_sha256, &prev) != row.chain_hmac {
            Some(fail(
                BreakKind::HmacMismatch,
                "chain_hmac does not verify".into(),
            ))
        } else {
            None
        };
        match found {
            Some(b) => {
                self.broken = Some(b);
                self.broken.as_ref()
            }
            None => {
                self.head = ChainHead {
                    seq: row.chain_seq,
                    content_sha256: row.content_sha256.clone(),
                };
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::CanonicalEvent;

    /// HMAC-SHA256 through ring, as the crypto adapter does.
    struct TestMac(ring::hmac::Key);

    impl MessageAuthenticator for TestMac {
        fn sign_hex(&self, message: &[u8]) -> String {
            crate::digest::hex(ring::hmac::sign(&self.0, message).as_ref())
        }
        fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
            self.sign_hex(message) == tag_hex
        }
    }

    fn key() -> TestMac {
        TestMac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x11; 32]))
    }

    fn spec_event() -> CanonicalEvent {
        CanonicalEvent::from_data(r#"{"id":"e1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r1","decision":"allow","evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00.123456789Z"}"#).expect("valid")
    }

    #[test]
    fn the_spec_worked_example_hashes_and_links() {
        let event = spec_event();
        let content = content_sha256(&event);
        assert_eq!(
            content,
            "7086267f2ffd35554c784a3d3938a8a5a5391e87069cf8c6a2f8b00025658fda"
        );
        let mac = key();
        let mut head = ChainHead::default();
        let link = head.link(&content, Some(&mac));
        assert_eq!(link.seq, 1);
        assert_eq!(link.prev_content_sha256, None);
        assert_eq!(
            link.chain_hmac,
            "e8b943c9953f1d4d2953dde5c087290aa1ea4ea29eedffb553b8dc6f92f1af73"
        );
        assert_eq!(head.seq, 1);
        assert_eq!(chain_hmac(None, &content, ""), "");
    }

    fn chain(n: usize, mac: Option<&dyn MessageAuthenticator>) -> Vec<StoredEvent> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                let mut event = spec_event();
                event.id = format!("e{i}");
                event.occurred_at_micros += i as i64;
                let content = content_sha256(&event);
                let link = head.link(&content, mac);
                StoredEvent {
                    event,
                    ingested_at_micros: 0,
                    content_sha256: link.content_sha256,
                    prev_content_sha256: link.prev_content_sha256,
                    chain_hmac: link.chain_hmac,
                    chain_seq: link.seq,
                    ingest_signature: None,
                }
            })
            .collect()
    }

    fn verify(
        rows: &[StoredEvent],
        anchor: Option<&Anchor>,
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Option<Break> {
        let anchors: Vec<Anchor> = anchor.into_iter().cloned().collect();
        let mut verifier = ZoneVerifier::new("zone_a", &anchors);
        for row in rows {
            verifier.check(row, mac);
        }
        verifier.broken().cloned()
    }

    #[test]
    fn an_intact_chain_verifies_and_every_kind_of_edit_is_named() {
        let mac = key();
        let rows = chain(5, Some(&mac));
        assert_eq!(verify(&rows, None, Some(&mac)), None);

        let mut edited = rows.clone();
        edited[2].event.decision = "deny".into();
        let found = verify(&edited, None, Some(&mac)).expect("edit found");
        assert_eq!((found.seq, found.kind), (3, BreakKind::ContentMismatch));

        let mut deleted = rows.clone();
        deleted.remove(1);
        let found = verify(&deleted, None, Some(&mac)).expect("gap found");
        assert_eq!((found.seq, found.kind), (3, BreakKind::SeqGap));

        // A deleted row with the rest renumbered still breaks the link.
        let mut renumbered = deleted.clone();
        for row in renumbered.iter_mut().skip(1) {
            row.chain_seq -= 1;
        }
        let found = verify(&renumbered, None, Some(&mac)).expect("link found");
        assert_eq!((found.seq, found.kind), (2, BreakKind::PrevMismatch));

        // Rehashing an edited row without the key is caught by the HMAC.
        let mut forged = rows.clone();
        forged[4].event.decision = "deny".into();
        forged[4].content_sha256 = content_sha256(&forged[4].event);
        let found = verify(&forged, None, Some(&mac)).expect("forgery found");
        assert_eq!((found.seq, found.kind), (5, BreakKind::HmacMismatch));
        // Without the key the same forgery is invisible at the last row: that is what the
        // key is for.
        assert_eq!(verify(&forged, None, None), None);
    }

    #[test]
    fn retention_anchors_let_the_surviving_chain_verify() {
        let mac = key();
        let rows = chain(6, Some(&mac));
        let survivors = &rows[3..];
        let found = verify(survivors, None, Some(&mac)).expect("no anchor: break");
        assert_eq!(found.kind, BreakKind::SeqGap);
        let anchor = Anchor {
            zone_id: "zone_a".into(),
            seq: rows[2].chain_seq,
            content_sha256: rows[2].content_sha256.clone(),
        };
        assert_eq!(verify(survivors, Some(&anchor), Some(&mac)), None);
        // An anchor that does not match what was dropped is caught.
        let wrong = Anchor {
            content_sha256: rows[1].content_sha256.clone(),
            ..anchor
        };
        assert_eq!(
            verify(survivors, Some(&wrong), Some(&mac)).map(|b| b.kind),
            Some(BreakKind::PrevMismatch)
        );
    }
}
