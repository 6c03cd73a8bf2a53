//! The Python `kubernetes` client (installed by scripts/setup) against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rkube_testkit::RkubeServer;

/// The interpreter scripts/setup prepared: `RKUBE_PYTHON`, else its default venv.
fn python() -> PathBuf {
    std::env::var_os("RKUBE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/rkube-py/bin/python"))
}

#[test]
fn python_client_create_list_watch_patch_delete() {
    let python = python();
    assert!(python.exists(), "{} missing: run scripts/setup", python.display());
    let server = RkubeServer::start(Path::new(env!("CARGO_BIN_EXE_rkube")), &[]).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/client_test.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&server.kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("python client: all checks passed"), "{stdout}");
}
