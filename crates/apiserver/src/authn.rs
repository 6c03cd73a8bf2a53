//! Authentication: x509 client certificates (verified by TLS against the cluster CA), then
//! bearer tokens from the token file. Anything else is anonymous, which gets 401.

use rkube_pki::{Identity, TokenFile, identity_from_certificate};

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
}

pub struct Authenticator {
    tokens: TokenFile,
}

impl Authenticator {
    pub fn new(tokens: TokenFile) -> Self {
        Self { tokens }
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
        self.tokens.authenticate(token).cloned()
    }
}
