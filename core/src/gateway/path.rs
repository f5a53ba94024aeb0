//! B9: traversal, the upstream path join and the query merge.

use std::collections::BTreeMap;

/// How many percent-decoding rounds [`traversal_free`] performs before giving up on a path that
/// keeps changing (the SDK uses the same bound).
const MAX_DECODE_ROUNDS: usize = 8;

/// Whether `path` (already percent-decoded once by the server) is free of traversal: it is
/// percent-decoded repeatedly until stable; a decoding error, a `\`, or any `.`/`..` segment
/// (in any round) rejects it.
pub fn traversal_free(path: &str) -> bool {
    let mut current = path.to_owned();
    for _ in 0..MAX_DECODE_ROUNDS {
        if current.contains('\\') || current.split('/').any(|seg| seg == "." || seg == "..") {
            return false;
        }
        let Some(bytes) = percent_decode(current.as_bytes(), false) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(bytes) else {
            return false;
        };
        if decoded == current {
            return true;
        }
        current = decoded;
    }
    // Still changing after the last round: refuse rather than guess.
    false
}

/// The upstream request path: base empty or `/` → the request path (or `/`); request path
/// empty or `/` → the base; else the cleaned join of the two (no trailing slash).
pub fn join_path(base: &str, request: &str) -> String {
    if base.is_empty() || base == "/" {
        return if request.is_empty() {
            "/".to_owned()
        } else {
            request.to_owned()
        };
    }
    if request.is_empty() || request == "/" {
        return base.to_owned();
    }
    clean(&format!("/{base}/{request}"))
}

/// A lexically cleaned absolute path: duplicate slashes collapsed, `.` segments dropped, `..`
/// segments remove their parent (never above the root), no trailing slash unless the answer is
/// `/`.
fn clean(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The upstream query: the upstream URL's own parameters win, the client's other parameters
/// are added; re-encoded with keys sorted. Both inputs are raw query strings without `?`; the
/// answer is empty when there are no parameters.
pub fn merge_query(upstream: &str, client: &str) -> String {
    let mut merged = parse_query(upstream);
    let mut added: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (key, value) in parse_pairs(client) {
        if !merged.contains_key(&key) {
            added.entry(key).or_default().push(value);
        }
    }
    merged.extend(added);

    let mut out = String::new();
    for (key, values) in &merged {
        for value in values {
            if !out.is_empty() {
                out.push('&');
            }
            query_escape(key, &mut out);
            out.push('=');
            query_escape(value, &mut out);
        }
    }
    out
}

/// `application/x-www-form-urlencoded` parameters by key (bytes order), values in order.
fn parse_query(raw: &str) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut map: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (key, value) in parse_pairs(raw) {
        map.entry(key).or_default().push(value);
    }
    map
}

/// The decodable `key=value` pairs of a raw query, in order. Empty pieces, pieces containing
/// `;` (not a separator) and pieces with a bad escape are skipped; a piece without `=` has an
/// empty value.
fn parse_pairs(raw: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw.split('&')
        .filter(|piece| !piece.is_empty() && !piece.contains(';'))
        .filter_map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            let key = percent_decode(key.as_bytes(), true)?;
            let value = percent_decode(value.as_bytes(), true)?;
            Some((key, value))
        })
        .collect()
}

