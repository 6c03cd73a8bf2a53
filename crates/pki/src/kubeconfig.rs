use std::io::Write;
use std::path::Path;

use crate::{CertKey, PkiError, Result, b64};

/// A kubeconfig with one cluster, one user (client certificate) and one context, as
/// stock kubectl reads it.
pub struct Kubeconfig<'a> {
    pub name: &'a str,
    pub server: &'a str,
    pub ca_pem: &'a str,
    pub client: &'a CertKey,
}

impl Kubeconfig<'_> {
    pub fn render(&self) -> String {
        let Self {
            name,
            server,
            ca_pem,
            client,
        } = self;
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
current-context: {name}
preferences: {{}}
",
            ca = b64(ca_pem),
            cert = b64(&client.cert_pem),
            key = b64(&client.key_pem),
        )
    }

    /// Writes the kubeconfig with mode 0600 (it holds a private key).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_private(path, &self.render())
    }
}

/// Writes `contents` to `path` readable by the owner only, creating parent folders. The
/// mode is set before anything secret is written.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its mode on open: tighten it before writing.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}
