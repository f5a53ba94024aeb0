//! The Postgres audit ledger against a real server: the shared ledger contract, plus what only
//! Postgres can show — our canonical JSON is byte-for-byte Postgres' jsonb text, the spec's
//! worked example survives a write and a read, `caracal_audit` cannot rewrite evidence,
//! retention anchors keep the chain verifiable while an off-schedule deletion still breaks it,
//! and a connection terminated mid-append reads as transient.
//!
//! Each test creates its own database (see `support`). Without a reachable server they skip,
//! except under `CI`, where they fail.

mod support;

use std::sync::Arc;
use std::time::Duration;

use caracal_core::audit::json::Json;
use caracal_core::audit::pack;
use caracal_core::audit::{parse_entry, BreakKind, IncomingEvent, StoredEvent, ZoneVerifier};
use caracal_core::contract::audit::{run_audit_ledger_contract, ContractMac};
use caracal_core::ports::audit::{AppendOutcome, AuditLedger, LedgerError, ListQuery};
use caracal_core::ports::MessageAuthenticator;
use caracal_core::time::Timestamp;
use caracal_postgres::{PgLedger, PgStore};
use diesel::sql_types::{BigInt, Bytea, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use support::TestDb;

async fn ledger(db: &TestDb) -> PgLedger {
    PgLedger::new(PgStore::connect(&db.url, 8).expect("pool"))
}

async fn superuser(db: &TestDb) -> AsyncPgConnection {
    AsyncPgConnection::establish(&db.url)
        .await
        .expect("direct connection")
}

fn micros(text: &str) -> i64 {
    Timestamp::parse_utc_z(text)
        .expect("RFC 3339 UTC instant")
        .unix_micros()
}

/// A signed stream entry for `data`, parsed the way the ingestor parses it.
fn signed(data: &serde_json::Value, mac: &ContractMac) -> IncomingEvent {
    let data = data.to_string();
    let fields = vec![
        ("data".to_string(), data.clone()),
        ("sig".to_string(), mac.sign_hex(data.as_bytes())),
    ];
    parse_entry(&fields, Some(mac)).expect("valid signed event")
}

fn simple(zone: &str, id: &str, occurred_at: &str, mac: &ContractMac) -> IncomingEvent {
    signed(
        &serde_json::json!({
            "id": id, "zone_id": zone, "event_type": "token_exchange", "request_id": format!("r-{id}"),
            "decision": "allow", "evaluation_status": "complete",
            "determining_policies_json": [], "diagnostics_json": [],
            "occurred_at": occurred_at,
        }),
        mac,
    )
}

async fn whole_chain(ledger: &PgLedger, zone: &str) -> Vec<StoredEvent> {
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let page = ledger
            .chain_page(zone, after, 500)
            .await
            .expect("chain page");
        let Some(last) = page.last() else {
            return rows;
        };
        after = last.chain_seq;
        rows.extend(page);
    }
}

/// The first break of `zone`'s chain as the offline verifier sees it (rows + anchors).
async fn first_break(
    ledger: &PgLedger,
    zone: &str,
    mac: &ContractMac,
) -> Option<caracal_core::audit::Break> {
    let anchors = ledger.anchors(zone).await.expect("anchors");
    let mut verifier = ZoneVerifier::new(zone, &anchors);
    for row in whole_chain(ledger, zone).await {
        verifier.check(&row, Some(mac));
    }
    verifier.broken().cloned()
}

#[derive(QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Text)]
    text: String,
}

#[derive(QueryableByName)]
struct BytesRow {
    #[diesel(sql_type = Bytea)]
    bytes: Vec<u8>,
}

