//! Stored access tokens and JWTs: generating a token, hashing it for storage, telling a JWT from a
//! stored token, and verifying JWTs.
//!
//! * A granted token is 32 random bytes from the thread-local CSPRNG, hex-encoded (64 characters,
//!   256 bits of entropy, URL-safe, never contains a `.`).
//! * The embedded backend stores only the SHA-256 of a token, so a copied database file yields no
//!   usable tokens; the Redis backend must keep the token in the key name (`access_token_<token>`),
//!   as GoBelieve's API server writes it.
//! * A token is treated as a JWT when JWT secrets are configured and it has the JWT shape (three
//!   base64url segments separated by `.`). Such a token is verified as a JWT only; every other token
//!   goes to the stored-token lookup.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{AuthInfo, JwtOptions};

/// Longest token string looked up at all; longer ones are invalid without a backend round trip.
pub(crate) const MAX_TOKEN_LEN: usize = 1024;

/// Bytes of entropy in a granted token.
const TOKEN_BYTES: usize = 32;

/// A fresh random token: lowercase hex of 32 random bytes.
pub(crate) fn generate() -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut raw);
    hex(&raw)
}

/// SHA-256 of the token, the embedded backend's storage and cache key.
pub(crate) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A short, stable identifier of a token (the first 8 bytes of its SHA-256), the same on every node:
/// sessions keep it instead of the token, so a revocation can find the sessions that logged in with
/// that token. Never 0 (0 means "any token" where fingerprints are matched).
pub fn fingerprint(token: &str) -> u64 {
    let h = hash(token);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b).max(1)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Three non-empty base64url segments separated by dots.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        {
            return false;
        }
    }
    parts == 3
}

/// Verifies HMAC-signed JWTs with per-app or global secrets.
pub(crate) struct JwtVerifier {
    global: Option<DecodingKey>,
    per_app: BTreeMap<i64, DecodingKey>,
}

impl JwtVerifier {
    pub(crate) fn new(opts: &JwtOptions) -> Option<JwtVerifier> {
        if !opts.enabled() {
            return None;
        }
        crate::jwt_hmac::install();
        Some(JwtVerifier {
            global: opts
                .secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            per_app: opts
                .app_secrets
                .iter()
                .map(|(appid, s)| (*appid, DecodingKey::from_secret(s.as_bytes())))
                .collect(),
        })
    }

    /// `Some` for a valid JWT; `None` for anything else (bad signature, algorithm, claims, time).
    pub(crate) fn verify(&self, token: &str) -> Option<AuthInfo> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            tracing::debug!(alg = ?header.alg, "JWT rejected: algorithm not allowed");
            return None;
        }
        // The key depends on the (not yet verified) appid claim; everything is verified below.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(token).ok()?;
        let claimed_appid = claim_i64(&unverified.claims, "appid");
        let key = self.per_app.get(&claimed_appid).or(self.global.as_ref())?;

        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        let data = match jsonwebtoken::decode::<Value>(token, key, &validation) {
            Ok(data) => data,
            Err(e) => {
                tracing::debug!(error = %e, "JWT rejected");
                return None;
            }
        };
        let claims = &data.claims;
        // golang-jwt's MapClaims also refuse an `iat` in the future.
        if let Some(iat) = claims.get("iat") {
            let now = jsonwebtoken::get_current_timestamp();
            match iat.as_f64() {
                Some(iat) if iat <= now as f64 => {}
                _ => {
                    tracing::debug!("JWT rejected: iat in the future or malformed");
                    return None;
                }
            }
        }
        let appid = claim_i64(claims, "appid");
        let uid = claim_i64(claims, "uid");
        if appid != claimed_appid || appid < 0 || uid <= 0 {
            tracing::debug!(appid, uid, "JWT rejected: bad appid/uid claims");
            return None;
        }
        let user_name = ["user_name", "name"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        Some(AuthInfo {
            appid,
            uid,
            user_name,
        })
    }
}

/// A numeric claim as i64; absent, non-numeric or fractional reads as 0 (GoBelieve's rule).
fn claim_i64(claims: &Value, name: &str) -> i64 {
    let Some(v) = claims.get(name) else { return 0 };
    if let Some(i) = v.as_i64() {
        return i;
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(!looks_like_jwt(&a));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a b.c.d"));
    }

    #[test]
    fn numeric_claims() {
        let v: Value = serde_json::json!({"a": 7, "b": 7.0, "c": 7.5, "d": "7"});
        assert_eq!(claim_i64(&v, "a"), 7);
        assert_eq!(claim_i64(&v, "b"), 7);
        assert_eq!(claim_i64(&v, "c"), 0);
        assert_eq!(claim_i64(&v, "d"), 0);
        assert_eq!(claim_i64(&v, "missing"), 0);
    }
}
