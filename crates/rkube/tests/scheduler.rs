//! The scheduler in `rkube server`, placing pods on hollow nodes: node selectors (the
//! `zone: dmz` pinning of shared/examples/seed/15), taints and tolerations, resources, and
//! unschedulable pods that report why and wait for a node that fits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use rkube_testkit::{HollowNodes, HollowOptions, eventually};
use serde_json::{Value, json};

mod common;

/// How long the asynchronous steps below may take before the test gives up.
const WITHIN: Duration = Duration::from_secs(30);

fn pod(name: &str, spec: Value) -> Pod {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "web", "image": "nginx:1.7.9",
        "resources": spec.get("cpu").map(|cpu| json!({"requests": {"cpu": cpu}}))}]);
    if let Some(map) = spec.as_object_mut() {
        map.remove("cpu");
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The first scheduling event about `pod`, once there is one.
async fn scheduling_event(events: &Api<Event>, pod: &str) -> Event {
    eventually(&format!("an event about {pod}"), WITHIN, async || {
        let selector = format!("involvedObject.name={pod}");
        let list = events.list(&ListParams::default().fields(&selector)).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await
}

fn fleet(prefix: &str, count: usize, labels: &[(&str, &str)], taints: Vec<Value>) -> HollowOptions {
    HollowOptions {
        count,
        prefix: prefix.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        taints,
        ..HollowOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_land_where_they_fit_and_say_why_not() {
    let (server, client) = common::server_and_client(true).await;
    let _dmz = HollowNodes::start(client.clone(), fleet("dmz", 2, &[("zone", "dmz")], vec![]))
        .await
        .unwrap();
    let _db = HollowNodes::start(
        client.clone(),
        fleet(
            "db",
            1,
            &[("pool", "db")],
            vec![json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"})],
        ),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed = async |name: &str| {
        eventually(&format!("{name} to run"), WITHIN, async || {
            let pod = pods.get(name).await.ok()?;
            let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then(|| pod.spec.unwrap().node_name.unwrap())
        })
        .await
    };

    // Pinned to the dmz zone, as seed 15 pins its replicas: both land there, spread.
    for name in ["dmz-app-1", "dmz-app-2"] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"nodeSelector": {"zone": "dmz"}})),
        )
        .await
        .unwrap();
    }
    let (first, second) = (placed("dmz-app-1").await, placed("dmz-app-2").await);
    assert!(
        first.starts_with("dmz-") && second.starts_with("dmz-"),
        "{first} {second}"
    );
    assert_ne!(first, second, "the emptier node wins");

    // Tainted nodes take only pods that tolerate the taint.
    let tolerating = json!({"nodeSelector": {"pool": "db"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]});
    pods.create(&PostParams::default(), &pod("db-1", tolerating))
        .await
        .unwrap();
    assert_eq!(placed("db-1").await, "db-0");

    // Nowhere to go: Pending, with upstream's condition and event, until a node fits.
    pods.create(
        &PostParams::default(),
        &pod("lost", json!({"nodeSelector": {"zone": "nowhere"}})),
    )
    .await
    .unwrap();
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, \
                    2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: \
                    3 Preemption is not helpful for scheduling.";
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = scheduling_event(&events, "lost").await;
    assert_eq!(event.message.as_deref(), Some(expected));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let condition = pods.get("lost").await.unwrap().status.unwrap().conditions.unwrap();
    assert_eq!(
        (
            condition[0].type_.as_str(),
            condition[0].status.as_str(),
            condition[0].reason.as_deref()
        ),
        ("PodScheduled", "False", Some("Unschedulable"))
    );
    let described = server.kubectl().run(&["describe", "pod", "lost"]).unwrap();
    assert!(String::from_utf8_lossy(&described.stdout).contains("FailedScheduling"));
    let _nowhere = HollowNodes::start(client.clone(), fleet("nowhere", 1, &[("zone", "nowhere")], vec![]))
        .await
        .unwrap();
    assert_eq!(
        placed("lost").await,
        "nowhere-0",
        "a new node that fits takes the waiting pod"
    );

    // More cpu than any node has.
    pods.create(&PostParams::default(), &pod("huge", json!({"cpu": "100"})))
        .await
        .unwrap();
    let event = scheduling_event(&events, "huge").await;
    assert_eq!(
        event.message.as_deref(),
        Some(
            "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 3 Insufficient cpu. \
             preemption: 0/4 nodes are available: 1 Preemption is not helpful for scheduling, \
             3 No preemption victims found for incoming pod."
        )
    );
}

/// Two servers on one etcd: one scheduler leads (holds kube-system/kube-scheduler); when
/// its server stops, the other's takes the lease and schedules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_scheduler_takes_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let etcd = tokio::task::spawn_blocking(|| rkube_testkit::EtcdCluster::start(1))
        .await
        .unwrap()
        .unwrap();
    let endpoint = etcd.endpoints().join(",");
    let mut servers = Vec::new();
    for _ in 0..2 {
        let endpoint = endpoint.clone();
        let server = tokio::task::spawn_blocking(move || {
            rkube_testkit::RkubeServer::start_with_scheduler(
                std::path::Path::new(env!("CARGO_BIN_EXE_rkube")),
                &["--datastore-endpoint", &endpoint],
            )
        })
        .await
        .unwrap()
        .unwrap();
        servers.push(server);
    }
    let client = servers[0].client().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = async |leases: &Api<Lease>| {
        eventually("a scheduler lease holder", WITHIN, async || {
            leases.get_opt("kube-scheduler").await.ok()??.spec?.holder_identity
        })
        .await
    };
    let first = holder(&leases).await;
    let leader = servers
        .iter()
        .position(|s| first.contains(&format!("_{}_", s.pid())))
        .expect("the holder is one of the two servers");
    let standby = servers.remove(1 - leader);
    let client = standby.client().await.unwrap();
    let _nodes = HollowNodes::start(client.clone(), fleet("n", 2, &[], vec![]))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bound = async |name: &str| {
        eventually(&format!("{name} to be bound"), Duration::from_secs(60), async || {
            pods.get(name).await.ok()?.spec?.node_name
        })
        .await
    };
    pods.create(&PostParams::default(), &pod("before", json!({})))
        .await
        .unwrap();
    bound("before").await;

    let old_leader = servers.remove(0);
    tokio::task::spawn_blocking(move || old_leader.stop())
        .await
        .unwrap()
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let second = eventually("the standby to lead", Duration::from_secs(60), async || {
        let holder = leases.get_opt("kube-scheduler").await.ok()??.spec?.holder_identity?;
        (holder != first).then_some(holder)
    })
    .await;
    assert!(second.contains(&format!("_{}_", standby.pid())), "{second}");
    pods.create(&PostParams::default(), &pod("after", json!({})))
        .await
        .unwrap();
    bound("after").await;
    let transitions = leases
        .get("kube-scheduler")
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert!(transitions >= Some(1), "{transitions:?}");
}

/// Required anti-affinity on the host name spreads replicas one per node; one replica
/// more than nodes waits, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_spreads_replicas() {
    let (_server, client) = common::server_and_client(true).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("spread", 3, &[], vec![]))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let replica = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "spread"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                         {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname"}]}}}
        }))
        .unwrap()
    };
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..3 {
        let name = format!("replica-{i}");
        pods.create(&PostParams::default(), &replica(&name)).await.unwrap();
        // One at a time, so each decision sees the previous binding through the API too.
        let node = eventually(&format!("{name} to be bound"), WITHIN, async || {
            pods.get(&name).await.ok()?.spec?.node_name
        })
        .await;
        hosts.insert(node);
    }
    assert_eq!(hosts.len(), 3, "one replica per node: {hosts:?}");
    pods.create(&PostParams::default(), &replica("replica-3"))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = scheduling_event(&events, "replica-3").await;
    assert_eq!(
        event.message.as_deref(),
        Some(
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
             preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        )
    );
}
