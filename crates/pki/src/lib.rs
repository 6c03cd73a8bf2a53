//! rkube's certificates: a cluster CA generated on first start, serving and client
//! certificates it signs, kubeconfigs that stock kubectl uses as they are, static token
//! files, and reading the identity (user, groups) out of a client certificate.

mod identity;
mod kubeconfig;
mod service_account;
mod tokens;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub use identity::{Identity, identity_from_certificate};
pub use kubeconfig::{Kubeconfig, write_private};
pub use service_account::ServiceAccountKeys;
pub use tokens::{TokenEntry, TokenFile};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}:{line}: {reason}")]
    TokenFile { path: String, line: usize, reason: String },
    #[error("{name:?} is not a valid DNS name for a serving certificate")]
    BadDnsName { name: String },
    #[error("client certificate: {0}")]
    BadClientCertificate(String),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate {
        what: what.to_string(),
        source,
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How long issued leaf certificates last (kubeadm's default: a year); the CA lasts ten.
const LEAF_VALIDITY: Duration = Duration::days(365);
const CA_VALIDITY: Duration = Duration::days(3650);

/// The cluster's certificate authority. It signs serving certificates and client
/// certificates, and the API server trusts client certificates it signed.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `ca.crt`/`ca.key` from `dir`, generating them on first use (key mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(cert_error("reading the CA key"))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_error("reading the CA certificate"))?;
            return Ok(Self { cert_pem, issuer });
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("rkube-ca", &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(cert_error("signing the CA"))?;
        let cert_pem = cert.pem();
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, &cert_pem).map_err(io_error(&cert_path))?;
        tracing::info!(path = %cert_path.display(), "generated the cluster CA");
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for the API server, valid for every name and address given.
    pub fn issue_serving(&self, common_name: &str, dns_names: &[String], ips: &[IpAddr]) -> Result<CertKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        if let Some(bad) = dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(PkiError::BadDnsName { name: bad.clone() });
        }
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                n.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(cert_error("a serving certificate name"))
            })
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "the serving certificate")
    }

    /// A client certificate: the API server reads the user from CN and groups from O.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, "a client certificate")
    }

    fn sign(&self, mut params: CertificateParams, what: &str) -> Result<CertKey> {
        let key = KeyPair::generate().map_err(cert_error(what))?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + LEAF_VALIDITY;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error(what))?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// RFC 1123 host names (letters, digits, hyphens; labels of 1-63), as certificates carry them.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a certificate and key pair as `NAME.crt` and `NAME.key` (0600) in `dir`.
pub fn write_cert_key(dir: &Path, name: &str, pair: &CertKey) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let cert = dir.join(format!("{name}.crt"));
    std::fs::write(&cert, &pair.cert_pem).map_err(io_error(&cert))?;
    write_private(&dir.join(format!("{name}.key")), &pair.key_pem)
}

/// Base64 of PEM text, as kubeconfigs embed certificates.
pub(crate) fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A certificate signed by the reloaded CA carries the identity it was given.
        let client = again.issue_client("system:admin", &["system:masters"]).unwrap();
        let der = pem_to_der(&client.cert_pem);
        let identity = identity_from_certificate(&der).unwrap();
        assert_eq!(identity.user, "system:admin");
        assert_eq!(identity.groups, vec!["system:masters".to_string()]);
    }

    #[test]
    fn serving_certificate_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let names = vec![
            "kubernetes.default.svc.cluster.local".to_string(),
            "localhost".to_string(),
        ];
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "10.43.0.1".parse().unwrap()];
        let serving = ca.issue_serving("kube-apiserver", &names, &ips).unwrap();
        let der = pem_to_der(&serving.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", san.general_names);
        for expected in [
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "[127, 0, 0, 1]",
            "[10, 43, 0, 1]",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
        for bad in ["bad name", "", "a..b", "-a", "x_y"] {
            let err = ca.issue_serving("x", &[bad.into()], &[]).unwrap_err();
            assert!(matches!(err, PkiError::BadDnsName { .. }), "{bad}: {err}");
        }
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }
}
