//! The JSON the audit chain hashes (`spec/audit-streams-storage.md §6.3`): Postgres `jsonb`
//! output, reproduced exactly so the memory ledger, the Postgres ledger and the offline
//! verifier compute the same content hash.
//!
//! `jsonb` text is: object keys sorted by byte length and then bytewise, the last of duplicate
//! keys kept, `": "` and `", "` separators, strings escaped the way Postgres' `escape_json`
//! does (the short escapes, other control characters as lowercase `\u00xx`, everything else
//! raw UTF-8), and numbers in `numeric` form (`1e2` → `100`, `1.50` stays `1.50`, `-0` → `0`).
//!
//! Numbers therefore have to keep their source text, which `serde_json::Value` (without
//! `arbitrary_precision`) does not: this module has its own small parser. It also strips NUL
//! from every string and key (Postgres rejects `\u0000` in `jsonb`), bounds nesting depth and
//! refuses what `jsonb` itself refuses (lone surrogates, exponents beyond numeric's range), so
//! an event either canonicalises here exactly as Postgres would store it or is rejected before
//! it reaches storage.

use std::fmt::Write as _;

/// Deepest nesting accepted; deeper documents are refused rather than risk the stack.
pub const MAX_DEPTH: usize = 64;
/// Largest decimal exponent magnitude accepted in a number. `numeric` itself allows more,
/// but a short string such as `1e100000` would otherwise expand to 100,000 digits.
pub const MAX_EXPONENT: i64 = 1000;

/// A parsed JSON value whose numbers keep their canonical `numeric` text.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, already in Postgres `numeric` output form.
    Number(String),
    /// A string with NUL removed.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object with keys in `jsonb` order, duplicates resolved (last wins).
    Object(Vec<(String, Json)>),
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

