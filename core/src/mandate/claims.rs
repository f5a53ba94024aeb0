//! The mandate's claim set (`spec/sts.md §4`), with upstream's omission rules encoded in the
//! serde attributes so every mint renders the same shape the SDK verifiers expect.
//!
//! Serialisation writes the claims in the contract's order. Deserialisation (used to verify
//! presented mandates) ignores claims it does not know, so a newer issuer can add some, but is
//! strict on types: a claim of the wrong JSON type fails instead of being coerced.

use serde::{Deserialize, Deserializer, Serialize};

/// What a mandate may be used for (`use`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MandateUse {
    /// Lifecycle bootstrap: talks to the Coordinator and the STS.
    Session,
    /// One-shot Gateway ingress.
    Gateway,
    /// Upstream execution, minted by the Gateway exchange.
    Resource,
}

impl MandateUse {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Gateway => "gateway",
            Self::Resource => "resource",
        }
    }
}

/// Whose authority the mandate carries (`sub_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubType {
    /// An application acting with its own credentials.
    Application,
    /// A federated end user.
    User,
}

impl SubType {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Application => "application",
            Self::User => "user",
        }
    }
}

/// One hop of `delegation_chain`: each Delegation edge contributes its issuer application and
/// source Session; a final hop names the receiving application and target Session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationHop {
    /// The application at this hop (the SDK requires it on every item).
    pub application_id: String,
    /// The Session at this hop.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub agent_session_id: Option<String>,
    /// The edge leaving this hop; absent on the closing hop.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub delegation_edge_id: Option<String>,
}

/// The claims of a Caracal mandate, in the order the STS writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MandateClaims {
    /// `ISSUER_URL`, verbatim.
    pub iss: String,
    /// The subject token's `sub`, else the application id.
    pub sub: String,
    /// Always written as an array: `[ISSUER_URL]` for session and gateway mandates, the granted
    /// identifiers for resource mandates. A single string is accepted on input (RFC 7519).
    #[serde(deserialize_with = "audience")]
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issue time, Unix seconds. Required: the SDK verifiers refuse a mandate without it.
    pub iat: i64,
    /// UUIDv7, registered once for single use.
    pub jti: String,
    /// The zone.
    pub zone_id: String,
    /// The authenticated application.
    pub client_id: String,
    /// Space-delimited scopes; omitted when empty, because the SDK refuses a present empty
    /// `scope`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The authority record id. Always written; read as empty when missing so the STS can
    /// answer its own `403 "missing token authority record"` rather than a generic 401.
    #[serde(default)]
    pub sid: String,
    /// The root authority record of the chain. Always written; empty when missing on input.
    #[serde(default)]
    pub root_sid: String,
    /// `session`, `gateway` or `resource`.
    #[serde(rename = "use")]
    pub use_: MandateUse,
    /// `application` or `user`.
    pub sub_type: SubType,
    /// Granted resource identifiers in sorted request order; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<String>,
    /// The governed Session; omitted when none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub agent_session_id: Option<String>,
    /// The Delegation edge; present only with a delegation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub delegation_edge_id: Option<String>,
    /// The delegating Session; present only with a delegation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub source_session_id: Option<String>,
    /// The receiving Session; present only with a delegation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub target_session_id: Option<String>,
    /// Edge ids from the root to this edge; present only with a delegation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation_path: Vec<String>,
    /// Applications and Sessions along the path; present only with a delegation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation_chain: Vec<DelegationHop>,
    /// `len(delegation_path)`; omitted when 0. Unsigned: the SDK refuses negatives.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub hop_count: u32,
    /// The zone's delegation graph epoch at mint time; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub delegation_graph_epoch: u64,
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// An optional string claim where `""` means absent, as upstream's Go structs (zero value) and
/// the SDK (`_optional_str`) both read it. `null` is absent too; any other type is an error.
fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|text| !text.is_empty()))
}

