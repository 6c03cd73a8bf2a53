//! Hollow nodes against a real server: they register Ready, renew their Leases, run the
//! pods bound to them, finish pods that run to completion and finalize deleted pods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rkube_testkit::{HollowNodes, HollowOptions, eventually};
use serde_json::json;

mod common;

/// How long the asynchronous steps below may take before the test gives up.
const WITHIN: Duration = Duration::from_secs(30);

fn pod(name: &str, node: &str, restart: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": restart,
                 "containers": [{"name": "app", "image": "registry.local/app:1.0"}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_behave_like_nodes() {
    let (server, client) = common::server_and_client(false).await;
    let options = HollowOptions {
        count: 20,
        labels: [("zone".to_string(), "dmz".to_string())].into(),
        lease_interval: Duration::from_secs(1),
        ..HollowOptions::default()
    };
    let hollow = HollowNodes::start(client.clone(), options).await.unwrap();
    assert_eq!(hollow.names().len(), 20);
    assert_eq!(hollow.names()[3], "hollow-3");

    // Registered, Ready, as kubectl shows them.
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default().labels("zone=dmz"))
            .await
            .unwrap()
            .items
            .len(),
        20
    );
    let table = server.kubectl().run(&["get", "nodes", "-o", "wide"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hollow-3 ") && l.contains(" Ready ") && l.contains("10.255.0.3")),
        "{table}"
    );

    // Leases, renewed.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = leases.get("hollow-0").await.unwrap().spec.unwrap().renew_time.unwrap();
    let later = eventually("a lease renewal", WITHIN, async || {
        let renewed = leases.get("hollow-0").await.ok()?.spec?.renew_time?;
        (renewed.0 > first.0).then_some(renewed)
    })
    .await;
    assert!(later.0 > first.0);
    assert!(hollow.stats.lease_renewals.load(Ordering::Relaxed) >= 20);

    // A bound pod runs, with an address from its node's range.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("web", "hollow-3", "Always"))
        .await
        .unwrap();
    let running = eventually("the pod to run", WITHIN, async || {
        let status = pods.get("web").await.ok()?.status?;
        (status.phase.as_deref() == Some("Running")).then_some(status)
    })
    .await;
    assert!(running.pod_ip.unwrap().starts_with("10.64.3."));
    assert_eq!(running.host_ip.as_deref(), Some("10.255.0.3"));
    assert!(running.container_statuses.unwrap()[0].ready);

    // A pod that runs to completion succeeds.
    pods.create(&PostParams::default(), &pod("job", "hollow-4", "Never"))
        .await
        .unwrap();
    eventually("the pod to succeed", WITHIN, async || {
        let phase = pods.get("job").await.ok()?.status?.phase?;
        (phase == "Succeeded").then_some(())
    })
    .await;

    // A deleted pod waits for its node, which finishes the deletion.
    let deleting = pods.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(deleting.left().is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
    eventually("the pod to be gone", WITHIN, async || {
        pods.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    // The node counts the deletion once its request returns, which may be after the
    // watch above saw the pod go.
    eventually("the node to count the finalized pod", WITHIN, async || {
        (hollow.stats.pods_finalized.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert_eq!(hollow.stats.pods_started.load(Ordering::Relaxed), 2);
}
