//! PEM armor (RFC 7468) for private keys: one `-----BEGIN <label>-----` block of standard
//! base64. Parsing is strict (one block, matching labels, canonical base64, no headers) because
//! the only PEM documents we read are keys we wrote ourselves or an operator pasted from
//! OpenSSL; anything looser would only widen what a corrupted or forged plaintext could smuggle.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::wipe::wipe;

/// RFC 7468 lines are at most 64 base64 characters.
const LINE_LEN: usize = 64;

/// A decoded PEM block. The DER bytes are wiped on drop: every block we read holds a private key.
pub(crate) struct PemBlock {
    /// The label between `BEGIN ` and the closing dashes (`EC PRIVATE KEY`, `PRIVATE KEY`).
    pub(crate) label: String,
    /// The decoded body.
    pub(crate) der: Vec<u8>,
}

impl Drop for PemBlock {
    fn drop(&mut self) {
        wipe(&mut self.der);
    }
}

/// Parses exactly one PEM block, allowing surrounding whitespace and CRLF line ends. `None` for
/// anything else: no block, two blocks, mismatched labels, RFC 1421 headers (encrypted keys),
/// or base64 that is not canonical.
pub(crate) fn decode(text: &str) -> Option<PemBlock> {
    let mut lines = text.trim().lines().map(|line| line.trim_end_matches('\r'));
    let label = lines
        .next()?
        .strip_prefix("-----BEGIN ")?
        .strip_suffix("-----")?
        .to_owned();
    if label.is_empty() || label.contains('-') {
        return None;
    }
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if ended {
            // Anything after the END line (a second block included) is refused.
            wipe_string(body);
            return None;
        }
        if let Some(rest) = line.strip_prefix("-----END ") {
            if rest.strip_suffix("-----") != Some(label.as_str()) {
                wipe_string(body);
                return None;
            }
            ended = true;
        } else {
            body.push_str(line);
        }
    }
    let der = if ended {
        STANDARD.decode(body.as_bytes()).ok()
    } else {
        None
    };
    wipe_string(body);
    let der = der.filter(|der| !der.is_empty())?;
    Some(PemBlock { label, der })
}

/// Armors `der` under `label`, 64 characters a line, `\n` line ends, a final newline (the form
/// OpenSSL writes).
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / LINE_LEN + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in body.as_bytes().chunks(LINE_LEN) {
        // Standard base64 is ASCII, so every chunk boundary is a char boundary.
        out.extend(chunk.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    // The base64 body spells out the private key as much as the DER does.
    wipe_string(body);
    out
}

fn wipe_string(text: String) {
    let mut bytes = text.into_bytes();
    wipe(&mut bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_wraps_at_64() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = encode("TEST BLOCK", &der);
        assert!(text.lines().all(|line| line.len() <= 64));
        assert!(text.ends_with("-----END TEST BLOCK-----\n"));
        let block = decode(&text).expect("decodes");
        assert_eq!(block.label, "TEST BLOCK");
        assert_eq!(block.der, der);
    }

    #[test]
    fn accepts_crlf_and_surrounding_whitespace() {
        let text = encode("K", b"key bytes").replace('\n', "\r\n");
        let block = decode(&format!("\n  {text}  \n")).expect("decodes");
        assert_eq!(block.der, b"key bytes");
    }

    #[test]
    fn refuses_malformed_armor() {
        // 8 bytes: the body ends in `=` padding.
        let good = encode("K", b"key byte");
        let cases = [
            String::new(),
            "not pem at all".to_owned(),
            good.replace("-----END K-----", "-----END L-----"),
            good.replace("-----END K-----\n", ""),
            format!("{good}{good}"),
            good.replace(
                "-----BEGIN K-----\n",
                "-----BEGIN K-----\nProc-Type: 4,ENCRYPTED\n",
            ),
            good.replace('=', ""),
            "-----BEGIN K-----\n-----END K-----\n".to_owned(),
        ];
        for case in cases {
            assert!(decode(&case).is_none(), "accepted {case:?}");
        }
    }
}
