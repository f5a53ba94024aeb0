//! Caracal mandates (`spec/sts.md §4–5`): the ES256 JWTs the STS mints and the Gateway,
//! Coordinator and STS verify. Claim shapes, compact JWS encoding, verification and the JWKS
//! document; keys and signatures come in through the [`Es256`](crate::ports::Es256) port.

pub mod claims;
pub mod jwk;
pub mod jws;
pub mod verified;
pub mod verify;

pub use claims::{DelegationHop, MandateClaims, MandateUse, SubType};
pub use jwk::{Jwk, JwkSet};
pub use jws::encode;
pub use verified::VerifiedMandates;
pub use verify::{
    peek_kid, verify_mandate, verify_mandate_raw, Expectations, TokenError, VerifyingKey,
    VerifyingKeys, LEEWAY_SECONDS, MAX_TOKEN_BYTES,
};
