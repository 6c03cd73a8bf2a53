//! Service cluster IPs and node ports through stock kubectl on a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;

use rkube_testkit::Kubectl;
use serde_json::Value;

mod common;

use common::{apply_file, fails, ok};

fn service(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - port: 80\n{extra_spec}"
    )
}

fn create(k: &Kubectl, dir: &Path, name: &str, yaml: &str) -> Output {
    apply_file(k, dir, &format!("{name}.yaml"), yaml, "create")
}

fn get_json(k: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(k.run(&all).unwrap())).unwrap()
}

#[test]
fn cluster_ips_and_node_ports() {
    let server = common::server(&[]);
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();

    // The kubernetes service and its endpoint, the API server itself.
    let kubernetes = get_json(&k, &["get", "svc", "kubernetes"]);
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(kubernetes["spec"]["ports"][0]["port"], 443);
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let endpoints = get_json(&k, &["get", "endpoints", "kubernetes"]);
    assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], port);

    // Concurrent creates from several clients never share an address or a port.
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let k = server.kubectl_binary("kubectl.1.33");
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let docs: Vec<String> = (0..5)
                    .map(|i| service(&format!("s{t}-{i}"), "  type: NodePort\n"))
                    .collect();
                ok(create(&k, &dir, &format!("batch-{t}"), &docs.join("---\n")));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let list = get_json(&k, &["get", "svc", "-l", "!component"]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 30);
    let ips: HashSet<&str> = items.iter().map(|s| s["spec"]["clusterIP"].as_str().unwrap()).collect();
    let ports: HashSet<i64> = items
        .iter()
        .map(|s| s["spec"]["ports"][0]["nodePort"].as_i64().unwrap())
        .collect();
    assert_eq!((ips.len(), ports.len()), (30, 30), "duplicates among {ips:?} {ports:?}");
    for s in items {
        assert!(s["spec"]["clusterIP"].as_str().unwrap().starts_with("10.43."));
        assert_eq!(s["spec"]["clusterIPs"][0], s["spec"]["clusterIP"]);
        let node_port = s["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&node_port));
    }

    // A port none of them got at random, for the requests below that name one.
    let spare = (30900..32767).find(|p| !ports.contains(p)).unwrap();
    let port = (30000..30900).find(|p| !ports.contains(p)).unwrap();
    let ip = (2..255)
        .map(|i| format!("10.43.0.{i}"))
        .find(|ip| !ips.contains(ip.as_str()))
        .unwrap();

    // Requested values: honoured when free, refused with upstream's words otherwise.
    let fixed_yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: fixed\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  ports:\n  - port: 80\n    nodePort: {port}\n"
    );
    ok(create(&k, dir.path(), "fixed", &fixed_yaml));
    let fixed = get_json(&k, &["get", "svc", "fixed"]);
    assert_eq!(
        (
            fixed["spec"]["clusterIP"].as_str(),
            fixed["spec"]["ports"][0]["nodePort"].as_i64()
        ),
        (Some(ip.as_str()), Some(port))
    );
    let err = fails(create(
        &k,
        dir.path(),
        "clash",
        &service("clash", &format!("  clusterIP: {ip}\n")),
    ));
    assert!(err.contains(&format!(r#"spec.clusterIPs: Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: provided IP is already allocated"#)), "{err}");
    let err = fails(create(
        &k,
        dir.path(),
        "outside",
        &service("outside", "  clusterIP: 10.0.0.3\n"),
    ));
    assert!(
        err.contains("is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
        "{err}"
    );
    let err = fails(create(
        &k,
        dir.path(),
        "port-clash",
        &service("port-clash", "  type: NodePort\n")
            .replace("  - port: 80\n", &format!("  - port: 80\n    nodePort: {port}\n")),
    ));
    assert!(
        err.contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {port}: provided port is already allocated"
        )),
        "{err}"
    );
    let err = fails(create(
        &k,
        dir.path(),
        "port-range",
        &service("port-range", "  type: NodePort\n").replace("  - port: 80\n", "  - port: 80\n    nodePort: 8080\n"),
    ));
    assert!(
        err.contains("provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{err}"
    );
    let err = fails(create(
        &k,
        dir.path(),
        "forbidden",
        &service("forbidden", "").replace("  - port: 80\n", &format!("  - port: 80\n    nodePort: {spare}\n")),
    ));
    assert!(
        err.contains("spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
        "{err}"
    );
    // A refused create holds nothing: the port it would have taken is still free.
    ok(create(
        &k,
        dir.path(),
        "after",
        &service("after", "  type: NodePort\n")
            .replace("  - port: 80\n", &format!("  - port: 80\n    nodePort: {spare}\n")),
    ));

    // Updates keep what the manifest leaves out; the cluster IP cannot change.
    let replaced = service("fixed", "  type: NodePort\n");
    std::fs::write(dir.path().join("replace.yaml"), replaced).unwrap();
    ok(
        k.run(&["replace", "-f", dir.path().join("replace.yaml").to_str().unwrap()])
            .unwrap(),
    );
    let fixed = get_json(&k, &["get", "svc", "fixed"]);
    assert_eq!(
        (
            fixed["spec"]["clusterIP"].as_str(),
            fixed["spec"]["ports"][0]["nodePort"].as_i64()
        ),
        (Some(ip.as_str()), Some(port))
    );
    let err = fails(
        k.run(&[
            "patch",
            "svc",
            "fixed",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"clusterIP":"10.43.0.54","clusterIPs":["10.43.0.54"]}}"#,
        ])
        .unwrap(),
    );
    assert!(
        err.contains("spec.clusterIP: Invalid value: \"10.43.0.54\": field is immutable"),
        "{err}"
    );

    // Deleting releases both: the same values can be requested again.
    ok(k.run(&["delete", "svc", "fixed"]).unwrap());
    ok(create(
        &k,
        dir.path(),
        "again",
        &service("again", &format!("  clusterIP: {ip}\n  type: NodePort\n"))
            .replace("  - port: 80\n", &format!("  - port: 80\n    nodePort: {port}\n")),
    ));
}
