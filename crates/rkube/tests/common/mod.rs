//! Helpers shared by the end-to-end tests of this crate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use rkube_testkit::{Control, Kubectl, RkubeServer};

pub fn server(extra: &[&str]) -> RkubeServer {
    RkubeServer::start(Path::new(env!("CARGO_BIN_EXE_rkube")), extra).unwrap()
}

/// From async tests: a server (with the scheduler if asked) and a kube-rs client for it.
pub async fn server_and_client(scheduler: bool) -> (RkubeServer, kube::Client) {
    let control = if scheduler {
        Control::Scheduler
    } else {
        Control::ApiOnly
    };
    cluster_and_client(control).await
}

/// From async tests: a server with the given components and a kube-rs client for it.
pub async fn cluster_and_client(control: Control) -> (RkubeServer, kube::Client) {
    drop(rustls::crypto::ring::default_provider().install_default());
    let binary = Path::new(env!("CARGO_BIN_EXE_rkube"));
    let server = tokio::task::spawn_blocking(move || RkubeServer::start_as(binary, &[], control))
        .await
        .unwrap()
        .unwrap();
    let client = server.client().await.unwrap();
    (server, client)
}

/// The command's stdout; fails the test (with both streams) if it failed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's stderr; fails the test if it succeeded.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `yaml` to `dir/name` and runs `kubectl <verb> -f` on it.
pub fn apply_file(kubectl: &Kubectl, dir: &Path, name: &str, yaml: &str, verb: &str) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    kubectl.run(&[verb, "-f", file.to_str().unwrap()]).unwrap()
}

/// `curl` as the cluster admin (client certificate): (HTTP code, body).
pub fn curl(server: &RkubeServer, args: &[&str]) -> (String, String) {
    let tls = server.dir().join("data/server/tls");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(tls.join("ca.crt"))
        .arg("--cert")
        .arg(tls.join("client-admin.crt"))
        .arg("--key")
        .arg(tls.join("client-admin.key"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}
