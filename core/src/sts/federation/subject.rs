//! The federated subject identifier (`spec/sts.md §9`).
//!
//! Any stable identifier format an issuer may use is admitted (UUIDs, emails, numeric ids,
//! `auth0|…`, URIs, names in any script) and stored byte for byte, never trimmed, normalised or
//! case-folded: two byte-distinct values are two subjects. Only values unsafe to store, index,
//! log or display are refused, each for a reason:
//! - empty, or longer than 512 bytes (well under a btree index row);
//! - prefixed `caracal:` (the namespace of Caracal's own subjects, which an external issuer
//!   must not be able to claim);
//! - invalid UTF-8 or U+FFFD: the token payload is decoded with invalid sequences replaced by
//!   U+FFFD (as upstream's JSON decoder does), so both arrive here as U+FFFD, and a replacement
//!   character would let two byte-distinct upstream values collapse into one stored identity;
//! - control characters (NUL, which Postgres text refuses; newlines and escapes, which forge
//!   log lines);
//! - bidirectional overrides U+202A–U+202E and isolates U+2066–U+2069, which reorder the text
//!   around them in a console;
//! - leading or trailing whitespace, refused rather than trimmed so the stored value is always
//!   exactly what the issuer signed.

/// Longest accepted `sub`, in bytes.
pub(crate) const MAX_SUB_BYTES: usize = 512;

/// Why `sub` cannot be a federated subject, if it cannot.
pub(crate) fn problem(sub: &str) -> Option<&'static str> {
    if sub.is_empty() {
        return Some("subject token carries no sub");
    }
    if sub.len() > MAX_SUB_BYTES {
        return Some("sub exceeds 512 bytes");
    }
    if sub.starts_with("caracal:") {
        return Some("sub uses the reserved caracal: prefix");
    }
    if sub.trim() != sub {
        return Some("sub carries leading or trailing whitespace");
    }
    for c in sub.chars() {
        if c.is_control() {
            return Some("sub contains control characters");
        }
        if c == char::REPLACEMENT_CHARACTER {
            return Some("sub is not valid UTF-8 or contains the unicode replacement character");
        }
        if matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            return Some("sub contains bidirectional control characters");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_identifier_formats_are_admitted_verbatim() {
        for ok in [
            "248289761001",
            "user@example.com",
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "0190f5c2-7a4b-7cc3-9a7e-1b2c3d4e5f60",
            "https://idp.example/users/42",
            "Zoë Ångström",
            "用户-42",
            "a b",
            "CARACAL:upper-case is not the reserved prefix",
            "x:caracal:inside",
            &"x".repeat(512),
        ] {
            assert_eq!(problem(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn every_rejection_class() {
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "subject token carries no sub"),
            ("x".repeat(513), "sub exceeds 512 bytes"),
            // 171 three-byte characters: 513 bytes, though only 171 characters.
            ("語".repeat(171), "sub exceeds 512 bytes"),
            (
                "caracal:app-1".into(),
                "sub uses the reserved caracal: prefix",
            ),
            ("caracal:".into(), "sub uses the reserved caracal: prefix"),
            (
                " alice".into(),
                "sub carries leading or trailing whitespace",
            ),
            (
                "alice ".into(),
                "sub carries leading or trailing whitespace",
            ),
            (
                "alice\u{a0}".into(),
                "sub carries leading or trailing whitespace",
            ),
            (
                "\u{3000}alice".into(),
                "sub carries leading or trailing whitespace",
            ),
            (
                "\talice".into(),
                "sub carries leading or trailing whitespace",
            ),
            ("ali\u{0}ce".into(), "sub contains control characters"),
            ("ali\nce".into(), "sub contains control characters"),
            ("ali\u{1b}[31mce".into(), "sub contains control characters"),
            ("ali\u{7f}ce".into(), "sub contains control characters"),
            ("ali\u{85}ce".into(), "sub contains control characters"),
            (
                "ali\u{fffd}ce".into(),
                "sub is not valid UTF-8 or contains the unicode replacement character",
            ),
            (
                String::from_utf8_lossy(b"ali\xffce").into_owned(),
                "sub is not valid UTF-8 or contains the unicode replacement character",
            ),
            (
                "admin\u{202e}txt.exe".into(),
                "sub contains bidirectional control characters",
            ),
            (
                "a\u{202a}b".into(),
                "sub contains bidirectional control characters",
            ),
            (
                "a\u{2066}b".into(),
                "sub contains bidirectional control characters",
            ),
            (
                "a\u{2069}b".into(),
                "sub contains bidirectional control characters",
            ),
        ];
        for (sub, why) in cases {
            assert_eq!(problem(&sub), Some(why), "{sub:?}");
        }
        // Bidi marks outside the override and isolate ranges are ordinary text.
        assert_eq!(problem("a\u{200f}b"), None);
        assert_eq!(problem("a\u{2065}b"), None);
    }
}
