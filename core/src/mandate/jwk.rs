//! JSON Web Keys (RFC 7517, RFC 7518 §6.2) for a zone's ES256 verification keys, as served at
//! `GET /.well-known/jwks.json?zone_id=Z` (`spec/sts.md §5`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;

use crate::mandate::verify::VerifyingKeys;

/// Coordinate length of P-256.
const COORDINATE_LEN: usize = 32;

/// One public signing key, members in the order the contract lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// Always `EC`.
    pub kty: &'static str,
    /// Always `P-256`.
    pub crv: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: &'static str,
    /// The signing key's id (the secret row id).
    pub kid: String,
    /// Always `ES256`.
    pub alg: &'static str,
    /// X coordinate: 32 bytes, base64url without padding.
    pub x: String,
    /// Y coordinate: 32 bytes, base64url without padding.
    pub y: String,
}

impl Jwk {
    /// The JWK of an uncompressed P-256 point (`0x04‖X‖Y`); `None` for anything else. An
    /// uncompressed point always carries full 32-byte coordinates, so `x` and `y` are the
    /// left-padded encodings RFC 7518 requires (a big-integer rendering would drop leading
    /// zeros and break verifiers on about one key in 128).
    pub fn from_public_point(kid: &str, point: &[u8]) -> Option<Self> {
        let (&tag, coordinates) = point.split_first()?;
        if tag != 0x04 || coordinates.len() != 2 * COORDINATE_LEN {
            return None;
        }
        let (x, y) = coordinates.split_at(COORDINATE_LEN);
        Some(Self {
            kty: "EC",
            crv: "P-256",
            key_use: "sig",
            kid: kid.to_owned(),
            alg: "ES256",
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
        })
    }
}

/// A JWKS document, `{"keys":[…]}`, newest key first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwkSet {
    /// The keys, newest first.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The document for a verification set, in its order (newest first). A key whose point is
    /// not an uncompressed P-256 point cannot be expressed as a JWK and is left out.
    pub fn from_keys(keys: &VerifyingKeys) -> Self {
        Self {
            keys: keys
                .iter()
                .filter_map(|key| Jwk::from_public_point(&key.kid, &key.public_point))
                .collect(),
        }
    }

    /// The document as JSON.
    pub fn to_value(&self) -> Value {
        Value::Object(serde_json::Map::from_iter([(
            "keys".to_owned(),
            Value::Array(self.keys.iter().map(Jwk::to_value).collect()),
        )]))
    }
}

impl Jwk {
    /// The key as a JSON object.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "kty": self.kty,
            "crv": self.crv,
            "use": self.key_use,
            "kid": self.kid,
            "alg": self.alg,
            "x": self.x,
            "y": self.y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mandate::verify::VerifyingKey;

    fn point(fill: u8) -> Vec<u8> {
        let mut point = vec![0x04];
        // X with leading zero bytes, as roughly one key in 128 has.
        point.extend_from_slice(&[0, 0]);
        point.extend_from_slice(&[fill; 30]);
        point.extend_from_slice(&[0xff; 32]);
        point
    }

    #[test]
    fn coordinates_are_padded_base64url_without_padding() {
        let jwk = Jwk::from_public_point("kid-1", &point(0xab)).expect("jwk");
        assert_eq!(jwk.x.len(), 43);
        assert_eq!(jwk.y.len(), 43);
        let x = URL_SAFE_NO_PAD.decode(&jwk.x).expect("b64");
        assert_eq!(x.len(), 32);
        assert_eq!(x[..3], [0, 0, 0xab]);
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.y).expect("b64"), [0xff; 32]);
    }

    #[test]
    fn serialises_members_in_contract_order() {
        let jwk = Jwk::from_public_point("kid-1", &point(1)).expect("jwk");
        let text = serde_json::to_string(&jwk).expect("json");
        assert!(text.starts_with(
            r#"{"kty":"EC","crv":"P-256","use":"sig","kid":"kid-1","alg":"ES256","x":""#
        ));
        assert_eq!(serde_json::to_value(&jwk).expect("json"), jwk.to_value());
    }

    #[test]
    fn refuses_anything_but_an_uncompressed_point() {
        let good = point(1);
        assert!(Jwk::from_public_point("k", &good[..64]).is_none());
        assert!(Jwk::from_public_point("k", &[0x02; 33]).is_none());
        assert!(Jwk::from_public_point("k", &[]).is_none());
        let mut wrong_tag = good.clone();
        wrong_tag[0] = 0x03;
        assert!(Jwk::from_public_point("k", &wrong_tag).is_none());
    }

    #[test]
    fn set_keeps_newest_first() {
        let keys = VerifyingKeys::new(vec![
            VerifyingKey::new("new", point(2)),
            VerifyingKey::new("old", point(1)),
        ]);
        let set = JwkSet::from_keys(&keys);
        let kids: Vec<&str> = set.keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["new", "old"]);
        let value = set.to_value();
        assert_eq!(value["keys"][0]["kid"], "new");
        assert_eq!(value["keys"][1]["kty"], "EC");
        assert_eq!(value.as_object().map(|o| o.len()), Some(1));
    }
}
