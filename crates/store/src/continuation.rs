//! Continue tokens: where a paged range stopped and the revision it is consistent at.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Result, StoreError};
use crate::key::validate_key;

/// Decoded form of the opaque token handed out with a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    pub revision: i64,
    /// The last key returned; the next page starts after it.
    pub last_key: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}\n{}", self.revision, self.last_key))
    }

    /// Decodes a token and checks that it continues a range over `prefix`.
    pub fn decode(token: &str, prefix: &str) -> Result<Self> {
        let invalid = |reason: &str| StoreError::InvalidContinue {
            reason: reason.to_string(),
        };
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid("not a token this server issued (bad encoding)"))?;
        let text = String::from_utf8(raw).map_err(|_| invalid("not a token this server issued (not text)"))?;
        let (revision, last_key) = text
            .split_once('\n')
            .ok_or_else(|| invalid("not a token this server issued (no revision)"))?;
        let revision: i64 = revision
            .parse()
            .map_err(|_| invalid("not a token this server issued (bad revision)"))?;
        if revision <= 0 {
            return Err(invalid("not a token this server issued (bad revision)"));
        }
        validate_key(last_key).map_err(|_| invalid("not a token this server issued (bad key)"))?;
        if !last_key.starts_with(prefix) {
            return Err(invalid("the token belongs to a different range"));
        }
        Ok(Self {
            revision,
            last_key: last_key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let token = ContinueToken {
            revision: 42,
            last_key: "/registry/pods/default/a".into(),
        };
        let encoded = token.encode();
        assert_eq!(ContinueToken::decode(&encoded, "/registry/pods/").unwrap(), token);
    }

    #[test]
    fn rejects_foreign_tokens() {
        let other = ContinueToken {
            revision: 42,
            last_key: "/registry/services/default/a".into(),
        }
        .encode();
        let zero = URL_SAFE_NO_PAD.encode("0\n/registry/pods/a");
        for bad in ["", "!!!", "bm90aGluZw", other.as_str(), zero.as_str()] {
            let err = ContinueToken::decode(bad, "/registry/pods/").unwrap_err();
            assert!(matches!(err, StoreError::InvalidContinue { .. }), "{bad:?}: {err}");
        }
    }
}
