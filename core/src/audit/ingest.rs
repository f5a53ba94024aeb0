//! What the ingestor does with an entry once storage answered (`spec/audit-streams-storage.md
//! §6.2`): acknowledge, leave it pending for another delivery, or dead-letter it (with a
//! security alert first when a stored event is being replaced by a different one).

use super::event::IncomingEvent;
use crate::ports::audit::{AppendOutcome, IngestAlert, LedgerError};

/// The ingestor's next step for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stored (or already stored identically): acknowledge.
    Ack,
    /// Leave it pending: the reaper delivers it again.
    Retry,
    /// Record `alert` (when given), publish to the DLQ with `reason`, then acknowledge.
    DeadLetter {
        /// DLQ `reason`.
        reason: String,
        /// Security signal to commit first.
        alert: Option<IngestAlert>,
    },
}

/// The step after storage answered `outcome` for `incoming`, on its `deliveries`-th delivery
/// with a limit of `max_deliveries` (0 = unlimited).
pub fn after_append(
    outcome: &Result<AppendOutcome, LedgerError>,
    incoming: &IncomingEvent,
    deliveries: u64,
    max_deliveries: u64,
    now_micros: i64,
) -> Action {
    match outcome {
        Ok(AppendOutcome::Inserted { .. } | AppendOutcome::Duplicate) => Action::Ack,
        Ok(AppendOutcome::Tampered { stored_sha256 }) => Action::DeadLetter {
            reason: "tamper_on_replay".into(),
            alert: Some(IngestAlert {
                event_id: incoming.event.id.clone(),
                zone_id: incoming.event.zone_id.clone(),
                kind: "content_mismatch_on_replay".into(),
                detail: format!(
                    "stored={stored_sha256} incoming={}",
                    incoming.content_sha256
                ),
                observed_at_micros: now_micros,
            }),
        },
        Err(LedgerError::Transient(err)) => {
            if max_deliveries > 0 && deliveries >= max_deliveries {
                Action::DeadLetter {
                    reason: format!("transient_exceeded_max_deliveries:{err}"),
                    alert: None,
                }
            } else {
                Action::Retry
            }
        }
        Err(LedgerError::Permanent(err)) => Action::DeadLetter {
            reason: format!("pg_permanent_error:{err}"),
            alert: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::parse_entry;

    fn incoming() -> IncomingEvent {
        let fields = vec![(
            "data".to_string(),
            r#"{"id":"e","zone_id":"z","occurred_at":"2026-05-21T12:00:00Z"}"#.to_string(),
        )];
        parse_entry(&fields, None).expect("valid")
    }

    #[test]
    fn outcomes_map_to_the_spec_table() {
        let ev = incoming();
        assert_eq!(
            after_append(&Ok(AppendOutcome::Inserted { chain_seq: 1 }), &ev, 1, 8, 0),
            Action::Ack
        );
        assert_eq!(
            after_append(&Ok(AppendOutcome::Duplicate), &ev, 1, 8, 0),
            Action::Ack
        );
        let transient = Err(LedgerError::Transient("conn reset".into()));
        assert_eq!(after_append(&transient, &ev, 7, 8, 0), Action::Retry);
        assert_eq!(after_append(&transient, &ev, 100, 0, 0), Action::Retry);
        assert_eq!(
            after_append(&transient, &ev, 8, 8, 0),
            Action::DeadLetter {
                reason: "transient_exceeded_max_deliveries:conn reset".into(),
                alert: None
            }
        );
        assert_eq!(
            after_append(&Err(LedgerError::Permanent("22P02".into())), &ev, 1, 8, 0),
            Action::DeadLetter {
                reason: "pg_permanent_error:22P02".into(),
                alert: None
            }
        );
        let Action::DeadLetter { reason, alert } = after_append(
            &Ok(AppendOutcome::Tampered {
                stored_sha256: "aa".into(),
            }),
            &ev,
            1,
            8,
            5,
        ) else {
            panic!("tamper must dead-letter");
        };
        assert_eq!(reason, "tamper_on_replay");
        let alert = alert.expect("tamper raises an alert");
        assert_eq!(alert.kind, "content_mismatch_on_replay");
        assert_eq!(
            alert.detail,
            format!("stored=aa incoming={}", ev.content_sha256)
        );
    }
}
