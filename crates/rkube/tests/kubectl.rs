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

/// `kubectl create <kind>` (protobuf bodies from kubectl 1.32 on), `auth can-i`, `auth
/// whoami` and the review APIs, by kubectl 1.33, 1.32 and 1.27; TokenReview and
/// SubjectAccessReview answer about other subjects.
#[test]
fn create_subcommands_and_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret-token,alice,u-1,\"dev\"\n").unwrap();
    let server = server(&["--token-auth-file", tokens.to_str().unwrap()]);
    for (i, binary) in ["kubectl", "kubectl.1.32", "kubectl.1.27"].into_iter().enumerate() {
        let k = server.kubectl_binary(binary);
        let ns = format!("shop{i}");
        let run = |args: &[&str]| -> String {
            let out = k.run(args).unwrap();
            assert!(
                out.status.success(),
                "{binary} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout(&out)
        };
        let json = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&run(args)).unwrap() };
        assert_eq!(
            run(&["create", "namespace", &ns]).trim(),
            format!("namespace/{ns} created")
        );
        run(&[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=0",
            "--port=80",
            "-n",
            &ns,
        ]);
        run(&["create", "configmap", "cfg", "--from-literal=a=b", "-n", &ns]);
        run(&["create", "secret", "generic", "sec", "--from-literal=p=q", "-n", &ns]);
        run(&["create", "service", "clusterip", "svc", "--tcp=80:8080", "-n", &ns]);
        run(&["create", "service", "nodeport", "np", "--tcp=81:8081", "-n", &ns]);
        run(&["create", "serviceaccount", "robot", "-n", &ns]);
        run(&[
            "create",
            "job",
            "once",
            "--image=busybox",
            "-n",
            &ns,
            "--",
            "echo",
            "hi",
        ]);
        run(&["create", "role", "reader", "--verb=get", "--resource=pods", "-n", &ns]);
        run(&[
            "create",
            "cronjob",
            "tick",
            "--image=busybox",
            "--schedule=*/5 * * * *",
            "-n",
            &ns,
        ]);
        run(&["create", "quota", "q", "--hard=pods=5", "-n", &ns]);
        run(&[
            "create",
            "poddisruptionbudget",
            "pdb",
            "--selector=app=web",
            "--min-available=1",
            "-n",
            &ns,
        ]);

        let d = json(&["get", "deployment", "web", "-n", &ns, "-o", "json"]);
        assert_eq!(d["spec"]["replicas"], 0, "an explicit zero survives");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
        // Upstream's shape: the struct defaulted, the protobuf body's plain zero values
        // (paused, minReadySeconds, hostNetwork, stdin, tty, ...) left out as Go leaves them.
        assert_eq!(
            d["spec"]["strategy"],
            serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        for absent in ["paused", "minReadySeconds"] {
            assert!(d["spec"].get(absent).is_none(), "{absent}: {}", d["spec"]);
        }
        assert_eq!(
            d["spec"]["template"]["spec"],
            serde_json::json!({
                "containers": [{
                    "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent", "name": "nginx",
                    "ports": [{"containerPort": 80, "protocol": "TCP"}], "resources": {},
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                }],
                "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                "securityContext": {}, "terminationGracePeriodSeconds": 30,
            })
        );
        assert!(
            d["spec"]["template"]["metadata"]
                .get("creationTimestamp")
                .is_none_or(|t| t.is_null())
        );
        let cm = json(&["get", "configmap", "cfg", "-n", &ns, "-o", "json"]);
        assert_eq!(cm["data"]["a"], "b");
        let secret = json(&["get", "secret", "sec", "-n", &ns, "-o", "json"]);
        assert_eq!(secret["data"]["p"], "cQ==", "bytes as base64");
        let svc = json(&["get", "service", "svc", "-n", &ns, "-o", "json"]);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert!(svc["spec"]["ports"][0].get("nodePort").is_none());
        let np = json(&["get", "service", "np", "-n", &ns, "-o", "json"]);
        let node_port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&node_port), "{node_port}");
        let job = json(&["get", "job", "once", "-n", &ns, "-o", "json"]);
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["command"],
            serde_json::json!(["echo", "hi"])
        );
        let role = json(&["get", "role", "reader", "-n", &ns, "-o", "json"]);
        assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get"]));

        assert_eq!(
            run(&["auth", "can-i", "create", "deployments", "-n", &ns]).trim(),
            "yes"
        );
        let rules = run(&["auth", "can-i", "--list", "-n", &ns]);
        assert!(rules.contains("*.*"), "{rules}");
        let whoami = run(&["auth", "whoami"]);
        assert!(
            whoami.contains("system:admin") && whoami.contains("system:masters"),
            "{whoami}"
        );
    }

    // TokenReview and SubjectAccessReview, as a webhook or a controller would send them.
    let k = server.kubectl();
    let review = "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {token: s3cret-token}\n";
    let file = dir.path().join("review.yaml");
    std::fs::write(&file, review).unwrap();
    let out: serde_json::Value = serde_json::from_str(&stdout(
        &k.run(&["create", "-f", file.to_str().unwrap(), "-o", "json"]).unwrap(),
    ))
    .unwrap();
    assert_eq!(out["status"]["authenticated"], true);
    assert_eq!(out["status"]["user"]["username"], "alice");
    assert_eq!(
        out["status"]["user"]["groups"],
        serde_json::json!(["dev", "system:authenticated"])
    );
    std::fs::write(&file, review.replace("s3cret-token", "wrong")).unwrap();
    let out: serde_json::Value = serde_json::from_str(&stdout(
        &k.run(&["create", "-f", file.to_str().unwrap(), "-o", "json"]).unwrap(),
    ))
    .unwrap();
    assert_eq!(out["status"]["authenticated"], false);
    let access = "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: system:anonymous\n  \
                  resourceAttributes: {verb: get, resource: pods}\n";
    std::fs::write(&file, access).unwrap();
    let out: serde_json::Value = serde_json::from_str(&stdout(
        &k.run(&["create", "-f", file.to_str().unwrap(), "-o", "json"]).unwrap(),
    ))
    .unwrap();
    assert_eq!(out["status"]["allowed"], false);
    std::fs::write(&file, access.replace("system:anonymous", "alice")).unwrap();
    let out: serde_json::Value = serde_json::from_str(&stdout(
        &k.run(&["create", "-f", file.to_str().unwrap(), "-o", "json"]).unwrap(),
    ))
    .unwrap();
    assert_eq!(out["status"]["allowed"], true);
    // Reviews are never stored: there is nothing to get.
    let out = k.run(&["get", "tokenreviews"]).unwrap();
    assert!(!out.status.success());
}

