//! Compact JWS (RFC 7515) encoding of a mandate: `base64url(header).base64url(claims).
//! base64url(R‖S)`, no padding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::error::Error;
use crate::mandate::claims::MandateClaims;
use crate::ports::Es256Signer;

/// The only JWS algorithm Caracal issues or accepts.
pub const ALGORITHM: &str = "ES256";
/// The `typ` header of every mandate.
pub const TOKEN_TYPE: &str = "JWT";
/// Raw R‖S signature length.
pub const SIGNATURE_LEN: usize = 64;

/// The protected header. Field order is the wire order upstream writes:
/// `{"alg":"ES256","kid":…,"typ":"JWT"}`.
#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// Signs `claims` under the zone key `kid` and returns the compact token. Failures are the
/// STS's `500 internal_error "token issuance failed"`, with what went wrong in `detail`.
pub fn encode(
    kid: &str,
    claims: &MandateClaims,
    signer: &dyn Es256Signer,
) -> Result<String, Error> {
    let header = serde_json::to_vec(&Header {
        alg: ALGORITHM,
        kid,
        typ: TOKEN_TYPE,
    })
    .map_err(|err| issuance_failed(format!("mandate header: {err}")))?;
    let payload = serde_json::to_vec(claims)
        .map_err(|err| issuance_failed(format!("mandate claims: {err}")))?;

    let mut token = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 100);
    URL_SAFE_NO_PAD.encode_string(&header, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);

    let signature = signer
        .sign(token.as_bytes())
        .map_err(|err| issuance_failed(format!("mandate signature: {err}")))?;
    // A signer that returned DER or a truncated value would mint tokens no verifier accepts.
    if signature.len() != SIGNATURE_LEN {
        return Err(issuance_failed(format!(
            "signer returned {} bytes, expected raw R||S",
            signature.len()
        )));
    }
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
    Ok(token)
}

fn issuance_failed(detail: String) -> Error {
    Error::internal(detail).describe("token issuance failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CryptoError;
    use crate::mandate::claims::{MandateUse, SubType};

    struct FixedSigner(Vec<u8>);

    impl Es256Signer for FixedSigner {
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, CryptoError> {
            Ok(self.0.clone())
        }
        fn public_point(&self) -> &[u8] {
            &[]
        }
    }

    fn claims() -> MandateClaims {
        MandateClaims {
            iss: "http://sts:8080".into(),
            sub: "app-1".into(),
            aud: vec!["http://sts:8080".into()],
            exp: 1_790_000_900,
            iat: 1_790_000_000,
            jti: "j-1".into(),
            zone_id: "z1".into(),
            client_id: "app-1".into(),
            scope: "agent:lifecycle".into(),
            sid: "ar-1".into(),
            root_sid: "ar-1".into(),
            use_: MandateUse::Session,
            sub_type: SubType::Application,
            target: vec![],
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: vec![],
            delegation_chain: vec![],
            hop_count: 0,
            delegation_graph_epoch: 0,
        }
    }

    #[test]
    fn header_is_exactly_the_upstream_bytes() {
        let token = encode("k\"1", &claims(), &FixedSigner(vec![7; 64])).expect("encode");
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3);
        let header = URL_SAFE_NO_PAD.decode(segments[0]).expect("b64");
        assert_eq!(header, br#"{"alg":"ES256","kid":"k\"1","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.decode(segments[1]).expect("b64");
        assert_eq!(payload, serde_json::to_vec(&claims()).expect("json"));
        assert_eq!(URL_SAFE_NO_PAD.decode(segments[2]).expect("b64"), [7; 64]);
        assert!(!token.contains('='));
    }

    #[test]
    fn a_signature_of_the_wrong_shape_is_an_issuance_failure() {
        let err = encode("k1", &claims(), &FixedSigner(vec![7; 70])).expect_err("refused");
        assert_eq!(err.code, "internal_error");
        assert_eq!(err.description.as_deref(), Some("token issuance failed"));
    }
}
