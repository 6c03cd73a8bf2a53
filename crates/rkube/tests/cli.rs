//! The binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rkube() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rkube"))
}

#[test]
fn version_and_help() {
    let out = rkube().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rkube {}", env!("CARGO_PKG_VERSION"))
    );
    let out = rkube().args(["server", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--data-dir") && help.contains("--datastore-endpoint"),
        "{help}"
    );
}

#[test]
fn bad_datastore_endpoint_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = rkube()
        .args(["server", "--datastore-endpoint", "mysql://db"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rkube: --datastore-endpoint: datastore endpoint \"mysql://db\": expected sqlite://PATH"),
        "{err}"
    );
}

/// The server creates its SQLite datastore under --data-dir, holds it, and stops cleanly
/// on SIGTERM; a second server on the same data dir is refused while the first runs.
#[test]
fn server_starts_on_sqlite_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let mut server = rkube()
        .args(["server", "--https-listen-port", "0", "--bind-address", "127.0.0.1"])
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = dir.path().join("server/db/state.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.exists() {
        assert!(Instant::now() < deadline, "no datastore at {}", db.display());
        assert!(server.try_wait().unwrap().is_none(), "the server exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    let second = rkube()
        .args(["server", "--https-listen-port", "0", "--bind-address", "127.0.0.1"])
        .arg("--write-kubeconfig")
        .arg(dir.path().join("second.yaml"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another rkube process"), "{err}");

    let pid = server.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.wait().unwrap();
    assert!(status.success(), "{status}");
}
