use crate::{PkiError, Result};

/// Who a request comes from, as Kubernetes authenticators report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// The identity in a client certificate (already verified against the CA by TLS): the
/// subject's CN is the user, each O a group, as in Kubernetes.
pub fn identity_from_certificate(der: &[u8]) -> Result<Identity> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadClientCertificate(e.to_string()))?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| PkiError::BadClientCertificate("no common name (user) in the subject".into()))?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok(Identity {
        user,
        uid: String::new(),
        groups,
    })
}
