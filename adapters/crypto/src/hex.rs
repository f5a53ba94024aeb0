//! Hex codec for configured keys and HMAC tags; kept local because the workspace has no hex
//! crate and this is the only place that needs one.

/// Lowercase hex, the form the contract uses for HMAC tags (`chain_hmac`, stream signatures).
pub(crate) fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Decodes hex of either case into `out`; `None` unless `hex` is exactly `2 * out.len()` hex
/// digits. Writing into a caller buffer lets key material land in memory the caller wipes.
pub(crate) fn decode_into(hex: &str, out: &mut [u8]) -> Option<()> {
    let digits = hex.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *slot = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

/// Decodes hex of either case; `None` on an odd length or a non-hex digit.
pub(crate) fn decode(hex: &str) -> Option<Vec<u8>> {
    // An odd length leaves `out` one digit short, which `decode_into` refuses.
    let mut out = vec![0u8; hex.len() / 2];
    match decode_into(hex, &mut out) {
        Some(()) => Some(out),
        None => {
            crate::wipe::wipe(&mut out);
            None
        }
    }
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_either_case() {
        let bytes = [0x00, 0x7f, 0x80, 0xab, 0xff];
        assert_eq!(encode(&bytes), "007f80abff");
        assert_eq!(decode("007F80ABff"), Some(bytes.to_vec()));
    }

    #[test]
    fn rejects_odd_length_and_non_hex() {
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("+1"), None);
        let mut out = [0u8; 2];
        assert_eq!(decode_into("abcdef", &mut out), None);
    }
}