#[derive(QueryableByName)]
struct Named {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Prints each index's and each column's bytes per row of `table` (the figures the storage
/// budget is tuned with).
async fn print_breakdown(conn: &mut AsyncPgConnection, table: &str, rows: i64) {
    let indexes: Vec<Named> = diesel::sql_query(
        "SELECT c.relname::text AS name, pg_relation_size(c.oid) AS n FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass ORDER BY 1",
    )
    .bind::<Text, _>(table)
    .load(conn)
    .await
    .expect("index sizes");
    for index in indexes {
        println!(
            "  index {:<48} {:>5} bytes/event",
            index.name,
            index.n / rows
        );
    }
    let columns: Vec<TextRow> = diesel::sql_query(
        "SELECT attname::text AS text FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind::<Text, _>(table)
    .load(conn)
    .await
    .expect("columns");
    for column in columns {
        let size: Count = diesel::sql_query(format!(
            "SELECT coalesce(sum(pg_column_size({0})), 0)::bigint AS n FROM {table}",
            column.text
        ))
        .get_result(conn)
        .await
        .expect("column size");
        println!(
            "  column {:<47} {:>5.1} bytes/event",
            column.text,
            size.n as f64 / rows as f64
        );
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_ledger_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    run_audit_ledger_contract(Arc::new(ledger(&db).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_json_is_postgres_jsonb_text() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut conn = superuser(&db).await;
    for doc in JSON_CORPUS {
        let ours = Json::parse(doc)
            .unwrap_or_else(|e| panic!("{doc}: {e}"))
            .jsonb_text();
        let theirs: TextRow = diesel::sql_query("SELECT $1::jsonb::text AS text")
            .bind::<Text, _>(doc)
            .get_result(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("Postgres refused {doc}: {e}"));
        assert_eq!(ours, theirs.text, "canonical text of {doc}");
        // Stored text is a fixed point: canonicalising it again changes nothing.
        let again = Json::parse(&ours)
            .expect("canonical text parses")
            .jsonb_text();
        assert_eq!(again, ours, "canonical text is stable for {doc}");
        // What the ledger stores instead of jsonb gives back Postgres' text exactly.
        let packed = pack::pack(&Json::parse(doc).expect("parses")).expect("packs");
        assert_eq!(
            pack::unpack(&packed).expect("unpacks").jsonb_text(),
            theirs.text,
            "packed form of {doc}"
        );
    }
    // NUL cannot be stored in jsonb at all; the parser strips it so the event stays storable.
    let refused = diesel::sql_query("SELECT $1::jsonb::text AS text")
        .bind::<Text, _>(r#"{"a":"x\u0000y"}"#)
        .get_result::<TextRow>(&mut conn)
        .await;
    assert!(refused.is_err(), "Postgres rejects \\u0000 in jsonb");
    assert_eq!(
        Json::parse(r#"{"a":"x\u0000y"}"#)
            .expect("parses")
            .jsonb_text(),
        r#"{"a": "xy"}"#
    );
}

/// JSON documents covering what jsonb canonicalisation and the packed form treat specially.
const JSON_CORPUS: [&str; 16] = [
    // Key order: by length, then bytes (multi-byte keys count their UTF-8 length).
    r#"{"trace_id":"t","app":"a","b":1,"aa":2,"é":3,"z":4,"":5}"#,
    r#"{"b":1,"a":2,"b":3,"a":{"y":1,"x":2,"y":[3]}}"#,
    r#"{"zz":{"b":{"d":1,"c":2},"a":[{"k":1,"j":2},{"j":3,"j":4}]}}"#,
    // Numbers in numeric's output form.
    "[1e2, 1.0e2, 1.50, -0, -0.0, 0.000e2, 1E-3, 1.5e-3, 12.345e1, -12.5e+1, 0e5, 1e-7]",
    "[123456789012345678901234567890, -98765432109876543210.0001, 1e300, 5e-20, 0.1]",
    "[0, -1, 3.14159265358979323846264338327950288419716939937510, 1E+2, 2e0, 10e-1]",
    // Escapes and control characters.
    r#"["\"", "\\", "\/", "\b\f\n\r\t", "\u0001\u001f\u007f", "\u2028\u2029", "a\u0020b"]"#,
    // Unicode, raw and escaped (a surrogate pair).
    r#"{"ключ":"значение","emoji":"😀","escaped":"\ud83d\ude00","mixed":"é\u00e9e\u0301"}"#,
    // Nesting, empties, literals, whitespace.
    " { \"a\" : [ [ [ ] ] , { } , null , true , false ] , \"b\" : \"\" } ",
    r#"[[[[[[[[[[{"deep":[[[[[["x"]]]]]]}]]]]]]]]]]"#,
    r#""just a string""#,
    "42",
    "null",
    // A realistic Gateway metadata document.
    r#"{"application_id":"0197a000-0000-7000-8000-000000000001","resource":"resource://billing","subject_fingerprint":"ba7816bf8f01cfea","method":"GET","gateway_status":200,"latency_ms":12,"response_bytes":1834,"upstream_host":"billing.example","upstream_status":200,"result_class":"success","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#,
    // Strings the packed form compacts, next to look-alikes it must keep as text.
    r#"["0197a000-0000-7000-8000-00000000000a","0197A000-0000-7000-8000-00000000000A","0197a00000007000800000000000000a","abcdef","ABCDEF","abc","",18446744073709551615,18446744073709551616,-5]"#,
    r#"{"agent_labels":{"team":"payments","prod":true},"unknown":{"application_id":"x"}}"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_worked_example_is_stored_and_read_back_with_its_hashes() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    // §6.3's example, byte for byte as a producer would send it.
    let data = r#"{"id":"e1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r1","decision":"allow","evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00.123456789Z"}"#;
    let fields = vec![
        ("data".to_string(), data.to_string()),
        ("sig".to_string(), mac.sign_hex(data.as_bytes())),
    ];
    let incoming = parse_entry(&fields, Some(&mac)).expect("signed example");
    let outcome = ledger
        .append(std::slice::from_ref(&incoming), Some(&mac))
        .await
        .expect("append");
    assert_eq!(outcome, vec![AppendOutcome::Inserted { chain_seq: 1 }]);

    let rows = whole_chain(&ledger, "zone_a").await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        row.content_sha256,
        "7086267f2ffd35554c784a3d3938a8a5a5391e87069cf8c6a2f8b00025658fda"
    );
    assert_eq!(
        row.chain_hmac,
        "e8b943c9953f1d4d2953dde5c087290aa1ea4ea29eedffb553b8dc6f92f1af73"
    );
    assert_eq!(row.prev_content_sha256, None);
    assert_eq!(row.event, incoming.event);
    assert_eq!(
        row.event.occurred_at_micros, 1_779_364_800_123_456,
        "truncated to microseconds"
    );
    assert_eq!(row.ingest_signature.as_deref(), Some(&*fields[1].1));
    // Recomputing from what Postgres holds (not from our copy) gives the same hash.
    assert_eq!(
        caracal_core::audit::chain::content_sha256(&row.event),
        row.content_sha256
    );
    let mut conn = superuser(&db).await;
    let stored: TextRow = diesel::sql_query(
        "SELECT encode(content_sha256, 'hex') || ' ' || encode(chain_hmac, 'hex') || ' ' \
         || (id IS NULL)::text || ' ' || request_id_text || ' ' \
         || (metadata_json IS NULL)::text AS text \
         FROM audit_events WHERE id_text = 'e1'",
    )
    .get_result(&mut conn)
    .await
    .expect("raw row");
    assert_eq!(
        stored.text,
        "7086267f2ffd35554c784a3d3938a8a5a5391e87069cf8c6a2f8b00025658fda \
         e8b943c9953f1d4d2953dde5c087290aa1ea4ea29eedffb553b8dc6f92f1af73 true r1 true",
        "ids that are not uuids are kept as text; absent metadata is NULL"
    );
    let packed: BytesRow = diesel::sql_query(
        "SELECT determining_policies_json AS bytes FROM audit_events WHERE id_text = 'e1'",
    )
    .get_result(&mut conn)
    .await
    .expect("raw row");
    assert_eq!(
        pack::unpack(&packed.bytes).expect("packed").jsonb_text(),
        "[]"
    );

    // A signature that is not lowercase hex is kept verbatim too.
    let odd = vec![
        ("data".to_string(), data.replace("\"e1\"", "\"e2\"")),
        ("sig".to_string(), "NOT-HEX".to_string()),
    ];
    let odd = parse_entry(&odd, None).expect("unsigned parse");
    ledger.append(&[odd], None).await.expect("append");
    let rows = whole_chain(&ledger, "zone_a").await;
    assert_eq!(rows[1].ingest_signature.as_deref(), Some("NOT-HEX"));
    assert_eq!(rows[1].chain_hmac, "");
    assert_eq!(
        rows[1].prev_content_sha256.as_deref(),
        Some("7086267f2ffd35554c784a3d3938a8a5a5391e87069cf8c6a2f8b00025658fda")
    );
}

/// An event from raw `data`, signed with `mac`, parsed the way the ingestor parses it.
fn from_data(data: String, mac: &ContractMac) -> IncomingEvent {
    let fields = vec![
        ("sig".to_string(), mac.sign_hex(data.as_bytes())),
        ("data".to_string(), data),
    ];
    parse_entry(&fields, Some(mac)).unwrap_or_else(|e| panic!("valid event: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_json_fields_read_back_byte_for_byte_and_the_chain_verifies() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    let batch: Vec<IncomingEvent> = JSON_CORPUS
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            from_data(
                format!(
                    r#"{{"id":"p{i}","zone_id":"packed","event_type":"token_exchange","occurred_at":"2026-05-21T12:00:{i:02}Z","determining_policies_json":{doc},"diagnostics_json":{doc},"metadata_json":{doc}}}"#
                ),
                &mac,
            )
        })
        .collect();
    ledger.append(&batch, Some(&mac)).await.expect("append");
    let rows = whole_chain(&ledger, "packed").await;
    assert_eq!(rows.len(), batch.len());
    for (row, incoming) in rows.iter().zip(&batch) {
        assert_eq!(row.event, incoming.event, "{}", incoming.event.id);
        assert_eq!(row.content_sha256, incoming.content_sha256);
    }
    assert_eq!(first_break(&ledger, "packed", &mac).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_keep_their_exact_form_and_filters_find_them_in_either_column() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    let at = "2026-05-21T12:00:00Z";
    let lower = |tail: &str| format!("0197a000-0000-7000-8000-0000000000{tail}");
    let upper = |tail: &str| format!("0197A000-0000-7000-8000-0000000000{tail}");
    let event = |id: String, request: String, metadata: serde_json::Value, decision: &str| {
        signed(
            &serde_json::json!({
                "id": id, "zone_id": "forms", "event_type": "token_exchange",
                "request_id": request, "decision": decision, "evaluation_status": "complete",
                "metadata_json": metadata, "occurred_at": at,
            }),
            &mac,
        )
    };
    // A canonical uuid everywhere; the same in upper case (text, and a different value); text.
    let u1 = event(
        lower("a1"),
        lower("f1"),
        serde_json::json!({"application_id": lower("b1"), "agent_session_id": lower("c1"),
            "session_id": lower("d1"), "agent_labels": ["team:x"]}),
        "allow",
    );
    let big_u1 = event(
        upper("A1"),
        upper("F1"),
        serde_json::json!({"application_id": upper("B1"), "agent_session_id": upper("C1"),
            "session_id": upper("D1"), "agent_labels": {"team": "x"}}),
        "allow",
    );
    let t1 = event(
        "z-text".into(),
        lower("f1"),
        serde_json::json!({"application_id": "", "agent_session_id": 7}),
        "allow",
    );
    let batch = vec![u1.clone(), big_u1.clone(), t1.clone()];
    ledger.append(&batch, Some(&mac)).await.expect("append");

    let rows = whole_chain(&ledger, "forms").await;
    let events: Vec<_> = rows.iter().map(|r| r.event.clone()).collect();
    assert_eq!(
        events,
        batch.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        "every id and JSON value reads back exactly as written"
    );
    let mut conn = superuser(&db).await;
    let forms: TextRow = diesel::sql_query(
        "SELECT count(id) || ' ' || count(id_text) || ' ' || count(request_id) || ' ' \
         || count(request_id_text) || ' ' || count(application_id) || ' ' \
         || count(application_id_text) || ' ' || count(agent_session_id_text) AS text \
         FROM audit_events WHERE zone_id = 'forms'",
    )
    .get_result(&mut conn)
    .await
    .expect("column forms");
    assert_eq!(
        forms.text, "1 2 2 1 1 2 1",
        "only canonical lowercase uuids take the uuid columns; a number is not extracted"
    );

    let base = ListQuery {
        zone_id: "forms".into(),
        limit: 100,
        ..ListQuery::default()
    };
    let ids = |rows: Vec<StoredEvent>| rows.into_iter().map(|r| r.event.id).collect::<Vec<_>>();
    let list = |query: ListQuery| {
        let ledger = ledger.clone();
        async move { ids(ledger.list(&query).await.expect("list")) }
    };
    // One instant: newest-first ties go by id, bytewise descending, across both forms.
    assert_eq!(
        list(base.clone()).await,
        ["z-text".to_string(), lower("a1"), upper("A1")]
    );
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = ledger
            .list(&ListQuery {
                limit: 1,
                before: before.clone(),
                ..base.clone()
            })
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        before = Some((last.event.occurred_at_micros, last.event.id.clone()));
        paged.extend(ids(page));
    }
    assert_eq!(
        paged,
        list(base.clone()).await,
        "keyset paging crosses forms"
    );
    for (query, expected) in [
        (
            ListQuery {
                application_id: Some(lower("b1")),
                ..base.clone()
            },
            vec![lower("a1")],
        ),
        (
            ListQuery {
                application_id: Some(upper("B1")),
                ..base.clone()
            },
            vec![upper("A1")],
        ),
        (
            ListQuery {
                application_id: Some(String::new()),
                ..base.clone()
            },
            vec!["z-text".to_string()],
        ),
        (
            ListQuery {
                agent_session_id: Some(lower("c1")),
                ..base.clone()
            },
            vec![lower("a1")],
        ),
        (
            ListQuery {
                agent_session_id: Some(upper("C1")),
                ..base.clone()
            },
            vec![upper("A1")],
        ),
        (
            ListQuery {
                agent_session_id: Some("7".into()),
                ..base.clone()
            },
            vec![],
        ),
        (
            ListQuery {
                authority_record_id: Some(lower("d1")),
                ..base.clone()
            },
            vec![lower("a1")],
        ),
        (
            ListQuery {
                authority_record_id: Some(upper("D1")),
                ..base.clone()
            },
            vec![upper("A1")],
        ),
        (
            ListQuery {
                label: Some("team:x".into()),
                ..base.clone()
            },
            vec![lower("a1"), upper("A1")],
        ),
        (
            ListQuery {
                label: Some("team".into()),
                ..base.clone()
            },
            vec![upper("A1")],
        ),
        (
            ListQuery {
                label: Some("x".into()),
                ..base.clone()
            },
            vec![],
        ),
        (
            ListQuery {
                request_id: Some(lower("f1")),
                ..base.clone()
            },
            vec!["z-text".to_string(), lower("a1")],
        ),
        (
            ListQuery {
                request_id: Some(upper("F1")),
                ..base.clone()
            },
            vec![upper("A1")],
        ),
    ] {
        assert_eq!(list(query.clone()).await, expected, "{query:?}");
    }
    assert_eq!(
        ids(ledger
            .by_request("forms", &lower("f1"))
            .await
            .expect("by request")),
        [lower("a1"), "z-text".to_string()]
    );
    assert_eq!(
        ids(ledger
            .by_request("forms", &upper("F1"))
            .await
            .expect("by request")),
        [upper("A1")]
    );

    // Deduplication finds each form's key; changed content under a stored key is tampering.
    let outcomes = ledger.append(&batch, Some(&mac)).await.expect("replay");
    assert_eq!(outcomes, vec![AppendOutcome::Duplicate; 3]);
    let forged = vec![
        event(lower("a1"), lower("f1"), serde_json::json!({}), "deny"),
        event(upper("A1"), upper("F1"), serde_json::json!({}), "deny"),
        event("z-text".into(), lower("f1"), serde_json::json!({}), "deny"),
    ];
    let outcomes = ledger.append(&forged, Some(&mac)).await.expect("forged");
    assert_eq!(
        outcomes,
        batch
            .iter()
            .map(|e| AppendOutcome::Tampered {
                stored_sha256: e.content_sha256.clone()
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(whole_chain(&ledger, "forms").await.len(), 3);
    assert_eq!(first_break(&ledger, "forms", &mac).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_canonical_text_is_refused_and_the_batch_stores_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    let valid = simple("nc", "ok", "2026-05-21T12:00:00Z", &mac);
    // A hand-built event whose metadata text is not what jsonb prints: stored packed, it could
    // not come back as the text its hash covers.
    let mut bad = simple("nc", "bad", "2026-05-21T12:00:01Z", &mac);
    bad.event.metadata_json = Some(r#"{"b": 1, "a": 2}"#.to_string());
    bad.content_sha256 = caracal_core::audit::chain::content_sha256(&bad.event);
    let outcome = ledger.append(&[valid, bad], Some(&mac)).await;
    match outcome {
        Err(LedgerError::Permanent(message)) => {
            assert!(message.contains("metadata_json"), "{message}")
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    assert!(whole_chain(&ledger, "nc").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_packed_column_is_an_error_never_other_evidence() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    let event = from_data(
        r#"{"id":"c1","zone_id":"corrupt","occurred_at":"2026-05-21T12:00:00Z","metadata_json":{"latency_ms":12}}"#
            .to_string(),
        &mac,
    );
    ledger.append(&[event], Some(&mac)).await.expect("append");
    let mut conn = superuser(&db).await;
    // The owner flips the stored integer's tag: 12 would read as a 12-byte string.
    conn.batch_execute(
        "UPDATE audit_events SET metadata_json = set_byte(metadata_json, 4, 6) WHERE id_text = 'c1'",
    )
    .await
    .expect("superuser update");
    match ledger.chain_page("corrupt", 0, 10).await {
        Err(LedgerError::Permanent(message)) => {
            assert!(message.contains("metadata_json of event c1"), "{message}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_to_one_zone_keep_chain_seq_dense() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = Arc::new(ledger(&db).await);
    let tasks: Vec<_> = (0..6)
        .map(|task| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mac = ContractMac::spec_key();
                for n in 0..10 {
                    // Every batch touches the hot zone and one of two others, in varying
                    // order, so the lock ordering is exercised too.
                    let other = if task % 2 == 0 { "cold_a" } else { "cold_b" };
                    let at = format!("2026-05-21T12:00:{:02}.{task}{n}Z", n);
                    let batch = vec![
                        simple(other, &format!("o{task}-{n}"), &at, &mac),
                        simple("hot", &format!("h{task}-{n}-1"), &at, &mac),
                        simple("hot", &format!("h{task}-{n}-2"), &at, &mac),
                    ];
                    ledger.append(&batch, Some(&mac)).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("appender");
    }
    let mac = ContractMac::spec_key();
    for (zone, n) in [("hot", 120), ("cold_a", 30), ("cold_b", 30)] {
        let rows = whole_chain(&ledger, zone).await;
        assert_eq!(
            rows.iter().map(|r| r.chain_seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<i64>>(),
            "{zone}: every position taken exactly once"
        );
        assert_eq!(first_break(&ledger, zone, &mac).await, None, "{zone}");
    }
}

/// Runs `sql` as `role` in a rolled-back transaction and returns the error text, if any.
async fn as_role(conn: &mut AsyncPgConnection, role: &str, sql: &str) -> Option<String> {
    conn.batch_execute(&format!(
        "BEGIN; SET LOCAL ROLE {role}; SELECT set_config('caracal.zone_id', '*', true)"
    ))
    .await
    .expect("begin");
    let result = conn.batch_execute(sql).await;
    conn.batch_execute("ROLLBACK").await.expect("rollback");
    result.err().map(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_role_can_append_but_never_rewrite_evidence() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    // The ledger writes as caracal_audit: appending works.
    ledger
        .append(
            &[simple("z", "e1", "2026-05-21T12:00:00Z", &mac)],
            Some(&mac),
        )
        .await
        .expect("caracal_audit can insert");
    let mut conn = superuser(&db).await;
    for sql in [
        "UPDATE audit_events SET decision = 'deny'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_events_default",
        "UPDATE audit_chain_anchors SET chain_seq = 0",
        "DELETE FROM audit_chain_anchors",
        "DROP TABLE audit_events_default",
    ] {
        let err = as_role(&mut conn, "caracal_audit", sql)
            .await
            .unwrap_or_else(|| panic!("caracal_audit must not run {sql}"));
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }
    // The partition functions are the only way to remove evidence, and only whole months.
    let err = as_role(
        &mut conn,
        "caracal_audit",
        "SELECT audit_partition_drop('audit_events_default')",
    )
    .await
    .expect("the default partition is never dropped");
    assert!(err.contains("not an audit month partition"), "{err}");
    // Insert works for the role directly too; the API's role only reads.
    assert_eq!(
        as_role(
            &mut conn,
            "caracal_audit",
            "INSERT INTO audit_events (occurred_at, chain_seq, id_text, zone_id, event_type, content_sha256) \
             VALUES (now(), 1, 'raw', 'raw_zone', '', decode(repeat('00', 32), 'hex'))"
        )
        .await,
        None
    );
    assert_eq!(
        as_role(
            &mut conn,
            "caracal_app",
            "SELECT count(*) FROM audit_events"
        )
        .await,
        None
    );
    for sql in [
        "INSERT INTO audit_events (occurred_at, chain_seq, id_text, zone_id, event_type, content_sha256) \
         VALUES (now(), 1, 'raw', 'raw_zone', '', decode(repeat('00', 32), 'hex'))",
        "UPDATE audit_events SET decision = 'deny'",
        "DELETE FROM audit_events",
        "SELECT audit_partition_drop('audit_events_y2020m01')",
    ] {
        let err = as_role(&mut conn, "caracal_app", sql)
            .await
            .unwrap_or_else(|| panic!("caracal_app must not run {sql}"));
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    // Row-level security binds the roles: with no zone set, caracal_app sees nothing.
    conn.batch_execute("BEGIN; SET LOCAL ROLE caracal_app")
        .await
        .expect("begin");
    let seen: Count = diesel::sql_query("SELECT count(*) AS n FROM audit_events")
        .get_result(&mut conn)
        .await
        .expect("count");
    conn.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(seen.n, 0, "no zone set: fail closed");
    let stored: Count = diesel::sql_query("SELECT count(*) AS n FROM audit_events")
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(stored.n, 1, "nothing was changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_anchors_keep_the_chain_verifiable_and_other_deletions_are_caught() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    let created = ledger
        .apply_retention(micros("2021-01-10T00:00:00Z"), 3650)
        .await
        .expect("partitions for Jan–Apr 2021");
    assert_eq!((created.created, created.dropped), (4, 0));
    // Two zones; January is a prefix of "a", while "b" has a late January event between
    // February ones and its chain head in January.
    let batch = vec![
        simple("a", "a1", "2021-01-05T00:00:00Z", &mac),
        simple("a", "a2", "2021-01-06T00:00:00Z", &mac),
        simple("b", "b1", "2021-02-01T00:00:00Z", &mac),
        simple("b", "b2", "2021-01-20T00:00:00Z", &mac),
        simple("a", "a3", "2021-03-02T00:00:00Z", &mac),
        simple("b", "b3", "2021-03-03T00:00:00Z", &mac),
        simple("a", "a4", "2021-03-04T00:00:00Z", &mac),
        simple("a", "a5", "2021-03-05T00:00:00Z", &mac),
        simple("c", "c1", "2021-01-07T00:00:00Z", &mac),
        simple("d", "d1", "2021-02-07T00:00:00Z", &mac),
        simple("d", "d2", "2021-03-07T00:00:00Z", &mac),
    ];
    ledger.append(&batch, Some(&mac)).await.expect("append");

    // On 2021-02-15, keeping 30 days, the cutoff is 2021-01-16: no month has ended by then.
    let early = ledger
        .apply_retention(micros("2021-02-15T00:00:00Z"), 30)
        .await
        .expect("early pass");
    assert_eq!((early.dropped, early.rows_dropped), (0, 0));
    // On 2021-03-15, keeping 30 days, the cutoff is 2021-02-13: January (ended 2021-02-01)
    // goes, February (ends 2021-03-01) stays.
    let report = ledger
        .apply_retention(micros("2021-03-15T00:00:00Z"), 30)
        .await
        .expect("retention");
    assert_eq!((report.dropped, report.rows_dropped), (1, 4), "{report:?}");
    // Anchored: a2 (its successor a3 survives), b2 (a late January row between b1 and b3) and
    // c1 (zone c's head). a1 is not: its successor a2 went with it.
    let anchor_seqs = |zone: &'static str| {
        let ledger = ledger.clone();
        async move {
            ledger
                .anchors(zone)
                .await
                .expect("anchors")
                .into_iter()
                .map(|a| a.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(anchor_seqs("a").await, vec![2]);
    assert_eq!(anchor_seqs("b").await, vec![2]);
    assert_eq!(anchor_seqs("c").await, vec![1]);
    assert_eq!(report.anchors, 3);
    for zone in ["a", "b", "c", "d"] {
        assert_eq!(
            first_break(&ledger, zone, &mac).await,
            None,
            "{zone} verifies"
        );
    }
    assert!(whole_chain(&ledger, "c").await.is_empty());
    assert_eq!(
        ledger.zones().await.expect("zones"),
        ["a", "b", "c", "d"],
        "a zone whose rows all expired is still known through its anchor"
    );
    // Zone c continues from its anchor, not from scratch.
    let next = ledger
        .append(
            &[simple("c", "c2", "2021-03-08T00:00:00Z", &mac)],
            Some(&mac),
        )
        .await
        .expect("append after retention");
    assert_eq!(next, vec![AppendOutcome::Inserted { chain_seq: 2 }]);
    assert_eq!(first_break(&ledger, "c", &mac).await, None);

    // Off schedule: the owner deletes a row in the middle of zone a's chain.
    let mut conn = superuser(&db).await;
    conn.batch_execute("DELETE FROM audit_events WHERE id_text = 'a4'")
        .await
        .expect("superuser delete");
    let found = first_break(&ledger, "a", &mac)
        .await
        .expect("the deletion breaks the chain");
    assert_eq!((found.seq, found.kind), (5, BreakKind::SeqGap));
    // …and a whole month dropped without the function leaves no anchor: caught as well.
    conn.batch_execute("DROP TABLE audit_events_y2021m02")
        .await
        .expect("superuser drop");
    let found = first_break(&ledger, "d", &mac)
        .await
        .expect("the dropped month breaks zone d");
    assert_eq!((found.seq, found.kind), (2, BreakKind::SeqGap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_terminated_mid_append_is_transient_and_stores_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mut holder = superuser(&db).await;
    // Hold zone t's chain lock so the append waits inside its transaction.
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('t'))")
        .await
        .expect("hold the zone lock");
    let appender = tokio::spawn({
        let ledger = ledger.clone();
        async move {
            let mac = ContractMac::spec_key();
            ledger
                .append(
                    &[simple("t", "t1", "2026-05-21T12:00:00Z", &mac)],
                    Some(&mac),
                )
                .await
        }
    });
    let mut observer = superuser(&db).await;
    let mut terminated = false;
    for _ in 0..500 {
        let waiting: Vec<Count> = diesel::sql_query(
            "SELECT pid::bigint AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%pg_advisory_xact_lock%' AND pid <> pg_backend_pid()",
        )
        .load(&mut observer)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = waiting.as_slice().first() {
            diesel::sql_query("SELECT pg_terminate_backend($1::int)")
                .bind::<BigInt, _>(pid.n)
                .execute(&mut observer)
                .await
                .expect("terminate");
            terminated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(terminated, "the append never waited on the zone lock");
    let outcome = appender.await.expect("appender task");
    assert!(
        matches!(outcome, Err(LedgerError::Transient(_))),
        "a terminated connection is worth retrying: {outcome:?}"
    );
    holder.batch_execute("ROLLBACK").await.expect("release");
    assert!(whole_chain(&ledger, "t").await.is_empty());
    // The pool recovers: the retry succeeds.
    let mac = ContractMac::spec_key();
    let retried = ledger
        .append(
            &[simple("t", "t1", "2026-05-21T12:00:00Z", &mac)],
            Some(&mac),
        )
        .await
        .expect("retry");
    assert_eq!(retried, vec![AppendOutcome::Inserted { chain_seq: 1 }]);
}

/// Realistic evidence: a Gateway `gateway_resource_request` (14 metadata members) or an STS
/// `token_exchange` (8 to 16 members, with or without a delegation), uuidv7-shaped ids.
fn realistic(n: u64, at: &str, mac: &ContractMac) -> IncomingEvent {
    let uuid = |kind: u64, i: u64| {
        let h = caracal_core::digest::sha256_hex(format!("{kind}-{i}").as_bytes());
        format!(
            "0197{}-{}-7{}-8{}-{}",
            &h[0..4],
            &h[4..8],
            &h[8..11],
            &h[11..14],
            &h[14..26]
        )
    };
    let zone = uuid(0, n % 5);
    let app = uuid(1, n % 20);
    let data = if n.is_multiple_of(2) {
        serde_json::json!({
            "id": uuid(10, n), "zone_id": zone, "event_type": "gateway_resource_request",
            "request_id": uuid(11, n / 2), "decision": "allow", "evaluation_status": "executed",
            "determining_policies_json": [], "diagnostics_json": [],
            "metadata_json": {
                "application_id": app, "resource": "resource://billing",
                "subject_fingerprint": &caracal_core::digest::sha256_hex(&n.to_be_bytes())[..16],
                "method": "GET", "subject_kind": "application", "auth_mode": "bearer_token",
                "provider_id": uuid(2, n % 10), "upstream_host": "billing.example.com",
                "upstream_status": 200, "result_class": "success", "gateway_status": 200,
                "latency_ms": n % 97, "response_bytes": 1000 + n % 4000,
                "trace_id": &caracal_core::digest::sha256_hex(&n.to_le_bytes())[..32],
            },
            "occurred_at": at,
        })
    } else {
        let mut metadata = serde_json::json!({
            "application_id": app, "application_name": "billing-agent",
            "application_registration_method": "managed", "resource": "resource://billing",
            "requested_scopes": ["invoices:read"], "session_id": uuid(3, n % 3000),
            "agent_session_id": uuid(4, n % 2000),
            "requested": {"method": "GET", "path": "/v1/invoices"},
        });
        if n % 4 == 1 {
            if let Some(m) = metadata.as_object_mut() {
                m.insert("delegation_edge_id".into(), uuid(5, n % 2000).into());
                m.insert("agent_lifecycle".into(), "task".into());
                m.insert("agent_labels".into(), serde_json::json!(["team:payments"]));
                m.insert("agent_depth".into(), 1.into());
                m.insert("agent_parent_id".into(), uuid(6, n % 500).into());
                m.insert(
                    "delegation_chain".into(),
                    serde_json::json!([{"application_id": uuid(1, (n + 1) % 20),
                        "agent_session_id": uuid(6, n % 500), "delegation_edge_id": uuid(5, n % 2000)}]),
                );
                m.insert("delegation_hop_count".into(), 1.into());
                m.insert("delegation_graph_epoch".into(), 7.into());
            }
        }
        serde_json::json!({
            "id": uuid(10, n), "zone_id": zone, "event_type": "token_exchange",
            "request_id": uuid(11, n / 2), "decision": "allow", "evaluation_status": "complete",
            "policy_set_version_id": uuid(7, n % 3),
            "manifest_sha": caracal_core::digest::sha256_hex(&(n % 3).to_be_bytes()),
            "determining_policies_json": [{"policy": "grants"}], "diagnostics_json": [],
            "metadata_json": metadata, "occurred_at": at,
        })
    };
    signed(&data, mac)
}

/// The storage figure of issue #6: bytes per stored event including indexes, for realistic
/// Gateway and STS evidence written through the ledger. Bounded by upstream's 1,843 so a
/// schema change that bloats storage fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_cost_less_than_upstreams_1843_bytes_each() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    // A month of its own, so the figure covers exactly the rows written here.
    ledger
        .apply_retention(micros("2025-03-01T00:00:00Z"), 36500)
        .await
        .expect("partitions");
    let events: u64 = 20_000;
    let base = micros("2025-03-02T00:00:00Z");
    for chunk in 0..events / 500 {
        let batch: Vec<IncomingEvent> = (chunk * 500..(chunk + 1) * 500)
            .map(|n| {
                let at = caracal_core::audit::event::micros_rfc3339(base + n as i64 * 10_000);
                realistic(n, &at, &mac)
            })
            .collect();
        ledger.append(&batch, Some(&mac)).await.expect("append");
    }
    // Everything written reads back exactly and every zone's chain verifies.
    let mut read = 0;
    for zone in 0..5 {
        let zone = realistic(zone, "2025-03-02T00:00:00Z", &mac).event.zone_id;
        read += whole_chain(&ledger, &zone).await.len();
        assert_eq!(first_break(&ledger, &zone, &mac).await, None, "{zone}");
    }
    assert_eq!(read as u64, events);
    for n in [0, 1, 5, 9_998, 19_999] {
        let at = caracal_core::audit::event::micros_rfc3339(base + n as i64 * 10_000);
        let expected = realistic(n, &at, &mac);
        let stored = ledger
            .list(&ListQuery {
                zone_id: expected.event.zone_id.clone(),
                since_micros: Some(expected.event.occurred_at_micros),
                until_micros: Some(expected.event.occurred_at_micros + 1),
                limit: 10,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(
            stored.iter().map(|r| &r.event).collect::<Vec<_>>(),
            [&expected.event],
            "event {n}"
        );
    }
    let mut conn = superuser(&db).await;
    conn.batch_execute("VACUUM ANALYZE audit_events_y2025m03")
        .await
        .expect("vacuum");
    let total: Count =
        diesel::sql_query("SELECT pg_total_relation_size('audit_events_y2025m03') AS n")
            .get_result(&mut conn)
            .await
            .expect("size");
    let heap: Count = diesel::sql_query("SELECT pg_relation_size('audit_events_y2025m03') AS n")
        .get_result(&mut conn)
        .await
        .expect("heap size");
    let rows: Count = diesel::sql_query("SELECT count(*) AS n FROM audit_events_y2025m03")
        .get_result(&mut conn)
        .await
        .expect("rows");
    assert_eq!(rows.n, events as i64);
    let per_event = total.n / rows.n;
    print_breakdown(&mut conn, "audit_events_y2025m03", rows.n).await;
    println!(
        "audit storage: {per_event} bytes/event including indexes ({} heap, {} indexes and the rest) over {} events",
        heap.n / rows.n,
        (total.n - heap.n) / rows.n,
        rows.n
    );
    assert!(
        per_event < 1843,
        "{per_event} bytes per event: no better than upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_created_late_takes_over_its_rows_from_the_default_partition() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let ledger = ledger(&db).await;
    let mac = ContractMac::spec_key();
    // July 2019 has no partition yet: these land in audit_events_default.
    let batch = vec![
        simple("late", "l1", "2019-07-02T00:00:00Z", &mac),
        simple("late", "l2", "2019-08-02T00:00:00Z", &mac),
        simple("late", "l3", "2019-07-03T00:00:00Z", &mac),
    ];
    ledger.append(&batch, Some(&mac)).await.expect("append");
    let report = ledger
        .apply_retention(micros("2019-07-10T00:00:00Z"), 3650)
        .await
        .expect("create July–October 2019");
    assert_eq!(report.created, 4);
    let mut conn = superuser(&db).await;
    let july: Count = diesel::sql_query("SELECT count(*) AS n FROM audit_events_y2019m07")
        .get_result(&mut conn)
        .await
        .expect("july");
    assert_eq!(july.n, 2, "July's rows live in July's partition");
    let in_default: Count =
        diesel::sql_query("SELECT count(*) AS n FROM audit_events_default WHERE id_text LIKE 'l%'")
            .get_result(&mut conn)
            .await
            .expect("default");
    assert_eq!(in_default.n, 0, "moved out of the default partition");
    // Moved unchanged: the chain still verifies, and July can now be dropped on schedule.
    assert_eq!(first_break(&ledger, "late", &mac).await, None);
    let dropped = ledger
        .apply_retention(micros("2019-09-15T00:00:00Z"), 30)
        .await
        .expect("drop July");
    assert_eq!((dropped.dropped, dropped.rows_dropped), (1, 2));
    assert_eq!(first_break(&ledger, "late", &mac).await, None);
    assert_eq!(
        whole_chain(&ledger, "late")
            .await
            .iter()
            .map(|r| r.event.id.as_str())
            .collect::<Vec<_>>(),
        ["l2"]
    );
}
