//! `caracal audit verify [--zone Z]…`: recomputes every zone's hash chain from the stored
//! evidence (offline: only Postgres is needed) and names the first broken link of each zone.
//! Exit status 0 when every zone verifies, 1 otherwise.

use caracal_core::audit::{verify_ledger, ZoneReport};
use caracal_core::ports::audit::AuditLedger;
use caracal_core::ports::MessageAuthenticator;
use caracal_crypto::HmacSha256;
use caracal_http::config::{Env, ProcessEnv};

/// Parsed `audit verify` arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerifyArgs {
    /// Zones to check; empty = every zone with evidence.
    pub zones: Vec<String>,
}

impl VerifyArgs {
    /// Parses the words after `audit verify`.
    pub fn parse(words: &[&str]) -> Result<VerifyArgs, String> {
        let mut args = VerifyArgs::default();
        let mut rest = words.iter();
        while let Some(word) = rest.next() {
            match *word {
                "--zone" => match rest.next() {
                    Some(zone) if !zone.is_empty() && !zone.starts_with("--") => {
                        args.zones.push((*zone).to_string())
                    }
                    _ => return Err("`--zone` needs a zone id".into()),
                },
                other => match other.strip_prefix("--zone=") {
                    Some(zone) if !zone.is_empty() => args.zones.push(zone.to_string()),
                    _ => return Err(format!("unknown argument {other:?} for `audit verify`")),
                },
            }
        }
        Ok(args)
    }
}

/// `caracal audit verify …` against `DATABASE_URL`, checking HMACs when `AUDIT_HMAC_KEY`
/// (or `AUDIT_HMAC_KEY_FILE`) is set. Prints the report; a broken chain is an error.
pub async fn run(words: &[&str]) -> Result<(), String> {
    let args = VerifyArgs::parse(words)?;
    let source = ProcessEnv;
    let env = Env(&source);
    let database_url = env.required("DATABASE_URL").map_err(|e| e.to_string())?;
    let mac = env
        .secret("AUDIT_HMAC_KEY", "AUDIT_HMAC_KEY_FILE")
        .map_err(|e| e.to_string())?
        .map(|hex| HmacSha256::from_hex(hex.trim(), 32))
        .transpose()
        .map_err(|e| format!("AUDIT_HMAC_KEY: {e}"))?;
    let store = caracal_postgres::PgStore::connect(&database_url, 2)
        .map_err(|e| format!("cannot connect to DATABASE_URL: {e}"))?;
    let ledger = caracal_postgres::PgLedger::new(store);
    let (report, ok) = verify(
        &ledger,
        &args,
        mac.as_ref().map(|m| m as &dyn MessageAuthenticator),
    )
    .await?;
    print!("{report}");
    if ok {
        Ok(())
    } else {
        Err("audit chain verification failed".into())
    }
}

/// Verifies and renders the report. Answers the text and whether everything verified.
pub async fn verify(
    ledger: &dyn AuditLedger,
    args: &VerifyArgs,
    mac: Option<&dyn MessageAuthenticator>,
) -> Result<(String, bool), String> {
    let zones = (!args.zones.is_empty()).then_some(args.zones.as_slice());
    let reports = verify_ledger(ledger, zones, mac)
        .await
        .map_err(|e| format!("cannot read the audit ledger: {e}"))?;
    Ok(render(&reports, mac.is_some()))
}

fn render(reports: &[ZoneReport], keyed: bool) -> (String, bool) {
    let mut out = String::new();
    if !keyed {
        out.push_str(
            "note: AUDIT_HMAC_KEY is not set: hashes and links are checked, chain_hmac is not \
             (a consistently rewritten suffix would go unnoticed)\n",
        );
    }
    if reports.is_empty() {
        out.push_str("no audit evidence stored\n");
    }
    let mut ok = true;
    for report in reports {
        match &report.broken {
            None if report.rows == 0 && report.anchors == 0 => {
                out.push_str(&format!("zone {}: no evidence\n", report.zone_id));
            }
            None => out.push_str(&format!(
                "zone {}: ok, {} rows, chain_seq up to {}{}\n",
                report.zone_id,
                report.rows,
                report.head_seq,
                if report.anchors > 0 {
                    format!(", continuing from {} retention anchor(s)", report.anchors)
                } else {
                    String::new()
                }
            )),
            Some(broken) => {
                ok = false;
                out.push_str(&format!(
                    "zone {}: BROKEN at chain_seq {} (event {}): {}: {}; {} rows verified before it\n",
                    report.zone_id,
                    broken.seq,
                    broken.event_id,
                    broken.kind.as_str(),
                    broken.detail,
                    report.rows.saturating_sub(1),
                ));
            }
        }
    }
    (out, ok)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use caracal_core::contract::audit::{event, ContractMac};
    use caracal_memory::{MemoryLedger, SystemClock};

    use super::*;

    #[test]
    fn arguments_parse_and_bad_ones_are_named() {
        assert_eq!(VerifyArgs::parse(&[]), Ok(VerifyArgs::default()));
        assert_eq!(
            VerifyArgs::parse(&["--zone", "a", "--zone=b"]).map(|a| a.zones),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert!(VerifyArgs::parse(&["--zone"]).is_err());
        assert!(VerifyArgs::parse(&["--zone", "--x"]).is_err());
        assert!(VerifyArgs::parse(&["--all"]).is_err());
    }

    #[tokio::test]
    async fn the_report_names_the_first_broken_link() {
        let ledger = MemoryLedger::new(Arc::new(SystemClock));
        let mac = ContractMac::spec_key();
        let batch: Vec<_> = (0..3)
            .map(|i| {
                event(
                    "zone_a",
                    &format!("e{i}"),
                    "2026-05-21T12:00:00Z",
                    serde_json::json!({}),
                )
            })
            .collect();
        ledger.append(&batch, Some(&mac)).await.expect("append");
        let (text, ok) = verify(&ledger, &VerifyArgs::default(), Some(&mac))
            .await
            .expect("verify");
        assert!(ok, "{text}");
        assert!(text.contains("zone zone_a: ok, 3 rows"), "{text}");

        ledger.rewrite_rows_unchecked(|rows| rows[1].event.request_id = "edited".into());
        let (text, ok) = verify(&ledger, &VerifyArgs::default(), Some(&mac))
            .await
            .expect("verify");
        assert!(!ok);
        assert!(
            text.contains("zone zone_a: BROKEN at chain_seq 2 (event e1): content_mismatch"),
            "{text}"
        );
        let (text, _) = verify(&ledger, &VerifyArgs::default(), None)
            .await
            .expect("verify");
        assert!(
            text.starts_with("note: AUDIT_HMAC_KEY is not set"),
            "{text}"
        );
    }
}
