//! The compact binary form the Postgres ledger stores an event's JSON fields in (`bytea`), in
//! place of `jsonb`: the issue's storage budget (≤ 900 bytes per event including indexes;
//! upstream 1,843) cannot be met with `jsonb`, which repeats every key name in every row, gives
//! each member a 4-byte entry header and stores uuids and hex digests as text. Postgres only
//! compresses rows above ~2 kB, so a typical event is stored raw.
//!
//! The form is exact and canonical: [`pack`] accepts precisely the values [`Json::parse`] can
//! produce (object keys in `jsonb` order without duplicates, no NUL, numbers in `numeric`
//! form, nesting within [`MAX_DEPTH`]); [`unpack`] accepts precisely what `pack` writes and
//! returns the same value, so `unpack(pack(x))?.jsonb_text()` is the text the chain hashed, byte
//! for byte. Every value has exactly one packed form, and anything else — a truncated or
//! altered row, another format — is an error, never a panic and never a different value.
//!
//! # Format 1
//!
//! A packed document is the format byte [`FORMAT_1`] followed by one value. Lengths and counts
//! are unsigned LEB128 varints in their shortest form. A value is a tag byte and its body:
//!
//! | tag | value | body |
//! |---|---|---|
//! | `0x00` / `0x01` / `0x02` | `null` / `false` / `true` | — |
//! | `0x03` | a number that is not an integer of `0x04`/`0x05` | varint length, its `numeric` text (ASCII) |
//! | `0x04` | an integer 0 ≤ n < 2⁶⁴ written without sign, point or leading zero | varint n |
//! | `0x05` | an integer −2⁶⁴ < n < 0 written the same way | varint −n |
//! | `0x06` | a string that fits neither `0x07` nor `0x08` | varint length, UTF-8 |
//! | `0x07` | a string that is a uuid in canonical lowercase form (`8-4-4-4-12` hex) | its 16 bytes |
//! | `0x08` | a non-empty string of an even number of lowercase hex digits | varint byte count, the bytes |
//! | `0x09` | an array | varint count, the items |
//! | `0x0a` | an object | varint count, then per member (in `jsonb` order): key, value |
//!
//! A key is a varint `k`: `0` is followed by a literal key (varint length, UTF-8); `k ≥ 1` names
//! entry `k − 1` of [`KEYS`], the fixed dictionary of the metadata keys producers emit.
//!
//! # Compatibility
//!
//! Rows outlive releases. [`KEYS`] may only ever be **appended to**: an entry's position is
//! its stored code, so reordering, renaming or removing one would silently change stored
//! evidence (the chain would then catch it as tampering). A change to anything else in the
//! layout is a new format byte, and `unpack` keeps reading every earlier one.

use super::json::{Json, MAX_DEPTH};

/// The format byte of the layout described in the module documentation.
pub const FORMAT_1: u8 = 0x01;

/// Metadata keys stored as one byte: `spec/audit-streams-storage.md §4`'s common keys first,
/// then the ones our producers emit (Gateway telemetry, STS exchange, approval and federation
/// evidence, the API's). **Append only** — see the module documentation.
pub const KEYS: &[&str] = &[
    // §4, in the spec's order.
    "application_id",
    "resource",
    "requested_scopes",
    "session_id",
    "agent_session_id",
    "delegation_edge_id",
    "delegation_chain",
    "delegation_hop_count",
    "delegation_graph_epoch",
    "subject_kind",
    "trace_id",
    "agent_labels",
    "challenge_id",
    "tier",
    "approver_class",
    "privacy_mode",
    "binding",
    "method",
    "gateway_status",
    "latency_ms",
    "upstream_host",
    "upstream_status",
    "result_class",
    "response_bytes",
    "subject_fingerprint",
    "error_kind",
    // Gateway (services/gateway/src/audit.rs, core/src/gateway/evidence.rs).
    "revocation_interrupted",
    "auth_mode",
    "connection_id",
    "provider_id",
    "jti",
    "client_id",
    "subject_fp",
    "request_id",
    // STS exchange, approvals and federation (core/src/sts).
    "application_name",
    "application_registration_method",
    "requested",
    "path",
    "agent_lifecycle",
    "agent_depth",
    "agent_parent_id",
    "reason",
    "resources",
    "policy_set_version_id",
    "policy_manifest_sha",
    "decision_contract_version",
    "decision_contract_sha",
    "expires_at",
    "subject_anchor",
    "reissued",
    "authority_record_id",
    "approver_plane",
    "approver_session_id",
    "decision_request_id",
    "federated_user_issuer",
    // determining_policies_json / diagnostics_json members.
    "policy",
    "error",
    // API (core/src/manage).
    "credential",
    "actor",
];