/// Percent-decodes `raw`; `plus_is_space` for query components. `None` on a `%` not followed
/// by two hex digits.
fn percent_decode(raw: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let high = hex_value(*raw.get(i + 1)?)?;
                let low = hex_value(*raw.get(i + 2)?)?;
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Some(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Query-component escaping: unreserved characters as is, space as `+`, every other byte as
/// `%XX` (uppercase hex).
fn query_escape(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_free_of_traversal() {
        for path in [
            "/",
            "",
            "/v1/items",
            "/v1/items/",
            "/a..b/c.d/...",
            "/.well-known/x",
            "/caf\u{e9}",
            "//double//slash",
        ] {
            assert!(traversal_free(path), "{path}");
        }
    }

    #[test]
    fn dot_segments_are_refused_in_any_round() {
        for path in [
            "/..",
            "/../etc/passwd",
            "/a/../b",
            "/a/./b",
            ".",
            "..",
            "/a/..",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/%2e./x",
            "/%2e/x",
            "/%252e%252e/x",
            "/%25252e%25252e/x",
            "/a%2f..%2fb",
            "/a%252f..%252fb",
        ] {
            assert!(!traversal_free(path), "{path}");
        }
    }

    #[test]
    fn backslashes_are_refused_encoded_or_not() {
        for path in ["/a\\b", "\\", "/a%5cb", "/a%5Cb", "/a%255cb", "/..\\x"] {
            assert!(!traversal_free(path), "{path}");
        }
    }

    #[test]
    fn bad_escapes_and_bad_utf8_are_refused() {
        for path in [
            "/a%zz", "/a%", "/a%2", "/a%g0", "/a%ff", "/%c3%28", "/a%25zz",
        ] {
            assert!(!traversal_free(path), "{path}");
        }
        // A literal `%` left after a round is a decode error in the next one.
        assert!(!traversal_free("/v1/100%25"));
        // Valid UTF-8 after decoding is fine.
        assert!(traversal_free("/caf%c3%a9"));
    }

    #[test]
    fn decoding_is_bounded() {
        // "/%78" needs one decode to settle and a second to see it stable; each extra layer of
        // encoding costs one more round. Eight rounds settle six extra layers, not seven.
        let layered = |layers: usize| {
            let mut path = "/%78".to_owned();
            for _ in 0..layers {
                path = path.replace('%', "%25");
            }
            path
        };
        assert!(traversal_free(&layered(0)));
        assert!(traversal_free(&layered(6)), "{}", layered(6));
        assert!(!traversal_free(&layered(7)), "{}", layered(7));
    }

    #[test]
    fn join_uses_the_request_path_under_an_empty_base() {
        assert_eq!(join_path("", "/v1/x"), "/v1/x");
        assert_eq!(join_path("/", "/v1/x/"), "/v1/x/");
        assert_eq!(join_path("", ""), "/");
        assert_eq!(join_path("/", ""), "/");
        assert_eq!(join_path("", "/"), "/");
    }

    #[test]
    fn join_uses_the_base_for_an_empty_request_path() {
        assert_eq!(join_path("/api", ""), "/api");
        assert_eq!(join_path("/api/", "/"), "/api/");
    }

    #[test]
    fn join_cleans_the_combination() {
        assert_eq!(join_path("/api", "/v1/x"), "/api/v1/x");
        assert_eq!(join_path("/api/", "/v1/x/"), "/api/v1/x");
        assert_eq!(join_path("/api//v2", "//v1///x"), "/api/v2/v1/x");
        assert_eq!(join_path("api", "x"), "/api/x");
        assert_eq!(join_path("/api/./v1", "x"), "/api/v1/x");
        assert_eq!(join_path("/api/v1/..", "x"), "/api/x");
        assert_eq!(join_path("/..", "x"), "/x");
    }

    #[test]
    fn query_upstream_keys_win_and_client_keys_are_added_sorted() {
        assert_eq!(
            merge_query("key=up&b=1", "key=client&a=2&z=3"),
            "a=2&b=1&key=up&z=3"
        );
        // Every value of a key the upstream sets comes from the upstream.
        assert_eq!(merge_query("k=1&k=2", "k=3&k=4&j=5&j=6"), "j=5&j=6&k=1&k=2");
        // Values of one key keep their order.
        assert_eq!(merge_query("", "b=2&a=9&b=1"), "a=9&b=2&b=1");
        assert_eq!(merge_query("", ""), "");
        assert_eq!(merge_query("a=1", ""), "a=1");
        assert_eq!(merge_query("", "a=1"), "a=1");
    }

    #[test]
    fn query_is_decoded_and_reencoded() {
        assert_eq!(merge_query("", "q=a+b%20c"), "q=a+b+c");
        assert_eq!(merge_query("", "x=%2f%3F%26%3d"), "x=%2F%3F%26%3D");
        assert_eq!(merge_query("", "t=-._~AZaz09"), "t=-._~AZaz09");
        assert_eq!(merge_query("", "u=caf%C3%A9"), "u=caf%C3%A9");
        assert_eq!(merge_query("", "u=caf\u{e9}"), "u=caf%C3%A9");
        assert_eq!(merge_query("", "%6bey=v"), "key=v");
        assert_eq!(merge_query("", "flag"), "flag=");
        assert_eq!(merge_query("", "=v"), "=v");
        assert_eq!(merge_query("", "a=1=2"), "a=1%3D2");
        assert_eq!(merge_query("", "raw=%ff"), "raw=%FF");
    }

    #[test]
    fn query_skips_bad_pieces() {
        assert_eq!(merge_query("", "a=1&&b=2&"), "a=1&b=2");
        assert_eq!(merge_query("", "a=%zz&b=2"), "b=2");
        assert_eq!(merge_query("", "a=1;c=3&b=2"), "b=2");
        assert_eq!(merge_query("k=%", "k=1"), "k=1");
    }
}
