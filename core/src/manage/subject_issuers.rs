//! Subject issuers (`spec/api.md §3.10`): the external identity systems a zone trusts for
//! federated users (`spec/sts.md §9`).
//!
//! An issuer is trusted by an exact `iss` match and its keys are fetched from `jwks_url`, so both
//! must be plain HTTPS URLs: a lookalike issuer string or a key URL carrying credentials, a
//! query or a fragment is a way to impersonate subjects, not a configuration nuance. The issuer
//! never changes after creation: re-pointing a trust declaration at another identity system
//! would silently re-attribute every subject it vouched for.

use serde::Deserialize;

use crate::attribution::Attribution;
use crate::error::{Error, Result, StoreError};
use crate::ids::{SubjectIssuerId, ZoneId};
use crate::model::SubjectIssuer;
use crate::patch::Patch;
use crate::ports::store::{Page, UnitOfWork};

use super::{Caller, Management};

/// Active issuers a zone may hold.
pub const MAX_ISSUERS_PER_ZONE: u64 = 20;
/// Longest `issuer` and `jwks_url`, in characters.
const MAX_URL_CHARS: usize = 2048;
/// Longest `audience`, in characters.
const MAX_AUDIENCE_CHARS: usize = 512;

/// `POST …/subject-issuers` body. Unknown keys are ignored, as upstream does.
#[derive(Debug, Clone, Deserialize)]
pub struct NewSubjectIssuer {
    /// The `iss` its tokens carry, verbatim.
    pub issuer: String,
    /// HTTPS URL of its key set.
    pub jwks_url: String,
    /// The audience its tokens must carry.
    pub audience: String,
}

/// `PATCH …/subject-issuers/{id}` body. An empty object is a valid patch (it only touches the
/// attribution); `null` is not a value for any field.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubjectIssuerPatch {
    /// A new key set URL.
    #[serde(default)]
    pub jwks_url: Patch<String>,
    /// A new audience.
    #[serde(default)]
    pub audience: Patch<String>,
    /// Accepted only when it equals the stored issuer (a row read back and sent again), since
    /// the issuer is immutable.
    #[serde(default)]
    pub issuer: Patch<String>,
}

fn invalid(description: impl Into<String>) -> Error {
    Error::invalid("invalid_subject_issuer", description)
}

fn not_found() -> Error {
    Error::not_found("subject_issuer_not_found")
}

fn exists() -> Error {
    Error::conflict(
        "subject_issuer_exists",
        "an active subject issuer with this issuer already exists in the zone",
    )
}

fn bounded(field: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n == 0 || n > max {
        return Err(invalid(format!("{field} must be 1 to {max} characters")));
    }
    Ok(())
}

/// Why `raw` is not acceptable as an issuer or key set URL, if it is not: an absolute `https`
/// URL with a host, no userinfo, no query and no fragment. Stricter than a general URL parser
/// on purpose (no whitespace or backslashes anywhere, `//` required), so what is stored is
/// exactly what a token's `iss` and the egress client will read.
pub fn url_problem(raw: &str, field: &str) -> Option<String> {
    let not_url = || Some(format!("{field} is not a valid absolute URL"));
    let Some((scheme, rest)) = raw.split_once(':') else {
        return not_url();
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok
        || raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return not_url();
    }
    if !scheme.eq_ignore_ascii_case("https") {
        return Some(format!("{field} must use https"));
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return not_url();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Some(format!("{field} must not embed credentials"));
    }
    if !valid_authority(authority) {
        return not_url();
    }
    if raw.contains('?') || raw.contains('#') {
        return Some(format!("{field} must not carry a query or fragment"));
    }
    None
}

/// `host[:port]` with a non-empty host (a bracketed IPv6 literal or a name) and a numeric port.
fn valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        match inner.split_once(']') {
            Some((v6, after)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => (v6, None),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (v6, Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
    });
    !host.is_empty() && !host.contains(['[', ']']) && port_ok
}

fn check_url(field: &str, value: &str) -> Result<()> {
    bounded(field, value, MAX_URL_CHARS)?;
    match url_problem(value, field) {
        Some(problem) => Err(invalid(problem)),
        None => Ok(()),
    }
}

fn save_conflict(err: StoreError) -> Error {
    match err {
        StoreError::Conflict(_) => exists(),
        other => other.into(),
    }
}

impl Management {
    async fn live_subject_issuer(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        id: &SubjectIssuerId,
    ) -> Result<SubjectIssuer> {
        match uow.get_subject_issuer(zone, id).await? {
            Some(i) if i.archived_at.is_none() => Ok(i),
            _ => Err(not_found()),
        }
    }

    /// Lists the zone's active issuers.
    pub async fn list_subject_issuers(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<SubjectIssuer>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        Ok(uow.list_subject_issuers(zone, page).await?)
    }

