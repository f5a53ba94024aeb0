//! The two DER shapes a P-256 private key arrives in, read and written by hand because ring
//! only speaks PKCS#8 while upstream stores SEC1:
//!
//! - RFC 5915 `ECPrivateKey` (PEM `EC PRIVATE KEY`), what upstream seals as a zone signing key:
//!   `SEQUENCE { INTEGER 1, OCTET STRING d, [0] OID prime256v1, [1] BIT STRING 04‖X‖Y }`.
//! - RFC 5208 PKCS#8 v1 (PEM `PRIVATE KEY`), what ring generates and `openssl pkcs8 -topk8`
//!   writes: `SEQUENCE { INTEGER 0, SEQUENCE { OID id-ecPublicKey, OID prime256v1 },
//!   OCTET STRING ECPrivateKey }`, the inner key usually without `[0]`.
//!
//! The reader accepts DER only (definite, minimal lengths; nothing trailing) and nothing but
//! P-256. Both the curve parameters and the public key must be present: RFC 5915 requires the
//! parameters, and ring needs the public point to build a key pair (it checks the point matches
//! the scalar, so a doctored point is refused there).

use crate::wipe::wipe;

/// Scalar length of P-256.
pub(crate) const SCALAR_LEN: usize = 32;
/// Uncompressed point length: `0x04‖X‖Y`.
pub(crate) const POINT_LEN: usize = 65;

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_PARAMETERS: u8 = 0xa0;
const TAG_PUBLIC_KEY: u8 = 0xa1;

/// OID 1.2.840.10045.3.1.7 (prime256v1 / secp256r1), content bytes.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// OID 1.2.840.10045.2.1 (id-ecPublicKey), content bytes.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// The scalar and public point of one P-256 key. The scalar is wiped on drop.
pub(crate) struct KeyParts {
    /// Big-endian private scalar, left-padded to 32 bytes.
    pub(crate) scalar: [u8; SCALAR_LEN],
    /// Uncompressed public point.
    pub(crate) point: [u8; POINT_LEN],
}

impl Drop for KeyParts {
    fn drop(&mut self) {
        wipe(&mut self.scalar);
    }
}

/// Reads a SEC1 `ECPrivateKey` that names P-256 and carries its public key.
pub(crate) fn parse_sec1(der: &[u8]) -> Option<KeyParts> {
    let body = only(der, TAG_SEQUENCE)?;
    parse_ec_private_key(body, true)
}

/// Reads a PKCS#8 v1 `PrivateKeyInfo` holding a P-256 key with its public key.
pub(crate) fn parse_pkcs8(der: &[u8]) -> Option<KeyParts> {
    let mut info = Reader::new(only(der, TAG_SEQUENCE)?);
    if info.read(TAG_INTEGER)? != [0x00] {
        return None;
    }
    let mut algorithm = Reader::new(info.read(TAG_SEQUENCE)?);
    if algorithm.read(TAG_OID)? != OID_EC_PUBLIC_KEY || algorithm.read(TAG_OID)? != OID_P256 {
        return None;
    }
    algorithm.finish()?;
    let key = info.read(TAG_OCTET_STRING)?;
    // v1 attributes ([0]) are not something a signing key needs; refuse rather than ignore.
    info.finish()?;
    parse_ec_private_key(only(key, TAG_SEQUENCE)?, false)
}

/// Writes the SEC1 `ECPrivateKey` of a P-256 key, with parameters and public key, byte for
/// byte what `openssl ecparam -genkey -noout` and Go's `x509.MarshalECPrivateKey` produce.
pub(crate) fn write_sec1(parts: &KeyParts) -> Vec<u8> {
    let mut out = Vec::with_capacity(121);
    out.extend_from_slice(&[TAG_SEQUENCE, 0x77]);
    out.extend_from_slice(&[TAG_INTEGER, 0x01, 0x01]);
    out.extend_from_slice(&[TAG_OCTET_STRING, SCALAR_LEN as u8]);
    out.extend_from_slice(&parts.scalar);
    out.extend_from_slice(&[TAG_PARAMETERS, 0x0a, TAG_OID, OID_P256.len() as u8]);
    out.extend_from_slice(OID_P256);
    out.extend_from_slice(&[TAG_PUBLIC_KEY, 0x44, TAG_BIT_STRING, 0x42, 0x00]);
    out.extend_from_slice(&parts.point);
    out
}