/// `kubectl create token` (a protobuf TokenRequest from kubectl 1.32 on): the token works
/// as a bearer token for its service account (`auth whoami`), TokenReview accepts it, too
/// short a lifetime is refused, and the token dies with its account.
#[test]
fn service_account_tokens() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file();
    let as_token = |token: &str, args: &[&str]| {
        Command::new(rkube_testkit::resolve_kubectl("kubectl.1.33"))
            .args(["--server", &server.url, "--certificate-authority", ca.to_str().unwrap()])
            .args(["--token", token, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .args(args)
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };
    for (i, binary) in ["kubectl", "kubectl.1.32", "kubectl.1.27"].into_iter().enumerate() {
        let k = server.kubectl_binary(binary);
        let account = format!("robot{i}");
        assert!(k.run(&["create", "serviceaccount", &account]).unwrap().status.success());
        let out = k.run(&["create", "token", &account, "--duration=20m"]).unwrap();
        assert!(
            out.status.success(),
            "{binary}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = stdout(&out).trim().to_string();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        let whoami = as_token(&token, &["auth", "whoami"]);
        let text = stdout(&whoami);
        assert!(
            text.contains(&format!("system:serviceaccount:default:{account}"))
                && text.contains("system:serviceaccounts:default"),
            "{binary}: {text}{}",
            String::from_utf8_lossy(&whoami.stderr)
        );
        let out = k.run(&["create", "token", &account, "--duration=5m"]).unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("may not specify a duration less than 10 minutes"),
            "{out:?}"
        );
        // TokenReview says who the token is.
        let review = format!("apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {token}}}\n");
        let file = dir.path().join("review.yaml");
        std::fs::write(&file, review).unwrap();
        let reviewed: serde_json::Value = serde_json::from_str(&stdout(
            &k.run(&["create", "-f", file.to_str().unwrap(), "-o", "json"]).unwrap(),
        ))
        .unwrap();
        assert_eq!(reviewed["status"]["authenticated"], true);
        assert_eq!(
            reviewed["status"]["user"]["username"],
            format!("system:serviceaccount:default:{account}")
        );
        // Gone with its account.
        assert!(k.run(&["delete", "serviceaccount", &account]).unwrap().status.success());
        let out = as_token(&token, &["get", "--raw", "/version"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthorized"), "{out:?}");
    }
}
