//! Stock kubectl against a real `rkube server`: serving, identity, version, health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

mod common;

use common::server;

/// kubectl's stdout after checking it succeeded.
fn stdout(out: &std::process::Output) -> String {
    common::ok(out.clone())
}

#[test]
fn kubectl_versions_see_a_1_33_server() {
    let server = server(&[]);
    for binary in ["kubectl", "kubectl.1.27", "kubectl.1.32", "kubectl.1.33"] {
        let out = server.kubectl_binary(binary).run(&["version", "-o", "json"]).unwrap();
        let version: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(version["serverVersion"]["major"], "1", "{binary}");
        assert_eq!(version["serverVersion"]["minor"], "33", "{binary}");
        let git = version["serverVersion"]["gitVersion"].as_str().unwrap();
        assert!(git.starts_with("v1.33."), "{binary}: {git}");
    }
    // The dispatcher ran the 1.33 client for a 1.33 server.
    let out = server.kubectl().run(&["version", "-o", "json"]).unwrap();
    let version: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(version["clientVersion"]["minor"], "33");
}

#[test]
fn health_endpoints() {
    let server = server(&[]);
    let kubectl = server.kubectl();
    assert_eq!(stdout(&kubectl.run(&["get", "--raw", "/healthz"]).unwrap()), "ok");
    assert_eq!(stdout(&kubectl.run(&["get", "--raw", "/livez"]).unwrap()), "ok");
    let verbose = stdout(&kubectl.run(&["get", "--raw", "/readyz?verbose"]).unwrap());
    assert!(verbose.contains("[+]datastore ok"), "{verbose}");
    assert!(verbose.ends_with("readyz check passed\n"), "{verbose}");
    let out = kubectl.run(&["get", "--raw", "/no/such/path"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{out:?}");
}

#[test]
fn tokens_and_anonymous_requests() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret-token,alice,u-1,\"dev\"\n").unwrap();
    let server = server(&["--token-auth-file", tokens.to_str().unwrap()]);
    let ca = server.ca_file();
    let with_token = |token: &str| {
        Command::new(rkube_testkit::resolve_kubectl("kubectl.1.33"))
            .args(["--server", &server.url, "--certificate-authority", ca.to_str().unwrap()])
            .args(["--token", token, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .args(["get", "--raw", "/version"])
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };
    assert!(stdout(&with_token("s3cret-token")).contains("\"minor\":\"33\""));
    let out = with_token("wrong-token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthorized"), "{out:?}");

    // No credentials at all: 401 with a Status body, over TLS the CA vouches for.
    let out = Command::new("curl")
        .args(["-sS", "--cacert", ca.to_str().unwrap(), "-w", "\n%{http_code}"])
        .arg(format!("{}/api", server.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "401");
    let status: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    assert_eq!(status["code"], 401);
}

#[test]
fn kubeconfig_is_private_and_the_server_stops_cleanly() {
    let server = server(&[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&server.kubeconfig).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let status = server.stop().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn metrics_count_requests_watches_and_datastore_latency() {
    let server = server(&[]);
    let kubectl = server.kubectl();
    stdout(&kubectl.run(&["get", "namespaces"]).unwrap());
    stdout(&kubectl.run(&["get", "ns", "default"]).unwrap());
    // A watch that ends by itself after a second.
    stdout(
        &kubectl
            .run(&["get", "--raw", "/api/v1/namespaces?watch=true&timeoutSeconds=1"])
            .unwrap(),
    );
    let metrics = stdout(&kubectl.run(&["get", "--raw", "/metrics"]).unwrap());
    assert!(
        metrics.contains(r#"apiserver_request_total{verb="LIST",resource="namespaces",code="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"apiserver_request_total{verb="GET",resource="namespaces",code="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"apiserver_request_duration_seconds_bucket{le="#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"etcd_request_duration_seconds_count{operation="range"}"#),
        "{metrics}"
    );
    // The watch was counted while open and is gone now.
    assert!(
        metrics.contains(r#"apiserver_longrunning_requests{verb="WATCH",resource="namespaces"} 0"#),
        "{metrics}"
    );
}