const NULL: u8 = 0x00;
const FALSE: u8 = 0x01;
const TRUE: u8 = 0x02;
const NUMBER: u8 = 0x03;
const UINT: u8 = 0x04;
const NEG_INT: u8 = 0x05;
const STRING: u8 = 0x06;
const UUID: u8 = 0x07;
const HEX: u8 = 0x08;
const ARRAY: u8 = 0x09;
const OBJECT: u8 = 0x0a;

/// Why a value cannot be packed, or bytes cannot be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// The value is not one [`Json::parse`] produces (so its packed form would not be exact).
    #[error("not a canonical jsonb value: {0}")]
    NotCanonical(String),
    /// The bytes are not a packed document.
    #[error("corrupt packed JSON at byte {at}: {what}")]
    Corrupt {
        /// Offset of the problem.
        at: usize,
        /// What is wrong there.
        what: String,
    },
}

/// Packs a canonical value (see the module documentation).
pub fn pack(value: &Json) -> Result<Vec<u8>, PackError> {
    let mut out = vec![FORMAT_1];
    write_value(value, 0, &mut out)?;
    Ok(out)
}

/// Unpacks a document [`pack`] wrote.
pub fn unpack(bytes: &[u8]) -> Result<Json, PackError> {
    let mut reader = Reader { bytes, at: 0 };
    match reader.byte()? {
        FORMAT_1 => {}
        other => return Err(corrupt_at(0, format!("unknown format byte {other:#04x}"))),
    }
    let value = reader.value(0)?;
    if reader.at != bytes.len() {
        return Err(reader.corrupt("data after the value"));
    }
    Ok(value)
}

// -------------------------------------------------------------------------------------------
// Writing
// -------------------------------------------------------------------------------------------

