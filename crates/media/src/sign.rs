//! Signed, expiring URLs: `GET <url>?expires=<unix seconds>&sig=<hex>` where `sig` is
//! HMAC-SHA256(`media.signing_secret`, `"<url path>\n<expires>"`). Anyone holding such a URL may
//! download until `expires`, without a token — for sharing a file outside the app.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, path: &str, expires: u64) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    m.update(path.as_bytes());
    m.update(b"\n");
    m.update(expires.to_string().as_bytes());
    m
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // Only reachable if the hmac crate started refusing some key length; an empty key still signs.
    match HmacSha256::new_from_slice(b"") {
        Ok(m) => m,
        Err(_) => panic!("HMAC-SHA256 refuses every key"),
    }
}

/// The signature of `path` valid until `expires` (Unix seconds).
pub fn sign(secret: &str, path: &str, expires: u64) -> String {
    hex::encode(mac(secret, path, expires).finalize().into_bytes())
}

/// Whether `sig` signs `path` until `expires` (constant-time comparison). Expiry is the caller's.
pub fn verify(secret: &str, path: &str, expires: u64, sig: &str) -> bool {
    let Ok(raw) = hex::decode(sig) else {
        return false;
    };
    mac(secret, path, expires).verify_slice(&raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let s = sign("k", "/v2/images/7/1/a.png", 100);
        assert!(verify("k", "/v2/images/7/1/a.png", 100, &s));
        assert!(!verify("k", "/v2/images/7/1/a.png", 101, &s));
        assert!(!verify("k", "/v2/images/7/2/a.png", 100, &s));
        assert!(!verify("other", "/v2/images/7/1/a.png", 100, &s));
        assert!(!verify("k", "/v2/images/7/1/a.png", 100, "zz"));
    }
}