    /// One active issuer.
    pub async fn get_subject_issuer(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &SubjectIssuerId,
    ) -> Result<SubjectIssuer> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_subject_issuer(&mut uow, zone, id).await
    }

    /// Registers an issuer: at most [`MAX_ISSUERS_PER_ZONE`] active per zone, one active row
    /// per issuer string.
    pub async fn create_subject_issuer(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewSubjectIssuer,
    ) -> Result<SubjectIssuer> {
        check_url("issuer", &input.issuer)?;
        check_url("jwks_url", &input.jwks_url)?;
        bounded("audience", &input.audience, MAX_AUDIENCE_CHARS)?;
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        // Count and insert under one per-zone lock, so two concurrent creates cannot both see
        // nineteen rows and leave twenty-one.
        uow.lock(&format!("subject_issuers:{zone}")).await?;
        if uow.count_active_subject_issuers(zone).await? >= MAX_ISSUERS_PER_ZONE {
            return Err(Error::conflict(
                "subject_issuer_limit_reached",
                format!(
                    "a zone trusts at most {MAX_ISSUERS_PER_ZONE} subject issuers; delete one first"
                ),
            ));
        }
        if uow
            .find_subject_issuer(zone, &input.issuer)
            .await?
            .is_some()
        {
            return Err(exists());
        }
        let now = self.clock.now();
        let issuer = SubjectIssuer {
            id: SubjectIssuerId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            issuer: input.issuer,
            jwks_url: input.jwks_url,
            audience: input.audience,
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        uow.save_subject_issuer(&issuer)
            .await
            .map_err(save_conflict)?;
        uow.commit().await?;
        Ok(issuer)
    }

    /// Changes the key set URL and/or the audience; the issuer itself is immutable.
    pub async fn patch_subject_issuer(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &SubjectIssuerId,
        patch: SubjectIssuerPatch,
    ) -> Result<SubjectIssuer> {
        let jwks_url = match patch.jwks_url {
            Patch::Absent => None,
            Patch::Null => return Err(invalid("jwks_url must be a string")),
            Patch::Value(url) => {
                check_url("jwks_url", &url)?;
                Some(url)
            }
        };
        let audience = match patch.audience {
            Patch::Absent => None,
            Patch::Null => return Err(invalid("audience must be a string")),
            Patch::Value(audience) => {
                bounded("audience", &audience, MAX_AUDIENCE_CHARS)?;
                Some(audience)
            }
        };
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut issuer = self.live_subject_issuer(&mut uow, zone, id).await?;
        match patch.issuer {
            Patch::Absent => {}
            Patch::Value(same) if same == issuer.issuer => {}
            _ => {
                return Err(invalid(
                    "issuer cannot be changed; register the new issuer and delete this one",
                ))
            }
        }
        if let Some(url) = jwks_url {
            issuer.jwks_url = url;
        }
        if let Some(audience) = audience {
            issuer.audience = audience;
        }
        issuer
            .attr
            .touch(&caller.attribution(), caller.via_operator, self.clock.now());
        uow.save_subject_issuer(&issuer)
            .await
            .map_err(save_conflict)?;
        uow.commit().await?;
        Ok(issuer)
    }

    /// Archives an issuer: new federations from it are refused at once; sessions already
    /// minted from it live until they expire or are revoked, like every other removed source
    /// of authority.
    pub async fn delete_subject_issuer(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &SubjectIssuerId,
    ) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut issuer = self.live_subject_issuer(&mut uow, zone, id).await?;
        let now = self.clock.now();
        issuer.archived_at = Some(now);
        issuer
            .attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_subject_issuer(&issuer).await?;
        uow.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_without_credentials_query_or_fragment() {
        for ok in [
            "https://idp.example",
            "https://idp.example/",
            "https://idp.example/realms/main",
            "HTTPS://IdP.Example:8443/path",
            "https://[2001:db8::1]:443/keys",
            "https://login.example/tenant-id/v2.0",
        ] {
            assert_eq!(url_problem(ok, "issuer"), None, "{ok}");
        }
        let cases = [
            ("idp.example", "issuer is not a valid absolute URL"),
            ("", "issuer is not a valid absolute URL"),
            ("1https://x", "issuer is not a valid absolute URL"),
            ("http://idp.example", "issuer must use https"),
            ("ftp://idp.example", "issuer must use https"),
            ("https:idp.example", "issuer is not a valid absolute URL"),
            ("https://", "issuer is not a valid absolute URL"),
            ("https:///path", "issuer is not a valid absolute URL"),
            ("https://idp.example:", "issuer is not a valid absolute URL"),
            (
                "https://idp.example:99999",
                "issuer is not a valid absolute URL",
            ),
            (
                "https://idp.example:x1",
                "issuer is not a valid absolute URL",
            ),
            ("https://[::1", "issuer is not a valid absolute URL"),
            ("https://[nope]/", "issuer is not a valid absolute URL"),
            ("https://idp .example", "issuer is not a valid absolute URL"),
            (
                "https://idp.example/\n",
                "issuer is not a valid absolute URL",
            ),
            (
                "https://idp.example\\@evil",
                "issuer is not a valid absolute URL",
            ),
            (
                "https://user:pw@idp.example",
                "issuer must not embed credentials",
            ),
            ("https://@idp.example", "issuer must not embed credentials"),
            (
                "https://idp.example/?a=1",
                "issuer must not carry a query or fragment",
            ),
            (
                "https://idp.example?",
                "issuer must not carry a query or fragment",
            ),
            (
                "https://idp.example/#frag",
                "issuer must not carry a query or fragment",
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(url_problem(bad, "issuer").as_deref(), Some(why), "{bad:?}");
        }
    }

    #[test]
    fn lengths_count_characters() {
        assert!(bounded("audience", &"é".repeat(512), 512).is_ok());
        let e = bounded("audience", &"é".repeat(513), 512).expect_err("too long");
        assert_eq!(e.code, "invalid_subject_issuer");
        assert!(bounded("audience", "", 512).is_err());
        let long = format!("https://idp.example/{}", "a".repeat(2048));
        assert_eq!(
            check_url("issuer", &long)
                .expect_err("long")
                .description
                .as_deref(),
            Some("issuer must be 1 to 2048 characters")
        );
    }
}
