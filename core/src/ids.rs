//! Identifier newtypes. Each parses instead of validating: a value of one of these types cannot
//! hold a string the wire contract would reject.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Path identifiers must match `^[A-Za-z0-9_.\-:]{1,128}$` (`spec/api.md §1`); anything else is
/// `400 invalid_params` before a store is touched.
pub fn is_path_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

macro_rules! path_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses a path identifier; rejects anything outside the path-id alphabet.
            pub fn parse(text: &str) -> Result<Self, Error> {
                if is_path_id(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(Error::invalid("invalid_params", "path identifier is malformed"))
                }
            }

            /// The identifier text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(|_| serde::de::Error::custom("malformed identifier"))
            }
        }
    };
}

path_id!(
    /// A zone: the tenancy boundary every other aggregate lives in.
    ZoneId
);
path_id!(
    /// An application (a client identity that mints mandates).
    ApplicationId
);
path_id!(
    /// A credential provider (holds the sealed upstream credential).
    ProviderId
);
path_id!(
    /// A resource row id (not its `resource://` identifier).
    ResourceId
);
path_id!(
    /// A policy.
    PolicyId
);
path_id!(
    /// One immutable version of a policy.
    PolicyVersionId
);
path_id!(
    /// A policy set.
    PolicySetId
);
path_id!(
    /// One immutable version of a policy set (its manifest).
    PolicySetVersionId
);
path_id!(
    /// A grant of scopes on a resource to an application and user.
    GrantId
);
path_id!(
    /// A subject issuer: an external identity system a zone trusts for federated users.
    SubjectIssuerId
);
path_id!(
    /// An admin bearer token row.
    AdminTokenId
);
path_id!(
    /// An outbox row.
    OutboxId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids_accept_uuid_and_reject_traversal() {
        assert!(ZoneId::parse("0190f5c2-7a4b-7cc3-9a7e-1b2c3d4e5f60").is_ok());
        assert!(ZoneId::parse("a:b.c_d-e").is_ok());
        assert!(ZoneId::parse("").is_err());
        assert!(ZoneId::parse("../etc").is_err());
        assert!(ZoneId::parse("a b").is_err());
        assert!(ZoneId::parse(&"x".repeat(129)).is_err());
        assert!(ZoneId::parse(&"x".repeat(128)).is_ok());
    }
}

/// A resource audience (`resource://…`, `https://…`, `urn:…`, or the Control audience): an
/// absolute URI whose scheme is not `provider` and that carries no userinfo, 1..=512 chars
/// (`spec/api.md §3.5`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceIdentifier(String);

impl ResourceIdentifier {
    /// Parses an identifier; `control_audience` is always acceptable.
    pub fn parse(text: &str, control_audience: &str) -> Result<Self, Error> {
        if text.is_empty() || text.chars().count() > 512 {
            return Err(Error::invalid(
                "invalid_resource",
                "identifier must be 1 to 512 characters",
            ));
        }
        if !crate::naming::is_resource_identifier(text, control_audience) {
            return Err(Error::invalid(
                "invalid_resource_identifier",
                "identifier must be an absolute URI (e.g. resource://name) and carry no credentials",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A scope as grants carry it: `^[a-z0-9:_./-]+$`, 1..=200 chars (`spec/api.md §3.9`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    /// Parses a scope.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let ok = !text.is_empty()
            && text.len() <= 200
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_./-".contains(&b));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::invalid(
                "invalid_scope",
                "scope must match ^[a-z0-9:_./-]+$ (1 to 200 chars)",
            ))
        }
    }

    /// The scope text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod newtype_tests {
    use super::*;

    #[test]
    fn resource_identifiers_and_scopes_parse() {
        assert!(ResourceIdentifier::parse("resource://reports", "caracal-control").is_ok());
        assert_eq!(
            ResourceIdentifier::parse("reports", "caracal-control")
                .err()
                .map(|e| e.code),
            Some("invalid_resource_identifier")
        );
        assert!(Scope::parse("reports:read").is_ok());
        assert!(Scope::parse("Reports:Read").is_err());
        assert!(Scope::parse("").is_err());
    }
}