fn write_value(value: &Json, depth: usize, out: &mut Vec<u8>) -> Result<(), PackError> {
    if depth > MAX_DEPTH {
        return Err(PackError::NotCanonical("nesting too deep".into()));
    }
    match value {
        Json::Null => out.push(NULL),
        Json::Bool(false) => out.push(FALSE),
        Json::Bool(true) => out.push(TRUE),
        Json::Number(text) => match integer(text) {
            Some((false, n)) => {
                out.push(UINT);
                write_varint(n, out);
            }
            Some((true, n)) => {
                out.push(NEG_INT);
                write_varint(n, out);
            }
            None => {
                if !is_canonical_number(text) {
                    return Err(PackError::NotCanonical(format!(
                        "{text:?} is not a number in numeric form"
                    )));
                }
                out.push(NUMBER);
                write_bytes(text.as_bytes(), out);
            }
        },
        Json::String(text) => {
            check_no_nul(text)?;
            if let Some(uuid) = uuid_bytes(text) {
                out.push(UUID);
                out.extend_from_slice(&uuid);
            } else if let Some(bytes) = hex_bytes(text) {
                out.push(HEX);
                write_bytes(&bytes, out);
            } else {
                out.push(STRING);
                write_bytes(text.as_bytes(), out);
            }
        }
        Json::Array(items) => {
            out.push(ARRAY);
            write_varint(items.len() as u64, out);
            for item in items {
                write_value(item, depth + 1, out)?;
            }
        }
        Json::Object(members) => {
            out.push(OBJECT);
            write_varint(members.len() as u64, out);
            let mut previous: Option<&str> = None;
            for (key, item) in members {
                check_no_nul(key)?;
                if previous.is_some_and(|p| !jsonb_key_before(p, key)) {
                    return Err(PackError::NotCanonical(format!(
                        "object key {key:?} is out of jsonb order or repeated"
                    )));
                }
                previous = Some(key);
                match KEYS.iter().position(|k| k == key) {
                    Some(index) => write_varint(index as u64 + 1, out),
                    None => {
                        out.push(0);
                        write_bytes(key.as_bytes(), out);
                    }
                }
                write_value(item, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

fn check_no_nul(text: &str) -> Result<(), PackError> {
    if text.contains('\0') {
        return Err(PackError::NotCanonical("NUL in a string".into()));
    }
    Ok(())
}

fn write_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    write_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

// -------------------------------------------------------------------------------------------
// Classification (shared by both directions, so each value has exactly one form)
// -------------------------------------------------------------------------------------------

/// `jsonb`'s key order: shorter first, then bytewise (as `json.rs` sorts objects).
fn jsonb_key_before(a: &str, b: &str) -> bool {
    (a.len(), a.as_bytes()) < (b.len(), b.as_bytes())
}

/// A number text that is a plain integer (`0`, `[1-9][0-9]*`, with `-` when non-zero) of
/// magnitude below 2⁶⁴: its sign and magnitude.
fn integer(text: &str) -> Option<(bool, u64)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let first = *digits.as_bytes().first()?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (first == b'0' && digits.len() > 1) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    if negative && n == 0 {
        return None;
    }
    Some((negative, n))
}

/// Whether `text` is a number exactly as [`Json::parse`] prints it.
fn is_canonical_number(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
        && matches!(Json::parse(text), Ok(Json::Number(ref canonical)) if canonical == text)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The 16 bytes of a uuid in canonical lowercase form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23));
    for slot in &mut out {
        let (_, &high) = digits.next()?;
        let (_, &low) = digits.next()?;
        *slot = hex_digit(high)? << 4 | hex_digit(low)?;
    }
    [8, 13, 18, 23]
        .iter()
        .all(|&i| bytes[i] == b'-')
        .then_some(out)
}

/// A canonical lowercase uuid's text.
fn uuid_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX_DIGITS[usize::from(b >> 4)] as char);
        out.push(HEX_DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// The bytes of a non-empty, even-length string of lowercase hex digits.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?))
        .collect()
}

fn hex_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX_DIGITS[usize::from(b >> 4)] as char);
        out.push(HEX_DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

// -------------------------------------------------------------------------------------------
// Reading
// -------------------------------------------------------------------------------------------

fn corrupt_at(at: usize, what: impl Into<String>) -> PackError {
    PackError::Corrupt {
        at,
        what: what.into(),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn corrupt(&self, what: impl Into<String>) -> PackError {
        corrupt_at(self.at, what)
    }

    fn byte(&mut self) -> Result<u8, PackError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.corrupt("unexpected end"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&[u8], PackError> {
        let remaining = self.bytes.len() - self.at;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or_else(|| self.corrupt(format!("length {n} runs past the end")))?;
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    /// A shortest-form unsigned LEB128 of at most 64 bits.
    fn varint(&mut self) -> Result<u64, PackError> {
        let start = self.at;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(corrupt_at(start, "varint overflows 64 bits"));
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(corrupt_at(start, "varint not in shortest form"));
                }
                return Ok(n);
            }
        }
        Err(corrupt_at(start, "varint overflows 64 bits"))
    }

    fn text(&mut self) -> Result<String, PackError> {
        let start = self.at;
        let len = self.varint()?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| corrupt_at(start, "invalid UTF-8"))?
            .to_owned();
        if text.contains('\0') {
            return Err(corrupt_at(start, "NUL in a string"));
        }
        Ok(text)
    }

    /// A count of items that each take at least one byte: never more than remain, so a
    /// corrupt count cannot make us allocate beyond the input's size.
    fn count(&mut self) -> Result<usize, PackError> {
        let start = self.at;
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.at)
            .ok_or_else(|| corrupt_at(start, format!("count {n} exceeds the input")))
    }

    fn value(&mut self, depth: usize) -> Result<Json, PackError> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt("nesting too deep"));
        }
        let start = self.at;
        let tag = self.byte()?;
        Ok(match tag {
            NULL => Json::Null,
            FALSE => Json::Bool(false),
            TRUE => Json::Bool(true),
            NUMBER => {
                let text = self.text()?;
                if integer(&text).is_some() || !is_canonical_number(&text) {
                    return Err(corrupt_at(start, "number not in its packed form"));
                }
                Json::Number(text)
            }
            UINT => Json::Number(self.varint()?.to_string()),
            NEG_INT => match self.varint()? {
                0 => return Err(corrupt_at(start, "negative zero")),
                n => Json::Number(format!("-{n}")),
            },
            STRING => {
                let text = self.text()?;
                if uuid_bytes(&text).is_some() || hex_bytes(&text).is_some() {
                    return Err(corrupt_at(start, "string not in its packed form"));
                }
                Json::String(text)
            }
            UUID => Json::String(uuid_text(self.take(16)?)),
            HEX => {
                let len = self.varint()?;
                if len == 0 {
                    return Err(corrupt_at(start, "empty hex string"));
                }
                Json::String(hex_text(self.take(len)?))
            }
            ARRAY => {
                let count = self.count()?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Json::Array(items)
            }
            OBJECT => {
                let count = self.count()?;
                let mut members: Vec<(String, Json)> = Vec::with_capacity(count);
                for _ in 0..count {
                    let key_at = self.at;
                    let key = match self.varint()? {
                        0 => {
                            let key = self.text()?;
                            if KEYS.contains(&key.as_str()) {
                                return Err(corrupt_at(key_at, "dictionary key stored literally"));
                            }
                            key
                        }
                        code => usize::try_from(code - 1)
                            .ok()
                            .and_then(|i| KEYS.get(i))
                            .ok_or_else(|| corrupt_at(key_at, format!("unknown key code {code}")))?
                            .to_string(),
                    };
                    if members
                        .last()
                        .is_some_and(|(previous, _)| !jsonb_key_before(previous, &key))
                    {
                        return Err(corrupt_at(key_at, "object keys out of jsonb order"));
                    }
                    let item = self.value(depth + 1)?;
                    members.push((key, item));
                }
                Json::Object(members)
            }
            other => return Err(corrupt_at(start, format!("unknown tag {other:#04x}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Json {
        Json::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Packs the canonical value of `text` and checks it comes back identical, as a value and
    /// as jsonb text; returns the packed bytes.
    fn round_trip(text: &str) -> Vec<u8> {
        let value = parse(text);
        let packed = pack(&value).unwrap_or_else(|e| panic!("pack {text}: {e}"));
        let back = unpack(&packed).unwrap_or_else(|e| panic!("unpack {text}: {e}"));
        assert_eq!(back, value, "{text}");
        assert_eq!(back.jsonb_text(), value.jsonb_text(), "{text}");
        packed
    }

    #[test]
    fn every_shape_round_trips_exactly() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "42",
            "18446744073709551615",
            "18446744073709551616",
            "-18446744073709551615",
            "-18446744073709551616",
            "123456789012345678901234567890",
            "1e2",
            "1.50",
            "-0",
            "-0.00",
            "0.0",
            "1E-3",
            "-12.5e+1",
            "1e300",
            "5e-20",
            "3.14159265358979323846264338327950288419716939937510",
            r#""""#,
            r#""plain""#,
            r#""\"\\\/\b\f\n\r\t\u0001\u001f\u007f\u2028""#,
            r#""a\u0000b""#,
            r#""ключ значение 😀 \ud83d\ude00 é\u00e9e\u0301""#,
            "[]",
            "{}",
            "[[[]], {}, [{}], null, true, false]",
            r#"{"":0,"é":1,"z":2,"aa":[],"b":{}}"#,
            r#"{"b":1,"a":2,"b":3}"#,
            r#"{"application_id":"0197a000-0000-7000-8000-000000000001","resource":"resource://billing","subject_fingerprint":"ba7816bf8f01cfea","method":"GET","gateway_status":200,"latency_ms":12,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","not_in_the_dictionary":{"nested_unknown":[1,"x"]}}"#,
            r#"[{"policy":"grants"}]"#,
            r#"[{"error":"boom"}]"#,
            r#"{"agent_labels":{"team":"payments","prod":true},"delegation_chain":[{"application_id":"a","agent_session_id":"0197a000-0000-7000-8000-00000000000a"}]}"#,
        ] {
            round_trip(text);
        }
        let deepest = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        round_trip(&deepest);
        let deep_object = "{\"a\":".repeat(MAX_DEPTH) + "1" + &"}".repeat(MAX_DEPTH);
        round_trip(&deep_object);
        // Long strings, arrays and objects need multi-byte varints.
        let long = format!("\"{}\"", "x".repeat(20_000));
        round_trip(&long);
        let many = format!("[{}]", vec!["1"; 300].join(","));
        round_trip(&many);
        let wide = format!(
            "{{{}}}",
            (0..300)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        round_trip(&wide);
    }

    /// A small deterministic generator of JSON texts mixing every feature the packer treats
    /// specially (no randomness crate: xorshift with a fixed seed, so failures reproduce).
    struct Generator(u64);

    impl Generator {
        fn next(&mut self, below: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % below as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.next(from.len())]
        }

        fn document(&mut self, depth: usize) -> String {
            const NUMBERS: &[&str] = &[
                "0",
                "-0",
                "7",
                "-7",
                "200",
                "1e2",
                "1.50",
                "-0.001",
                "2.5E+3",
                "1e-7",
                "18446744073709551615",
                "18446744073709551616",
                "-18446744073709551616",
                "99999999999999999999999999.000",
                "0.0",
            ];
            const STRINGS: &[&str] = &[
                "",
                "a",
                "GET",
                "resource://billing",
                "0197a000-0000-7000-8000-00000000000a",
                "0197A000-0000-7000-8000-00000000000A",
                "ba7816bf8f01cfea",
                "BA7816BF",
                "abc",
                "00",
                r"\u00e9t\u00e9",
                "😀",
                r"\ud83d\ude00",
                r"tab\there",
                r"nul\u0000gone",
                "application_id",
                r#"\"quoted\\"#,
            ];
            const KEYS_USED: &[&str] = &[
                "application_id",
                "trace_id",
                "agent_labels",
                "policy",
                "actor",
                "a",
                "b",
                "aa",
                "",
                "é",
                "unknown_key",
                "0197a000-0000-7000-8000-00000000000a",
                r"k\u0000",
            ];
            let kind = if depth >= 5 {
                self.next(4)
            } else {
                self.next(7)
            };
            match kind {
                0 => self.pick(&["null", "true", "false"]).to_owned(),
                1 => self.pick(NUMBERS).to_owned(),
                2 | 3 => format!("\"{}\"", self.pick(STRINGS)),
                4 => {
                    let n = self.next(5);
                    let items: Vec<String> = (0..n).map(|_| self.document(depth + 1)).collect();
                    format!("[{}]", items.join(","))
                }
                _ => {
                    // Duplicate keys included: parse keeps the last.
                    let n = self.next(7);
                    let members: Vec<String> = (0..n)
                        .map(|_| {
                            let key = self.pick(KEYS_USED);
                            format!("\"{key}\":{}", self.document(depth + 1))
                        })
                        .collect();
                    format!("{{{}}}", members.join(","))
                }
            }
        }
    }

    #[test]
    fn generated_documents_round_trip() {
        let mut generator = Generator(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let text = generator.document(0);
            round_trip(&text);
        }
    }

    #[test]
    fn every_dictionary_key_round_trips_in_one_byte() {
        assert!(KEYS.len() < 128, "a second byte would be needed");
        let mut seen = std::collections::HashSet::new();
        for key in KEYS {
            assert!(seen.insert(key), "{key} listed twice");
            let packed = round_trip(&format!("{{\"{key}\":null}}"));
            // format, object tag, count, key code, null.
            assert_eq!(packed.len(), 5, "{key}");
        }
    }

    #[test]
    fn the_dictionary_is_append_only() {
        // Stored rows name keys by position: these codes must never change.
        for (code, key) in [
            (1, "application_id"),
            (5, "agent_session_id"),
            (12, "agent_labels"),
            (26, "error_kind"),
            (27, "revocation_interrupted"),
            (35, "application_name"),
            (56, "policy"),
            (59, "actor"),
        ] {
            assert_eq!(KEYS[code - 1], key, "code {code}");
        }
        assert_eq!(KEYS.len(), 59, "new keys go at the end; update this count");
    }

    #[test]
    fn uuids_and_hex_are_packed_as_bytes_and_only_when_exact() {
        let uuid = "0197a000-0000-7000-8000-00000000000a";
        assert_eq!(round_trip(&format!("\"{uuid}\"")).len(), 1 + 1 + 16);
        assert_eq!(round_trip(r#""4bf92f3577b34da6""#).len(), 1 + 1 + 1 + 8);
        // Strings that look close but must stay text (as their own bytes), so they come back
        // exactly as written.
        for text in [
            "0197A000-0000-7000-8000-00000000000A",
            "0197a000-0000-7000-8000-00000000000",
            "0197a000-0000-7000-8000-00000000000a0",
            "0197a000_0000-7000-8000-00000000000a",
            "{0197a000-0000-7000-8000-00000000000a}",
            "0197a00000007000800000000000000a",
            "ABCDEF",
            "abc",
            "0x12",
            " 12",
            "g0",
        ] {
            let packed = round_trip(&format!("\"{text}\""));
            let shrunk = uuid_bytes(text).is_some() || hex_bytes(text).is_some();
            assert_eq!(
                packed.len() < text.len() + 3,
                shrunk,
                "{text}: only canonical lowercase forms are compacted"
            );
        }
        // The 32-digit form without hyphens is hex, not a uuid: it comes back without hyphens.
        assert_eq!(
            unpack(&round_trip(r#""0197a00000007000800000000000000a""#))
                .expect("unpack")
                .as_str(),
            Some("0197a00000007000800000000000000a")
        );
    }

    #[test]
    fn integers_are_varints_and_other_numbers_keep_their_text() {
        assert_eq!(round_trip("200"), vec![FORMAT_1, UINT, 0xc8, 0x01]);
        assert_eq!(round_trip("-1"), vec![FORMAT_1, NEG_INT, 0x01]);
        assert_eq!(round_trip("0"), vec![FORMAT_1, UINT, 0x00]);
        let mut expected = vec![FORMAT_1, NUMBER, 4];
        expected.extend_from_slice(b"1.50");
        assert_eq!(round_trip("1.50"), expected);
        // Past u64: text.
        assert_eq!(round_trip("18446744073709551616")[1], NUMBER);
    }

    #[test]
    fn values_parse_cannot_produce_are_refused() {
        for bad in [
            Json::Number("1e2".into()),
            Json::Number("01".into()),
            Json::Number("-0".into()),
            Json::Number("+1".into()),
            Json::Number(" 1".into()),
            Json::Number("".into()),
            Json::Number("null".into()),
            Json::Number("1.".into()),
            Json::String("a\0b".into()),
            Json::Object(vec![("b".into(), Json::Null), ("a".into(), Json::Null)]),
            Json::Object(vec![("a".into(), Json::Null), ("a".into(), Json::Null)]),
            Json::Object(vec![("bb".into(), Json::Null), ("c".into(), Json::Null)]),
            Json::Object(vec![("k\0".into(), Json::Null)]),
        ] {
            assert!(
                matches!(pack(&bad), Err(PackError::NotCanonical(_))),
                "{bad:?}"
            );
        }
        let mut deep = Json::Null;
        for _ in 0..=MAX_DEPTH + 1 {
            deep = Json::Array(vec![deep]);
        }
        assert!(pack(&deep).is_err());
    }

    #[test]
    fn corrupt_input_is_an_error_never_a_panic_or_another_value() {
        let corrupt = |bytes: &[u8]| {
            assert!(
                matches!(unpack(bytes), Err(PackError::Corrupt { .. })),
                "{bytes:02x?} must be refused"
            );
        };
        corrupt(&[]);
        corrupt(&[FORMAT_1]);
        corrupt(&[0x02, NULL]);
        corrupt(b"{\"a\": 1}");
        corrupt(&[FORMAT_1, 0x0b]);
        corrupt(&[FORMAT_1, NULL, NULL]);
        // Truncated bodies and lengths past the end.
        corrupt(&[FORMAT_1, UUID, 1, 2, 3]);
        corrupt(&[FORMAT_1, STRING, 5, b'a']);
        corrupt(&[
            FORMAT_1, STRING, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ]);
        corrupt(&[FORMAT_1, ARRAY, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        corrupt(&[FORMAT_1, OBJECT, 2, 1, NULL]);
        // Varints: overlong, overflowing, unterminated.
        corrupt(&[FORMAT_1, UINT, 0x80, 0x00]);
        corrupt(&[
            FORMAT_1, UINT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]);
        corrupt(&[FORMAT_1, UINT, 0xff]);
        // Not the one packed form of their value.
        corrupt(&[FORMAT_1, NEG_INT, 0]);
        corrupt(&[FORMAT_1, NUMBER, 2, b'4', b'2']);
        corrupt(&[FORMAT_1, NUMBER, 3, b'1', b'e', b'2']);
        corrupt(&[FORMAT_1, NUMBER, 1, b'x']);
        corrupt(&[FORMAT_1, STRING, 2, b'a', b'b']);
        corrupt(&[FORMAT_1, HEX, 0]);
        corrupt(&[
            FORMAT_1, OBJECT, 1, 0, 14, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o',
            b'n', b'_', b'i', b'd', NULL,
        ]);
        // Bad text.
        corrupt(&[FORMAT_1, STRING, 2, 0xc3, 0x28]);
        corrupt(&[FORMAT_1, STRING, 1, 0]);
        corrupt(&[FORMAT_1, OBJECT, 1, 0, 1, 0, NULL]);
        // Keys: unknown codes, out of order, repeated.
        corrupt(&[FORMAT_1, OBJECT, 1, 0x7f, NULL]);
        corrupt(&[FORMAT_1, OBJECT, 2, 0, 1, b'b', NULL, 0, 1, b'a', NULL]);
        corrupt(&[FORMAT_1, OBJECT, 2, 0, 1, b'a', NULL, 0, 1, b'a', NULL]);
        corrupt(&[FORMAT_1, OBJECT, 2, 1, NULL, 0, 1, b'a', NULL]);
        // Nesting beyond what parse accepts.
        let mut deep = vec![FORMAT_1];
        deep.extend(std::iter::repeat_n([ARRAY, 1], MAX_DEPTH + 1).flatten());
        deep.push(NULL);
        corrupt(&deep);
        // Every truncation and every single-byte change of a real document is either refused
        // or still a different, valid document — never the original value, never a panic.
        let original = parse(
            r#"{"application_id":"0197a000-0000-7000-8000-000000000001","latency_ms":12,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","x":[1.5,"é",{"y":null}]}"#,
        );
        let packed = pack(&original).expect("pack");
        for len in 0..packed.len() {
            corrupt(&packed[..len]);
        }
        for at in 0..packed.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut altered = packed.clone();
                altered[at] ^= flip;
                if let Ok(value) = unpack(&altered) {
                    assert_ne!(value, original, "byte {at} ^ {flip:#x}");
                    assert_eq!(
                        pack(&value).expect("what unpack returns packs"),
                        altered,
                        "one packed form per value"
                    );
                }
            }
        }
    }

    #[test]
    fn realistic_metadata_packs_to_under_two_fifths_of_its_text() {
        let text = r#"{"application_id":"0197a000-0000-7000-8000-000000000001","resource":"resource://billing","subject_fingerprint":"ba7816bf8f01cfea","method":"GET","subject_kind":"application","auth_mode":"bearer_token","provider_id":"0197a000-0000-7000-8000-000000000002","upstream_host":"billing.example.com","upstream_status":200,"result_class":"success","gateway_status":200,"latency_ms":12,"response_bytes":1834,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;
        let canonical = parse(text).jsonb_text();
        let packed = round_trip(text);
        assert!(
            packed.len() * 5 < canonical.len() * 2,
            "{} packed bytes for {} bytes of jsonb text",
            packed.len(),
            canonical.len()
        );
    }
}
