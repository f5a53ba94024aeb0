//! B9: traversal, the upstream path join and the query merge.

/// Whether `path` (already percent-decoded once by the server) is free of traversal: it is
/// percent-decoded repeatedly until stable; a decoding error, a `\`, or any `.`/`..` segment
/// (in any round) rejects it.
pub fn traversal_free(path: &str) -> bool {
    let _ = path;
    todo!("issue #5: traversal")
}

/// The upstream request path: base empty or `/` → the request path (or `/`); request path
/// empty or `/` → the base; else the cleaned join of the two (no trailing slash).
pub fn join_path(base: &str, request: &str) -> String {
    let _ = (base, request);
    todo!("issue #5: join_path")
}

/// The upstream query: the upstream URL's own parameters win, the client's other parameters
/// are added; re-encoded with keys sorted. Both inputs are raw query strings without `?`; the
/// answer is empty when there are no parameters.
pub fn merge_query(upstream: &str, client: &str) -> String {
    let _ = (upstream, client);
    todo!("issue #5: merge_query")
}