/// `ECPrivateKey` contents (after the outer SEQUENCE). `parameters_required` is true for a
/// standalone SEC1 document; inside PKCS#8 the algorithm identifier already names the curve,
/// so `[0]` may be absent but must agree when present.
fn parse_ec_private_key(body: &[u8], parameters_required: bool) -> Option<KeyParts> {
    let mut key = Reader::new(body);
    if key.read(TAG_INTEGER)? != [0x01] {
        return None;
    }
    let scalar = key.read(TAG_OCTET_STRING)?;
    // RFC 5915 fixes the length at 32, but OpenSSL 1.0 dropped leading zero bytes; a shorter
    // value is the same integer, so it is left-padded rather than refused.
    if scalar.is_empty() || scalar.len() > SCALAR_LEN {
        return None;
    }
    if key.peek() == Some(TAG_PARAMETERS) {
        if only(key.read(TAG_PARAMETERS)?, TAG_OID)? != OID_P256 {
            return None;
        }
    } else if parameters_required {
        return None;
    }
    let bits = only(key.read(TAG_PUBLIC_KEY)?, TAG_BIT_STRING)?;
    key.finish()?;
    // A BIT STRING starts with its count of unused bits, which must be zero for a point.
    let (&unused, point) = bits.split_first()?;
    if unused != 0 || point.len() != POINT_LEN || point[0] != 0x04 {
        return None;
    }
    let mut parts = KeyParts {
        scalar: [0; SCALAR_LEN],
        point: [0; POINT_LEN],
    };
    parts.scalar[SCALAR_LEN - scalar.len()..].copy_from_slice(scalar);
    parts.point.copy_from_slice(point);
    Some(parts)
}

/// The contents of `der` when it is exactly one element with `tag`.
fn only(der: &[u8], tag: u8) -> Option<&[u8]> {
    let mut reader = Reader::new(der);
    let value = reader.read(tag)?;
    reader.finish()?;
    Some(value)
}

/// Walks DER elements of one constructed value.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The contents of the next element, which must carry `tag`.
    fn read(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (&actual, rest) = self.rest.split_first()?;
        if actual != tag {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = match first {
            short if short < 0x80 => usize::from(short),
            // DER: the long form only when the short one cannot hold the length, and with no
            // leading zero byte. Keys are far below 64 KiB, so two length bytes suffice.
            0x81 => {
                let (&len, tail) = rest.split_first()?;
                rest = tail;
                (len >= 0x80).then_some(usize::from(len))?
            }
            0x82 => {
                let (len, tail) = rest.split_first_chunk::<2>()?;
                rest = tail;
                let len = usize::from(u16::from_be_bytes(*len));
                (len >= 0x100).then_some(len)?
            }
            _ => return None,
        };
        if rest.len() < len {
            return None;
        }
        let (value, tail) = rest.split_at(len);
        self.rest = tail;
        Some(value)
    }

    /// `Some` only when every byte was consumed.
    fn finish(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        let mut point = [0x11; POINT_LEN];
        point[0] = 0x04;
        KeyParts {
            scalar: [0x22; SCALAR_LEN],
            point,
        }
    }

    #[test]
    fn sec1_round_trips() {
        let der = write_sec1(&parts());
        assert_eq!(der.len(), 121);
        let back = parse_sec1(&der).expect("parses");
        assert_eq!(back.scalar, [0x22; SCALAR_LEN]);
        assert_eq!(back.point, parts().point);
    }

    #[test]
    fn sec1_requires_p256_parameters_and_public_key() {
        let der = write_sec1(&parts());
        let mut other_curve = der.clone();
        other_curve[50] ^= 0x01; // last byte of the curve OID
        assert!(parse_sec1(&other_curve).is_none());

        // Without [0]: drop its 12 bytes and fix the outer length.
        let mut no_params = der[..39].to_vec();
        no_params.extend_from_slice(&der[51..]);
        no_params[1] = 0x77 - 12;
        assert!(parse_sec1(&no_params).is_none());

        // Without [1].
        let mut no_public = der[..51].to_vec();
        no_public[1] = 0x77 - 70;
        assert!(parse_sec1(&no_public).is_none());
    }

    #[test]
    fn sec1_refuses_non_der_and_trailing_bytes() {
        let der = write_sec1(&parts());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(parse_sec1(&trailing).is_none());

        // The same length in a needless long form is BER, not DER.
        let mut long_form = vec![TAG_SEQUENCE, 0x81, 0x77];
        long_form.extend_from_slice(&der[2..]);
        assert!(parse_sec1(&long_form).is_none());

        assert!(parse_sec1(&der[..60]).is_none());
        assert!(parse_sec1(&[]).is_none());
    }

    #[test]
    fn short_scalar_is_left_padded() {
        let der = write_sec1(&parts());
        // Re-encode with a 31-byte scalar.
        let mut short = vec![
            TAG_SEQUENCE,
            0x76,
            TAG_INTEGER,
            0x01,
            0x01,
            TAG_OCTET_STRING,
            31,
        ];
        short.extend_from_slice(&[0x22; 31]);
        short.extend_from_slice(&der[39..]);
        let back = parse_sec1(&short).expect("parses");
        assert_eq!(back.scalar[0], 0);
        assert_eq!(back.scalar[1..], [0x22; 31]);
    }
}
