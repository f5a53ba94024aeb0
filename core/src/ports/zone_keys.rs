//! Where a verifier of STS mandates gets a zone's verification keys (`spec/sts.md §5`,
//! `spec/coordinator-gateway.md` A2). In one process with the STS (`caracal dev`,
//! `caracal serve all`) the STS's own [`ZoneKeys`] answers from its cache and the store; a
//! Coordinator or Gateway running alone asks the STS over HTTP
//! (`GET {STS_URL}/.well-known/jwks.json?zone_id=…`, `caracal_egress::StsMandateKeys`).
//!
//! Either way the answer is the zone's whole verification set, and the `kid` the presented token
//! names lets the source refresh a cached set once when a rotation elsewhere added a key.

use async_trait::async_trait;

use crate::ids::ZoneId;
use crate::mandate::VerifyingKeys;
use crate::sts::keys::ZoneKeys;

/// The verification keys of a zone's STS mandates.
#[async_trait]
pub trait ZoneKeySource: Send + Sync {
    /// The zone's verification set for a token signed with `kid`: newest key first, empty when
    /// the zone has never minted. A source that cannot answer (the STS is unreachable, a key
    /// fails to decode) returns an error, and the caller refuses the token: verification fails
    /// closed rather than trusting a set it could not read.
    async fn verifying_keys(&self, zone: &ZoneId, kid: &str) -> crate::Result<VerifyingKeys>;
}

#[async_trait]
impl ZoneKeySource for ZoneKeys {
    async fn verifying_keys(&self, zone: &ZoneId, kid: &str) -> crate::Result<VerifyingKeys> {
        self.verification_keys(zone, kid).await
    }
}
