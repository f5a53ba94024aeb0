//! Slugs, identifiers and the reserved namespace: the naming rules every aggregate shares.

/// Lowercase ASCII alphanumeric runs joined by `-`; `fallback` when nothing is left. The same
/// rule as the SDK's `_slug_value`, so ids the SDK derives match ours.
pub fn slugify(value: &str, fallback: &str) -> String {
    let mut slug = String::new();
    let mut separator = false;
    for ch in value.trim().to_lowercase().chars() {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            if separator && !slug.is_empty() {
                slug.push('-');
            }
            slug.push(ch);
            separator = false;
        } else {
            separator = true;
        }
    }
    if slug.is_empty() {
        fallback.to_owned()
    } else {
        slug
    }
}

/// Whether a zone slug is well formed: `^[a-z0-9-]+$`.
pub fn is_zone_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 120
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether a provider identifier is canonical: `^provider://[a-z0-9]+(?:-[a-z0-9]+)*$`.
pub fn is_provider_identifier(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("provider://") else {
        return false;
    };
    !rest.is_empty()
        && rest.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Whether a resource identifier is acceptable (`spec/api.md §3.5`): the control audience, or an
/// absolute URI whose scheme is not `provider` and that carries no userinfo.
pub fn is_resource_identifier(text: &str, control_audience: &str) -> bool {
    if text == control_audience {
        return true;
    }
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || scheme.eq_ignore_ascii_case("provider") {
        return false;
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    // Userinfo lives between `//` and the first `@` before any path, query or fragment.
    if let Some(after) = rest.strip_prefix("//") {
        let authority = after.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return false;
        }
    }
    true
}

/// Case-insensitive prefix test for the reserved `caracal.sys` namespace.
fn starts_with_ci(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.is_char_boundary(prefix.len())
        && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Names only the bootstrap actor may use (`spec/api.md §2`, reserved namespace).
pub fn is_reserved_name(name: &str) -> bool {
    starts_with_ci(name, "caracal.sys/")
}

/// Reserved zone slugs.
pub fn is_reserved_zone_slug(slug: &str) -> bool {
    starts_with_ci(slug, "caracal-sys-")
}

/// Reserved resource identifiers.
pub fn is_reserved_resource_identifier(identifier: &str) -> bool {
    starts_with_ci(identifier, "caracal-sys://")
}

/// Reserved provider identifiers.
pub fn is_reserved_provider_identifier(identifier: &str) -> bool {
    starts_with_ci(identifier, "provider://caracal-sys-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugify_matches_the_sdk_rule() {
        assert_eq!(slugify("  My Zone!! 2 ", "zone"), "my-zone-2");
        assert_eq!(slugify("***", "zone"), "zone");
        assert_eq!(slugify("Ünïcode ok", "x"), "n-code-ok");
    }

    #[test]
    fn identifiers() {
        assert!(is_provider_identifier("provider://my-api-2"));
        assert!(!is_provider_identifier("provider://My"));
        assert!(!is_provider_identifier("provider://a--b"));
        assert!(!is_provider_identifier("provider://"));
        assert!(is_resource_identifier(
            "resource://reports",
            "caracal-control"
        ));
        assert!(is_resource_identifier(
            "https://api.example.com/v1",
            "caracal-control"
        ));
        assert!(is_resource_identifier(
            "urn:example:thing",
            "caracal-control"
        ));
        assert!(is_resource_identifier("caracal-control", "caracal-control"));
        assert!(!is_resource_identifier("reports", "caracal-control"));
        assert!(!is_resource_identifier("provider://x", "caracal-control"));
        assert!(!is_resource_identifier(
            "https://user:pw@host/",
            "caracal-control"
        ));
        assert!(!is_resource_identifier("1http://x", "caracal-control"));
    }

    #[test]
    fn reserved_namespace_is_case_insensitive() {
        assert!(is_reserved_name("Caracal.SYS/zone"));
        assert!(is_reserved_zone_slug("caracal-sys-x"));
        assert!(!is_reserved_name("caracal.system"));
    }
}
