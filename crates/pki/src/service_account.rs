//! Service-account tokens: ES256-signed JWTs, as upstream's TokenRequest issues and its
//! authenticator checks them. The signing key is generated on first start beside the CA
//! (`service-account.key`, PKCS#8, mode 0600) so tokens outlive restarts.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::{PkiError, Result, io_error, write_private};

pub struct ServiceAccountKeys {
    pair: EcdsaKeyPair,
    public: Vec<u8>,
    rng: SystemRandom,
}

fn key_error(reason: &str) -> PkiError {
    PkiError::BadClientCertificate(format!("service-account key: {reason}"))
}

impl ServiceAccountKeys {
    /// Loads `service-account.key` from `dir`, generating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join("service-account.key");
        let rng = SystemRandom::new();
        let pkcs8 = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| key_error("not base64"))?
        } else {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
            let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| key_error("generation failed"))?;
            let text = base64::engine::general_purpose::STANDARD.encode(document.as_ref());
            write_private(&path, &text)?;
            document.as_ref().to_vec()
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| key_error("not an ECDSA P-256 PKCS#8 key"))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self { pair, public, rng })
    }

    /// The compact JWT of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let signature = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| key_error("signing failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// The claims of a token this key signed, or `None`.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") || payload.contains('.') {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let key = ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public);
        key.verify(signed.as_bytes(), &signature).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ServiceAccountKeys::load_or_create(dir.path()).unwrap();
        let token = keys
            .sign(&json!({"sub": "system:serviceaccount:default:robot"}))
            .unwrap();
        assert_eq!(
            keys.verify(&token).unwrap()["sub"],
            "system:serviceaccount:default:robot"
        );
        let again = ServiceAccountKeys::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token).is_some(), "the key survives restarts");
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged = format!(
            "{head}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(json!({"sub": "system:admin"}).to_string())
        );
        assert!(keys.verify(&forged).is_none());
        let other = ServiceAccountKeys::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify(&token).is_none());
        assert!(keys.verify("not-a-token").is_none());
    }
}
