//! The audit frame (`spec/audit-streams-storage.md §3.3`): what one `XADD caracal.audit.events`
//! carries, and what one line of a replay file holds.

use caracal_core::ports::{AuditEvent, MessageAuthenticator};
use serde::{Deserialize, Serialize};

/// One stream entry: `id`, `data` (the event JSON) and `sig` (hex HMAC-SHA256 of the exact
/// `data` bytes under `AUDIT_HMAC_KEY`, absent without a key). Spooled as one JSON object per
/// line, so a replayed entry carries byte-for-byte the `data` that was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Frame {
    pub id: String,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Frame {
    /// Serialises `event` once and signs those bytes: the ingestor verifies `sig` over `data`
    /// exactly as received, so the signed bytes and the sent bytes must be the same string.
    pub fn seal(
        event: &AuditEvent,
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Result<Frame, serde_json::Error> {
        let data = serde_json::to_string(event)?;
        let sig = mac.map(|mac| mac.sign_hex(data.as_bytes()));
        Ok(Frame {
            id: event.id.clone(),
            data,
            sig,
        })
    }

    /// The entry's fields in wire order.
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::with_capacity(3);
        fields.push(("id".to_string(), self.id.clone()));
        fields.push(("data".to_string(), self.data.clone()));
        if let Some(sig) = &self.sig {
            fields.push(("sig".to_string(), sig.clone()));
        }
        fields
    }

    /// Appends the frame as one NDJSON line. JSON escapes control characters inside strings,
    /// so the only newline is the terminator.
    pub fn write_line(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut *out, self)?;
        out.push(b'\n');
        Ok(())
    }

    /// Reads one replay-file line (without its newline), or `None` when it is not evidence.
    ///
    /// Two forms are accepted: this crate's frames, and upstream's spool lines, which hold the
    /// bare unsigned event JSON (`spec/audit-streams-storage.md §5`), so replay volumes restored
    /// from an upstream deployment still drain. A stored `sig` is kept as it is; only an unsigned
    /// line is signed with the current key. Re-signing a stored frame could launder a line
    /// edited on disk into valid evidence; kept unchanged, a tampered line fails the ingestor's
    /// check and lands in its dead-letter queue, where it stays visible.
    pub fn from_line(line: &[u8], mac: Option<&dyn MessageAuthenticator>) -> Option<Frame> {
        let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let object = value.as_object()?;
        let mut frame = if object.get("data").is_some_and(|data| data.is_string()) {
            serde_json::from_value::<Frame>(value).ok()?
        } else {
            let id = object.get("id")?.as_str()?.to_string();
            Frame {
                id,
                data: text.to_string(),
                sig: None,
            }
        };
        if frame.sig.is_none() {
            frame.sig = mac.map(|mac| mac.sign_hex(frame.data.as_bytes()));
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in authenticator: the tag is the message reversed, which is enough to see what
    /// was signed without pulling the crypto adapter into unit tests.
    struct Reverse;

    impl MessageAuthenticator for Reverse {
        fn sign_hex(&self, message: &[u8]) -> String {
            message.iter().rev().map(|&b| char::from(b)).collect()
        }

        fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
            self.sign_hex(message) == tag_hex
        }
    }

    fn event(id: &str) -> AuditEvent {
        AuditEvent {
            id: id.to_string(),
            zone_id: "zone_a".to_string(),
            event_type: "token_exchange".to_string(),
            request_id: "r1".to_string(),
            decision: "allow".to_string(),
            policy_set_version_id: None,
            manifest_sha: None,
            evaluation_status: "complete".to_string(),
            determining_policies_json: Some(vec![]),
            diagnostics_json: Some(vec![]),
            metadata_json: None,
            occurred_at: "2026-05-21T12:00:00.123456789Z".to_string(),
        }
    }

    #[test]
    fn a_frame_survives_its_line() {
        let frame = Frame::seal(&event("e1"), Some(&Reverse)).expect("seal");
        let mut line = Vec::new();
        frame.write_line(&mut line).expect("line");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back = Frame::from_line(&line[..line.len() - 1], None).expect("parse");
        assert_eq!(back, frame);
    }

    #[test]
    fn a_stored_sig_is_kept_even_under_another_key() {
        let line = br#"{"id":"e1","data":"{\"id\":\"e1\"}","sig":"deadbeef"}"#;
        let frame = Frame::from_line(line, Some(&Reverse)).expect("parse");
        assert_eq!(frame.sig.as_deref(), Some("deadbeef"));
    }

    #[test]
    fn an_upstream_line_is_the_data_and_gets_a_fresh_sig() {
        let line = br#"{"id":"e9","zone_id":"z","occurred_at":"2026-05-21T12:00:00Z"}"#;
        let frame = Frame::from_line(line, Some(&Reverse)).expect("parse");
        assert_eq!(frame.id, "e9");
        assert_eq!(frame.data.as_bytes(), line);
        assert_eq!(frame.sig, Some(Reverse.sign_hex(line)));
        let unsigned = Frame::from_line(line, None).expect("parse");
        assert_eq!(unsigned.sig, None);
    }

    #[test]
    fn lines_that_are_not_evidence_are_refused() {
        for line in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"zone_id\":\"z\"}",
            b"{\"id\":5}",
            b"{\"id\":\"x\",\"data\":\"d\",\"sig\":7}",
            b"\xff\xfe",
            b"{\"id\":\"e1\",\"data\":\"{}\"",
        ] {
            assert_eq!(Frame::from_line(line, None), None, "{line:?}");
        }
    }
}
