//! Authentication: x509 client certificates (verified by TLS against the cluster CA), then
//! bearer tokens: from the token file, or service-account tokens this server signed (whose
//! account must still exist, which the request path checks). Anything else is anonymous,
//! which gets 401.

use rkube_pki::{Identity, ServiceAccountKeys, TokenFile, identity_from_certificate};
use serde_json::{Value, json};

/// Who service-account tokens are from and for (upstream's default issuer and audience).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A service account's user name.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Per connection: the identity its client certificate proves, if any.
pub(crate) struct Connection {
    certificate_identity: Option<Identity>,
}

impl Connection {
    pub fn new(certificate: Option<Vec<u8>>) -> Self {
        let certificate_identity = certificate.and_then(|der| match identity_from_certificate(&der) {
            Ok(identity) => Some(identity),
            Err(err) => {
                tracing::debug!(%err, "client certificate carries no usable identity");
                None
            }
        });
        Self { certificate_identity }
    }

    /// An in-process client's: who it is was settled when the server made its transport.
    pub fn authenticated(identity: Identity) -> Self {
        Self {
            certificate_identity: Some(identity),
        }
    }
}

pub struct Authenticator {
    tokens: TokenFile,
    service_accounts: ServiceAccountKeys,
}

impl Authenticator {
    pub fn new(tokens: TokenFile, service_accounts: ServiceAccountKeys) -> Self {
        Self {
            tokens,
            service_accounts,
        }
    }

    /// A signed service-account token for the account (`namespace`, `name`, `uid`).
    pub(crate) fn issue(
        &self,
        (namespace, name, uid): (&str, &str, &str),
        audiences: &[String],
        expiration_seconds: i64,
    ) -> Result<(String, i64), rkube_pki::PkiError> {
        let now = unix_now();
        let expires = now + expiration_seconds;
        let claims = json!({
            "aud": audiences, "exp": expires, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": crate::object::new_uid(),
            "sub": service_account_user(namespace, name),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        Ok((self.service_accounts.sign(&claims)?, expires))
    }

    /// The account a valid service-account token names, with its uid.
    fn service_account(&self, token: &str) -> Option<Identity> {
        let claims = self.service_accounts.verify(token)?;
        let now = unix_now();
        let number = |k: &str| claims.get(k).and_then(Value::as_i64);
        if number("exp").is_none_or(|exp| exp <= now) || number("nbf").is_some_and(|nbf| nbf > now) {
            return None;
        }
        let for_us = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(ISSUER)));
        if claims.get("iss").and_then(Value::as_str) != Some(ISSUER) || !for_us {
            return None;
        }
        let namespace = claims.pointer("/kubernetes.io/namespace")?.as_str()?;
        let account = claims.pointer("/kubernetes.io/serviceaccount")?;
        let name = account.get("name")?.as_str()?;
        Some(Identity {
            user: service_account_user(namespace, name),
            uid: account
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        })
    }

    /// Who sent the request, or `None` for anonymous.
    pub(crate) fn authenticate(&self, connection: &Connection, headers: &http::HeaderMap) -> Option<Identity> {
        if let Some(identity) = &connection.certificate_identity {
            return Some(identity.clone());
        }
        let header = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.authenticate_token(token.trim())
    }

    /// Whose bearer token this is (TokenReview asks the same).
    pub(crate) fn authenticate_token(&self, token: &str) -> Option<Identity> {
        self.tokens
            .authenticate(token)
            .cloned()
            .or_else(|| self.service_account(token))
    }
}
