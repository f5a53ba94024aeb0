//! The SSRF guard at dial time: names are resolved here, every resolved address is checked,
//! and the HTTP client connects only to the addresses this resolver returned, so a second,
//! different DNS answer (rebinding) can never be dialled. Address literals never reach a
//! resolver, so the fetcher judges them with [`EgressPolicy::check`] before the request is made.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::address::{allowed, classify, AddressClass};

/// A destination refused by the egress policy, as opposed to one that failed to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked(pub String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// The hosts allowed onto private ranges (`CARACAL_PRIVATE_EGRESS_HOSTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    private_hosts: BTreeSet<String>,
}

/// A host as compared against the allowlist: lower case, without a trailing dot or IPv6
/// brackets, so `IdP.Example.` and `idp.example` are one host.
fn normalise(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

impl EgressPolicy {
    /// A policy from the comma-separated allowlist (blank entries ignored).
    pub fn new(private_hosts_csv: Option<&str>) -> Self {
        Self {
            private_hosts: private_hosts_csv
                .unwrap_or("")
                .split(',')
                .map(normalise)
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn allowlisted(&self, host: &str) -> bool {
        self.private_hosts.contains(&normalise(host))
    }

    /// Whether `host` (as written in the URL) may be reached at `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Blocked> {
        if allowed(ip, self.allowlisted(host)) {
            return Ok(());
        }
        let why = match classify(ip) {
            AddressClass::Private => {
                "a private address (list the host in CARACAL_PRIVATE_EGRESS_HOSTS to allow it)"
            }
            _ => "an address egress never reaches",
        };
        Err(Blocked(format!("{host} resolves to {ip}, {why}")))
    }
}

/// The resolver handed to the HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            // One refused address refuses the name: a host that also answers with an internal
            // address is not one to trust with the rest.
            for addr in &resolved {
                policy.check(&host, addr.ip())?;
            }
            let addrs: Addrs = Box::new(resolved.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_is_normalised() {
        let policy = EgressPolicy::new(Some(" IdP.Internal. , ,[fd00::5],10.1.2.3"));
        let private: IpAddr = "10.0.0.7".parse().expect("ip");
        assert!(policy.check("idp.internal", private).is_ok());
        assert!(policy.check("IDP.INTERNAL.", private).is_ok());
        assert!(policy
            .check("[fd00::5]", "fd00::5".parse().expect("ip"))
            .is_ok());
        assert!(policy
            .check("10.1.2.3", "10.1.2.3".parse().expect("ip"))
            .is_ok());
        assert!(policy.check("other.internal", private).is_err());
        assert!(
            policy.check("sub.idp.internal", private).is_err(),
            "no suffix matching"
        );
    }

    #[test]
    fn refusals_say_why() {
        let policy = EgressPolicy::new(None);
        let e = policy
            .check("idp.internal", "10.0.0.7".parse().expect("ip"))
            .expect_err("private");
        assert!(e.0.contains("CARACAL_PRIVATE_EGRESS_HOSTS"), "{e}");
        let allowlisted = EgressPolicy::new(Some("metadata.internal"));
        let e = allowlisted
            .check("metadata.internal", "169.254.169.254".parse().expect("ip"))
            .expect_err("forbidden even when allowlisted");
        assert!(e.0.contains("never reaches"), "{e}");
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_resolution() {
        let resolver = GuardedResolver {
            policy: Arc::new(EgressPolicy::new(Some("localhost"))),
        };
        let name: Name = "localhost".parse().expect("name");
        let err = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost must not resolve through the guard"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");
    }
}