/// `aud` as RFC 7519 allows it on input: one string or an array of strings.
fn audience<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Audience::deserialize(deserializer)? {
        Audience::One(one) => vec![one],
        Audience::Many(many) => many,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn gateway_example() -> MandateClaims {
        MandateClaims {
            iss: "http://sts:8080".into(),
            sub: "app-1".into(),
            aud: vec!["http://sts:8080".into()],
            exp: 1_790_000_900,
            iat: 1_790_000_000,
            jti: "j-1".into(),
            zone_id: "z1".into(),
            client_id: "app-1".into(),
            scope: "pipernet:read".into(),
            sid: "ar-2".into(),
            root_sid: "ar-2".into(),
            use_: MandateUse::Gateway,
            sub_type: SubType::Application,
            target: vec!["resource://pipernet".into()],
            agent_session_id: Some("s-child".into()),
            delegation_edge_id: Some("d-1".into()),
            source_session_id: Some("s-parent".into()),
            target_session_id: Some("s-child".into()),
            delegation_path: vec!["d-1".into()],
            delegation_chain: vec![
                DelegationHop {
                    application_id: "app-1".into(),
                    agent_session_id: Some("s-parent".into()),
                    delegation_edge_id: Some("d-1".into()),
                },
                DelegationHop {
                    application_id: "app-1".into(),
                    agent_session_id: Some("s-child".into()),
                    delegation_edge_id: None,
                },
            ],
            hop_count: 1,
            delegation_graph_epoch: 7,
        }
    }

    #[test]
    fn gateway_mandate_renders_the_spec_example_in_order() {
        let text = serde_json::to_string(&gateway_example()).expect("serialise");
        assert_eq!(
            text,
            concat!(
                r#"{"iss":"http://sts:8080","sub":"app-1","aud":["http://sts:8080"],"#,
                r#""exp":1790000900,"iat":1790000000,"jti":"j-1","zone_id":"z1","#,
                r#""client_id":"app-1","scope":"pipernet:read","sid":"ar-2","root_sid":"ar-2","#,
                r#""use":"gateway","sub_type":"application","target":["resource://pipernet"],"#,
                r#""agent_session_id":"s-child","delegation_edge_id":"d-1","#,
                r#""source_session_id":"s-parent","target_session_id":"s-child","#,
                r#""delegation_path":["d-1"],"delegation_chain":[{"application_id":"app-1","#,
                r#""agent_session_id":"s-parent","delegation_edge_id":"d-1"},"#,
                r#"{"application_id":"app-1","agent_session_id":"s-child"}],"hop_count":1,"#,
                r#""delegation_graph_epoch":7}"#
            )
        );
    }

    #[test]
    fn federation_mandate_omits_everything_optional() {
        let claims = MandateClaims {
            scope: String::new(),
            use_: MandateUse::Session,
            sub_type: SubType::User,
            target: vec![],
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: vec![],
            delegation_chain: vec![],
            hop_count: 0,
            delegation_graph_epoch: 0,
            ..gateway_example()
        };
        let value = serde_json::to_value(&claims).expect("serialise");
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "aud",
                "client_id",
                "exp",
                "iat",
                "iss",
                "jti",
                "root_sid",
                "sid",
                "sub",
                "sub_type",
                "use",
                "zone_id"
            ]
        );
        assert_eq!(value["aud"], json!(["http://sts:8080"]));
        assert!(value.get("nbf").is_none());
    }

    #[test]
    fn round_trips_and_tolerates_unknown_claims() {
        let mut value = serde_json::to_value(gateway_example()).expect("serialise");
        value["future_claim"] = json!({"anything": [1, 2]});
        let back: MandateClaims = serde_json::from_value(value).expect("deserialise");
        assert_eq!(back, gateway_example());
    }

    #[test]
    fn reads_a_single_string_audience_and_empty_optionals_as_absent() {
        let mut value = serde_json::to_value(gateway_example()).expect("serialise");
        value["aud"] = json!("http://sts:8080");
        value["agent_session_id"] = json!("");
        value["source_session_id"] = Value::Null;
        let back: MandateClaims = serde_json::from_value(value).expect("deserialise");
        assert_eq!(back.aud, ["http://sts:8080"]);
        assert_eq!(back.agent_session_id, None);
        assert_eq!(back.source_session_id, None);
    }

    #[test]
    fn missing_sid_reads_as_empty() {
        let mut value = serde_json::to_value(gateway_example()).expect("serialise");
        let map = value.as_object_mut().expect("object");
        map.remove("sid");
        map.remove("root_sid");
        let back: MandateClaims = serde_json::from_value(value).expect("deserialise");
        assert_eq!((back.sid.as_str(), back.root_sid.as_str()), ("", ""));
    }

    #[test]
    fn wrong_types_are_refused() {
        let cases = [
            ("exp", json!("1790000900")),
            ("exp", json!(1.5)),
            ("iat", Value::Null),
            ("aud", json!([1])),
            ("use", json!("admin")),
            ("use", json!("Session")),
            ("sub_type", json!("robot")),
            ("hop_count", json!(-1)),
            ("hop_count", json!(true)),
            ("delegation_graph_epoch", json!(-3)),
            ("scope", json!(["a"])),
            ("target", json!("resource://pipernet")),
            ("agent_session_id", json!(5)),
            ("delegation_chain", json!([{"agent_session_id": "s"}])),
            ("sid", Value::Null),
            ("zone_id", json!(1)),
        ];
        for (claim, bad) in cases {
            let mut value = serde_json::to_value(gateway_example()).expect("serialise");
            value[claim] = bad.clone();
            assert!(
                serde_json::from_value::<MandateClaims>(value).is_err(),
                "{claim} = {bad} accepted"
            );
        }
        let required_claims = [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "jti",
            "zone_id",
            "client_id",
            "use",
            "sub_type",
        ];
        for required in required_claims {
            let mut value = serde_json::to_value(gateway_example()).expect("serialise");
            value.as_object_mut().expect("object").remove(required);
            assert!(
                serde_json::from_value::<MandateClaims>(value).is_err(),
                "missing {required} accepted"
            );
        }
    }
}
