//! The JWT crypto provider: HMAC only (HS256, HS384, HS512), on RustCrypto's `hmac` and `sha2`. Tokens
//! are only ever HMAC-signed with the configured secrets, so the RSA and elliptic-curve code of
//! `jsonwebtoken`'s bundled providers is not linked in. [`install`] makes it the process default.

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::{Sha256, Sha384, Sha512};
use signature::{Signer, Verifier};

/// One HMAC key of one algorithm.
enum Key {
    S256(Hmac<Sha256>),
    S384(Hmac<Sha384>),
    S512(Hmac<Sha512>),
}

struct HmacKey {
    alg: Algorithm,
    key: Key,
}

impl HmacKey {
    fn new(alg: &Algorithm, secret: &[u8]) -> Result<HmacKey, Error> {
        let bad = |_| Error::from(ErrorKind::InvalidKeyFormat);
        let key = match alg {
            Algorithm::HS256 => Key::S256(Hmac::new_from_slice(secret).map_err(bad)?),
            Algorithm::HS384 => Key::S384(Hmac::new_from_slice(secret).map_err(bad)?),
            Algorithm::HS512 => Key::S512(Hmac::new_from_slice(secret).map_err(bad)?),
            _ => return Err(ErrorKind::InvalidAlgorithm.into()),
        };
        Ok(HmacKey { alg: *alg, key })
    }

    fn mac(&self, msg: &[u8]) -> Vec<u8> {
        match &self.key {
            Key::S256(k) => k.clone().chain_update(msg).finalize().into_bytes().to_vec(),
            Key::S384(k) => k.clone().chain_update(msg).finalize().into_bytes().to_vec(),
            Key::S512(k) => k.clone().chain_update(msg).finalize().into_bytes().to_vec(),
        }
    }

    fn check(&self, msg: &[u8], tag: &[u8]) -> bool {
        match &self.key {
            Key::S256(k) => k.clone().chain_update(msg).verify_slice(tag).is_ok(),
            Key::S384(k) => k.clone().chain_update(msg).verify_slice(tag).is_ok(),
            Key::S512(k) => k.clone().chain_update(msg).verify_slice(tag).is_ok(),
        }
    }
}

impl Signer<Vec<u8>> for HmacKey {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.mac(msg))
    }
}

impl JwtSigner for HmacKey {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

impl Verifier<Vec<u8>> for HmacKey {
    fn verify(&self, msg: &[u8], tag: &Vec<u8>) -> Result<(), signature::Error> {
        // Constant-time comparison (`verify_slice`).
        if self.check(msg, tag) {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for HmacKey {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: |alg: &Algorithm, key: &EncodingKey| {
        Ok(Box::new(HmacKey::new(alg, key.try_get_hmac_secret()?)?) as Box<dyn JwtSigner>)
    },
    verifier_factory: |alg: &Algorithm, key: &DecodingKey| {
        Ok(Box::new(HmacKey::new(alg, key.try_get_hmac_secret()?)?) as Box<dyn JwtVerifier>)
    },
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes the HMAC-only provider the process default, unless a provider is already in use (a test
/// build that also enables `jsonwebtoken`'s bundled one, which handles HMAC the same way).
pub(crate) fn install() {
    let _ = PROVIDER.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_every_hmac_algorithm_and_refuses_others() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let k = HmacKey::new(&alg, b"secret").unwrap();
            let tag = k.try_sign(b"message").unwrap();
            assert!(Verifier::verify(&k, b"message", &tag).is_ok());
            assert!(Verifier::verify(&k, b"messagE", &tag).is_err());
            let other = HmacKey::new(&alg, b"other").unwrap();
            assert!(Verifier::verify(&other, b"message", &tag).is_err());
        }
        assert!(HmacKey::new(&Algorithm::RS256, b"secret").is_err());
        // Through the provider's factories, as jsonwebtoken calls them.
        let signer =
            (PROVIDER.signer_factory)(&Algorithm::HS384, &EncodingKey::from_secret(b"k")).unwrap();
        let verifier =
            (PROVIDER.verifier_factory)(&Algorithm::HS384, &DecodingKey::from_secret(b"k"))
                .unwrap();
        let tag = signer.try_sign(b"a.b").unwrap();
        assert!(verifier.verify(b"a.b", &tag).is_ok());
        assert!(verifier.verify(b"a.c", &tag).is_err());
        assert!(
            (PROVIDER.verifier_factory)(&Algorithm::RS256, &DecodingKey::from_secret(b"k"))
                .is_err()
        );
        assert!(HmacKey::new(&Algorithm::ES256, b"secret").is_err());
    }
}
