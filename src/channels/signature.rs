//! HMAC helpers shared by the adapters that sign or verify request bodies.
//! Comparison is constant-time (`Mac::verify_slice`), so a forger learns
//! nothing from response timing.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `body` under `key`.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a hex HMAC-SHA256 (either case) of `body` under `key`.
pub fn verify_hmac_sha256_hex(key: &[u8], body: &[u8], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            expected
        );
        assert!(verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &expected.to_uppercase()
        ));
    }

    #[test]
    fn rejects_wrong_or_garbled_signatures() {
        let sig = hmac_sha256_hex(b"k", b"body");
        assert!(verify_hmac_sha256_hex(b"k", b"body", &sig));
        assert!(!verify_hmac_sha256_hex(b"k", b"body!", &sig));
        assert!(!verify_hmac_sha256_hex(b"other", b"body", &sig));
        assert!(!verify_hmac_sha256_hex(b"k", b"body", "zz"));
        assert!(!verify_hmac_sha256_hex(b"k", b"body", &sig[..10]));
        assert!(!verify_hmac_sha256_hex(b"k", b"body", ""));
    }
}
