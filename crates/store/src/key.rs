//! What a key may be, and the prefix arithmetic shared by both backends.

use crate::error::{Result, StoreError};

/// Longest key accepted. Kubernetes keys are `/registry/<group>/<resource>/<ns>/<name>` with
/// names of at most 253 bytes; 1 KiB leaves room for every such key and rejects garbage.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value accepted: etcd's default request limit, which Kubernetes objects are
/// written to fit (1.5 MiB). The same limit on both backends keeps them interchangeable.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Checks a key: non-empty, at most [`MAX_KEY_BYTES`], printable ASCII without spaces.
///
/// The byte set keeps keys safe in SQL text columns, in log lines and in continue tokens,
/// and it is a superset of what Kubernetes puts in keys (names are DNS labels or subdomains,
/// RBAC names add `:` and `@`).
pub fn validate_key(key: &str) -> Result<()> {
    let invalid = |reason| {
        Err(StoreError::InvalidKey {
            key: truncate_for_message(key),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("a key must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid("a key must be at most 1024 bytes");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid("a key may contain only printable ASCII characters without spaces (0x21-0x7e)");
    }
    Ok(())
}

pub fn validate_value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: key.to_string(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The first key after every key that starts with `prefix` (etcd's "range end" for a
/// prefix). Keys are printable ASCII, so the last byte is never 0xff and incrementing it
/// always works.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last += 1;
    }
    // Incrementing a printable ASCII byte (at most 0x7e) gives at most 0x7f: still ASCII.
    String::from_utf8_lossy(&bytes).into_owned()
}

fn truncate_for_message(key: &str) -> String {
    const SHOWN: usize = 100;
    if key.len() <= SHOWN {
        return key.to_string();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &key[..end], key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        let cases: &[(&str, bool)] = &[
            ("/registry/pods/default/nginx", true),
            ("/registry/clusterroles/system:controller:job-controller", true),
            ("a", true),
            ("", false),
            ("/with space", false),
            ("/tab\t", false),
            ("/nul\0", false),
            ("/utf8-é", false),
            ("/del\x7f", false),
        ];
        for (key, ok) in cases {
            assert_eq!(validate_key(key).is_ok(), *ok, "key {key:?}");
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let err = validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert!(err.to_string().contains("at most 1024 bytes"), "{err}");
        assert!(err.to_string().len() < 300, "message is truncated: {err}");
    }

    #[test]
    fn value_limit() {
        assert!(validate_value("/k", &vec![0; MAX_VALUE_BYTES]).is_ok());
        let err = validate_value("/k", &vec![0; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "value for key \"/k\" is 1572865 bytes, over the limit of 1572864 bytes"
        );
    }

    #[test]
    fn prefix_end_excludes_siblings() {
        assert_eq!(prefix_end("/a/"), "/a0");
        assert!("/ab/x" > prefix_end("/a/").as_str());
        assert!("/a/zzz" < prefix_end("/a/").as_str());
        assert_eq!(prefix_end("~"), "\x7f");
    }
}