impl Json {
    /// Parses one JSON document (surrounding whitespace allowed, nothing else after it).
    pub fn parse(text: &str) -> Result<Json, JsonError> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            at: 0,
        };
        parser.skip_ws();
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.at != parser.bytes.len() {
            return Err(parser.error("unexpected data after the JSON value"));
        }
        Ok(value)
    }

    /// The value as Postgres prints it from `jsonb` (`::jsonb::text`).
    pub fn jsonb_text(&self) -> String {
        let mut out = String::new();
        self.write_jsonb(&mut out);
        out
    }

    fn write_jsonb(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(true) => out.push_str("true"),
            Json::Bool(false) => out.push_str("false"),
            Json::Number(text) => out.push_str(text),
            Json::String(text) => write_string(text, out),
            Json::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    item.write_jsonb(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    write_string(key, out);
                    out.push_str(": ");
                    value.write_jsonb(out);
                }
                out.push('}');
            }
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string inside a `Json::String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }
}

/// Postgres' `escape_json`.
fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Orders keys as `jsonb` does: shorter first, then bytewise.
fn jsonb_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> JsonError {
        JsonError(format!("{what} at byte {}", self.at))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, JsonError> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        match self.bytes.get(self.at) {
            None => Err(self.error("unexpected end of input")),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b'[') => self.array(depth),
            Some(b'{') => self.object(depth),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.at += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.bytes.get(self.at) != Some(&b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.bytes.get(self.at) != Some(&b':') {
                return Err(self.error("expected ':'"));
            }
            self.at += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_ws();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
        // Stable sort keeps duplicates in source order; then keep the last of each run.
        members.sort_by(|a, b| jsonb_key_order(&a.0, &b.0));
        let mut unique: Vec<(String, Json)> = Vec::with_capacity(members.len());
        for member in members {
            match unique.last_mut() {
                Some(last) if last.0 == member.0 => *last = member,
                _ => unique.push(member),
            }
        }
        Ok(Json::Object(unique))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        let value = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.at += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let start = self.at;
            while let Some(&b) = self.bytes.get(self.at) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            let run = std::str::from_utf8(&self.bytes[start..self.at])
                .map_err(|_| self.error("invalid UTF-8"))?;
            out.push_str(run);
            match self.bytes.get(self.at) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.at += 1;
                    // NUL can only arrive through `\u0000`; Postgres refuses it in jsonb.
                    out.retain(|c| c != '\0');
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escape = *self
                        .bytes
                        .get(self.at)
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    self.at += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                if !self.bytes[self.at..].starts_with(b"\\u") {
                                    return Err(self.error("high surrogate without a low one"));
                                }
                                self.at += 2;
                                let second = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&second) {
                                    return Err(self.error("invalid low surrogate"));
                                }
                                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&first) {
                                return Err(self.error("low surrogate without a high one"));
                            } else {
                                first
                            };
                            let ch = char::from_u32(code)
                                .ok_or_else(|| self.error("invalid code point"))?;
                            out.push(ch);
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
            }
        }
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        match self.bytes.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
                    self.at += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        let int_digits = &self.bytes[int_start..self.at];
        let mut frac_digits: &[u8] = &[];
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            let start = self.at;
            while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
                self.at += 1;
            }
            if self.at == start {
                return Err(self.error("invalid number"));
            }
            frac_digits = &self.bytes[start..self.at];
        }
        let mut exponent: i64 = 0;
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            let mut exp_negative = false;
            match self.bytes.get(self.at) {
                Some(b'+') => self.at += 1,
                Some(b'-') => {
                    exp_negative = true;
                    self.at += 1;
                }
                _ => {}
            }
            let start = self.at;
            while let Some(&d @ b'0'..=b'9') = self.bytes.get(self.at) {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(d - b'0'));
                self.at += 1;
            }
            if self.at == start {
                return Err(self.error("invalid number"));
            }
            if exponent > MAX_EXPONENT {
                return Err(self.error("number exponent out of range"));
            }
            if exp_negative {
                exponent = -exponent;
            }
        }
        Ok(Json::Number(numeric_text(
            negative,
            int_digits,
            frac_digits,
            exponent,
        )))
    }
}

/// Postgres `numeric` output of `[-]int.frac e exponent`: the display scale is the number of
/// fraction digits minus the exponent (never below 0); leading zeros go, zero has no sign.
fn numeric_text(negative: bool, int_digits: &[u8], frac_digits: &[u8], exponent: i64) -> String {
    // All significant digits, and where the decimal point sits among them.
    let mut digits: Vec<u8> = Vec::with_capacity(int_digits.len() + frac_digits.len());
    digits.extend_from_slice(int_digits);
    digits.extend_from_slice(frac_digits);
    let mut point = int_digits.len() as i64 + exponent;
    let scale = (frac_digits.len() as i64 - exponent).max(0) as usize;
    // Pad so the point lies within [0, len] and exactly `scale` digits follow it.
    if point < 0 {
        let pad = (-point) as usize;
        let mut padded = vec![b'0'; pad];
        padded.extend_from_slice(&digits);
        digits = padded;
        point = 0;
    }
    let point = point as usize;
    while digits.len() < point {
        digits.push(b'0');
    }
    while digits.len() - point < scale {
        digits.push(b'0');
    }
    // Digits beyond the scale are zeros (the scale already counts every fraction digit).
    digits.truncate(point + scale);
    let (int_part, frac_part) = digits.split_at(point);
    let int_trimmed: &[u8] = {
        let first = int_part.iter().position(|&d| d != b'0');
        match first {
            Some(i) => &int_part[i..],
            None => b"0",
        }
    };
    let is_zero = int_trimmed == b"0" && frac_part.iter().all(|&d| d == b'0');
    let mut out = String::with_capacity(int_trimmed.len() + frac_part.len() + 2);
    if negative && !is_zero {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(int_trimmed).unwrap_or("0"));
    if scale > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(frac_part).unwrap_or(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        Json::parse(text).expect("valid JSON").jsonb_text()
    }

    #[test]
    fn keys_sort_by_length_then_bytes_and_the_last_duplicate_wins() {
        assert_eq!(
            canon(r#"{"trace_id":"t","app":"a"}"#),
            r#"{"app": "a", "trace_id": "t"}"#
        );
        assert_eq!(canon(r#"{"b":1,"a":2,"b":3}"#), r#"{"a": 2, "b": 3}"#);
        assert_eq!(
            canon(r#"{"bb":1,"a":{"z":[1,2],"y":{}}}"#),
            r#"{"a": {"y": {}, "z": [1, 2]}, "bb": 1}"#
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon(" [ null , true,false ] "), "[null, true, false]");
    }

    #[test]
    fn numbers_take_numeric_form() {
        for (input, expected) in [
            ("1e2", "100"),
            ("1.0e2", "100"),
            ("1.50", "1.50"),
            ("-0", "0"),
            ("-0.00", "0.00"),
            ("0.0", "0.0"),
            ("1E-3", "0.001"),
            ("1.5e-3", "0.0015"),
            ("12.345e1", "123.45"),
            ("-12.5e+1", "-125"),
            ("0e5", "0"),
            ("0.000e2", "0.0"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("5", "5"),
            ("-7.25", "-7.25"),
        ] {
            assert_eq!(canon(input), expected, "{input}");
        }
    }

    #[test]
    fn strings_use_postgres_escapes_and_lose_nul() {
        assert_eq!(canon(r#""a\u0000b""#), r#""ab""#);
        assert_eq!(
            canon(r#""\u00e9\/\"\\\n\u0001\t""#),
            "\"é/\\\"\\\\\\n\\u0001\\t\""
        );
        assert_eq!(canon(r#""\ud83d\ude00""#), "\"😀\"");
        assert_eq!(canon(r#"{"a\u0000":1}"#), r#"{"a": 1}"#);
    }

    #[test]
    fn what_jsonb_refuses_is_refused() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "1e",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"raw\u{1}control\"",
            "1e1001",
            "nul",
            "[1] 2",
            "'a'",
        ] {
            assert!(Json::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(Json::parse(&deep).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Json::parse(&ok).is_ok());
    }
}
