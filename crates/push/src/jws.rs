//! The JWTs the providers want, signed with ring: APNs provider tokens (ES256 with the `.p8` key) and
//! the assertions of FCM's OAuth2 JWT-bearer grant (RS256 with the service account's key), and their
//! verification for the local stand-in (`mock`). Kept apart from `jsonwebtoken`, whose process-wide
//! provider verifies only the HMAC tokens clients log in with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde_json::Value;

/// A private key that signs JWTs.
pub enum Signer {
    /// ES256: ECDSA P-256 with SHA-256, fixed-length (JOSE) signatures.
    Es256(EcdsaKeyPair),
    /// RS256: RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256(RsaKeyPair),
}

fn pkcs8(pem: &[u8]) -> Result<Vec<u8>, String> {
    match PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key: {e}"))? {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        _ => Err("the key must be PKCS#8 (-----BEGIN PRIVATE KEY-----)".into()),
    }
}

impl Signer {
    /// A PKCS#8 PEM P-256 key (an APNs `.p8` file).
    pub fn es256_pem(pem: &[u8]) -> Result<Signer, String> {
        let der = pkcs8(pem)?;
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .map(Signer::Es256)
        .map_err(|e| format!("not a P-256 key: {e}"))
    }

    /// A PKCS#8 PEM RSA key (a service account's `private_key`).
    pub fn rs256_pem(pem: &[u8]) -> Result<Signer, String> {
        let der = pkcs8(pem)?;
        RsaKeyPair::from_pkcs8(&der)
            .map(Signer::Rs256)
            .map_err(|e| format!("not an RSA key: {e}"))
    }

    /// The public key in the form [`verify`] takes: the uncompressed P-256 point, or the RSA key as
    /// PKCS#1 `RSAPublicKey` DER.
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Signer::Es256(k) => k.public_key().as_ref().to_vec(),
            Signer::Rs256(k) => k.public().as_ref().to_vec(),
        }
    }

    /// `header.claims.signature`, each base64url without padding; `alg` is set in the header.
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let mut header = header.clone();
        header["alg"] = match self {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        }
        .into();
        header["typ"] = "JWT".into();
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Es256(k) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "ECDSA signing failed".to_string())?
                .as_ref()
                .to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_string())?;
                sig
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// A verified JWT's header and claims, or `None` when it is malformed, its `alg` is not `alg`, or
/// its signature does not check out with `public_key` (see [`Signer::public_key`]). Claims are not
/// validated here.
pub fn verify(jwt: &str, alg: &str, public_key: &[u8]) -> Option<(Value, Value)> {
    let (input, sig) = jwt.rsplit_once('.')?;
    let (h, c) = input.split_once('.')?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let algorithm: &dyn signature::VerificationAlgorithm = match (alg, header["alg"].as_str()) {
        ("ES256", Some("ES256")) => &signature::ECDSA_P256_SHA256_FIXED,
        ("RS256", Some("RS256")) => &signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return None,
    };
    signature::UnparsedPublicKey::new(algorithm, public_key)
        .verify(input.as_bytes(), &sig)
        .ok()?;
    Some((header, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn es256_and_rs256_tokens_verify_and_tampering_is_caught() {
        let ec = rcgen::KeyPair::generate().expect("P-256 key");
        let es = Signer::es256_pem(ec.serialize_pem().as_bytes()).expect("es256");
        let rs = Signer::rs256_pem(include_bytes!("testdata/fcm_test_key.pem")).expect("rs256");
        for (s, alg) in [(&es, "ES256"), (&rs, "RS256")] {
            let jwt = s
                .sign(&json!({"kid": "K"}), &json!({"iss": "team", "iat": 1}))
                .expect("sign");
            let (h, c) = verify(&jwt, alg, &s.public_key()).expect("verifies");
            assert_eq!(
                (h["alg"].as_str(), h["kid"].as_str()),
                (Some(alg), Some("K"))
            );
            assert_eq!(c["iss"], "team");
            let other = if alg == "ES256" { "RS256" } else { "ES256" };
            assert!(verify(&jwt, other, &s.public_key()).is_none(), "wrong alg");
            let mut bad = jwt.clone().into_bytes();
            let i = jwt.find('.').unwrap() + 3;
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(verify(std::str::from_utf8(&bad).unwrap(), alg, &s.public_key()).is_none());
        }
        assert!(Signer::es256_pem(b"not pem").is_err());
    }
}
