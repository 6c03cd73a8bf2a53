//! The scheduler in `rkube server`, placing pods on hollow nodes: node selectors (the
//! `zone: dmz` pinning of shared/examples/seed/15), taints and tolerations, resources,
//! unschedulable pods that report why and wait for a node that fits, anti-affinity,
//! topology spread, preemption, volumes, and leader failover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
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

/// The first event with `reason` about `pod`, once there is one.
async fn event_about(events: &Api<Event>, pod: &str, reason: &str) -> Event {
    eventually(&format!("a {reason} event about {pod}"), WITHIN, async || {
        let selector = format!("involvedObject.name={pod}");
        let list = events.list(&ListParams::default().fields(&selector)).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

/// The first FailedScheduling event about `pod`, once there is one.
async fn scheduling_event(events: &Api<Event>, pod: &str) -> Event {
    event_about(events, pod, "FailedScheduling").await
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
    // Each placement is told as upstream tells it (`kubectl describe pod`'s first event).
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scheduled = event_about(&events, "dmz-app-1", "Scheduled").await;
    assert_eq!(
        (scheduled.type_.as_deref(), scheduled.message),
        (
            Some("Normal"),
            Some(format!("Successfully assigned default/dmz-app-1 to {first}"))
        )
    );
    assert_eq!(
        scheduled.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );

    // Tainted nodes take only pods that tolerate the taint.
    let tolerating = json!({"nodeSelector": {"pool": "db"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]});
    pods.create(&PostParams::default(), &pod("db-1", tolerating.clone()))
        .await
        .unwrap();
    assert_eq!(placed("db-1").await, "db-0");
    // A pod that does not tolerate it waits; tolerating it later (a pod's own change, no
    // cluster event) lets it in without waiting for the five-minute flush.
    pods.create(
        &PostParams::default(),
        &pod("db-2", json!({"nodeSelector": {"pool": "db"}})),
    )
    .await
    .unwrap();
    scheduling_event(&events, "db-2").await;
    let tolerate = json!({"spec": {"tolerations": tolerating["tolerations"]}});
    pods.patch("db-2", &PatchParams::default(), &Patch::Merge(&tolerate))
        .await
        .unwrap();
    assert_eq!(placed("db-2").await, "db-0");

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

    // A leader that stops hands the lease over rather than letting it expire.
    let old_leader = servers.remove(0);
    let (_, log) = tokio::task::spawn_blocking(move || old_leader.stop_with_log())
        .await
        .unwrap()
        .unwrap();
    assert!(log.contains("released the leader lease"), "{log}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let second = eventually("the standby to lead", Duration::from_secs(60), async || {
        let holder = leases.get_opt("kube-scheduler").await.ok()??.spec?.holder_identity?;
        (holder != first && !holder.is_empty()).then_some(holder)
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
                         {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname",
                          "matchLabelKeys": ["app"]}]}}}
        }))
        .unwrap()
    };
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..3 {
        let name = format!("replica-{i}");
        let created = pods.create(&PostParams::default(), &replica(&name)).await.unwrap();
        // matchLabelKeys become requirements of the selector, with the pod's own values.
        let term = &serde_json::to_value(&created).unwrap()["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(
            term["labelSelector"]["matchExpressions"],
            json!([{"key": "app", "operator": "In", "values": ["spread"]}])
        );
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

/// `DoNotSchedule` spread over zones: replicas alternate between zones, and one more than
/// the skew allows waits, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_across_zones() {
    const ZONE: &str = "topology.kubernetes.io/zone";
    let (_server, client) = common::server_and_client(true).await;
    let _a = HollowNodes::start(client.clone(), fleet("za", 2, &[(ZONE, "a")], vec![]))
        .await
        .unwrap();
    let _b = HollowNodes::start(client.clone(), fleet("zb", 2, &[(ZONE, "b")], vec![]))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let replica = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "zoned"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}],
                     "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "zoned"}}}]}
        }))
        .unwrap()
    };
    let mut zones = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..4 {
        let name = format!("zoned-{i}");
        pods.create(&PostParams::default(), &replica(&name)).await.unwrap();
        let node = eventually(&format!("{name} to be bound"), WITHIN, async || {
            pods.get(&name).await.ok()?.spec?.node_name
        })
        .await;
        *zones.entry(node[..2].to_string()).or_default() += 1;
    }
    assert_eq!(zones, [("za".to_string(), 2), ("zb".to_string(), 2)].into());
    // A third, tainted zone with no replicas: both others are now 2 ahead of it.
    let _c = HollowNodes::start(
        client.clone(),
        fleet(
            "zc",
            1,
            &[(ZONE, "c")],
            vec![json!({"key": "dedicated", "value": "c", "effect": "NoSchedule"})],
        ),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &replica("zoned-4")).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = scheduling_event(&events, "zoned-4").await;
    assert_eq!(
        event.message.as_deref(),
        Some(
            "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: c}, \
             4 node(s) didn't match pod topology spread constraints. preemption: 0/5 nodes are available: \
             1 Preemption is not helpful for scheduling, 4 No preemption victims found for incoming pod."
        )
    );
}

/// PriorityClasses through admission, and preemption: a pod of a higher class evicts a
/// lower one, is nominated to its node and lands there; a class that never preempts waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_a_lower_one() {
    let (server, client) = common::server_and_client(true).await;
    let nodes = HollowOptions {
        cpu: "2".into(),
        ..fleet("small", 1, &[], vec![])
    };
    let _node = HollowNodes::start(client.clone(), nodes).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let classes = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: urgent}\nvalue: 1000\n\
                   ---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: polite}\nvalue: 1000\n\
                   preemptionPolicy: Never\n";
    let out = common::apply_file(&server.kubectl(), dir.path(), "classes.yaml", classes, "create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Admission resolves the class, and refuses what disagrees with it.
    let with_class = |name: &str, class: Option<&str>, extra: Value| -> Pod {
        let mut spec = json!({"containers": [{"name": "web", "image": "nginx:1.27",
            "resources": {"requests": {"cpu": "2"}}}]});
        if let Some(class) = class {
            spec["priorityClassName"] = json!(class);
        }
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let refused = pods
        .create(&PostParams::default(), &with_class("typo", Some("urgnet"), json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403
            && s.message == "pods \"typo\" is forbidden: no PriorityClass with name urgnet was found"),
        "{refused:?}"
    );
    let refused = pods
        .create(
            &PostParams::default(),
            &with_class("liar", Some("urgent"), json!({"priority": 5})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403 && s.message.contains(
            "the integer value of priority (5) must not be provided in pod spec; \
             priority admission controller computed 1000 from the given PriorityClass name")),
        "{refused:?}"
    );

    pods.create(&PostParams::default(), &with_class("low", None, json!({})))
        .await
        .unwrap();
    let low = eventually("low to run", WITHIN, async || {
        let pod = pods.get("low").await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    assert_eq!(low.spec.as_ref().unwrap().priority, Some(0));

    // Never preempts: waits, and says so.
    pods.create(
        &PostParams::default(),
        &with_class("patient", Some("polite"), json!({})),
    )
    .await
    .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = scheduling_event(&events, "patient").await;
    assert_eq!(
        event.message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.")
    );
    pods.delete("patient", &Default::default()).await.unwrap();

    let created = pods
        .create(&PostParams::default(), &with_class("vip", Some("urgent"), json!({})))
        .await
        .unwrap();
    assert_eq!(created.spec.as_ref().unwrap().priority, Some(1000));
    let vip = eventually("vip to run on the node", WITHIN, async || {
        let pod = pods.get("vip").await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    assert_eq!(vip.spec.unwrap().node_name.as_deref(), Some("small-0"));
    assert_eq!(
        vip.status.unwrap().nominated_node_name.as_deref(),
        Some("small-0"),
        "nominated while the victim terminated"
    );
    let preempted = event_about(&events, "low", "Preempted").await;
    assert_eq!(
        preempted.message.unwrap(),
        format!("Preempted by pod {} on node small-0", created.metadata.uid.unwrap())
    );
    assert!(pods.get_opt("low").await.unwrap().is_none(), "the victim is gone");

    // A global default class is what pods without a class get (the lowest, of several).
    let defaults = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: usual}\nvalue: 7\n\
                    globalDefault: true\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\n\
                    metadata: {name: also-usual}\nvalue: 9\nglobalDefault: true\n";
    let out = common::apply_file(&server.kubectl(), dir.path(), "defaults.yaml", defaults, "create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let plain = eventually("the default class to be admitted", WITHIN, async || {
        let name = format!("plain-{}", tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let pod = pods
            .create(&PostParams::default(), &with_class(&name, None, json!({})))
            .await
            .ok()?;
        let spec = pod.spec?;
        (spec.priority == Some(7)).then_some(spec)
    })
    .await;
    assert_eq!(plain.priority_class_name.as_deref(), Some("usual"));
}

/// Claims decide where pods go: a bound claim's volume pins the pod to the volume's node;
/// an unbound claim of an immediate class waits; a claim of a `WaitForFirstConsumer`
/// class is given the chosen node and the pod is bound only once the claim is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_decide_the_node() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let (server, client) = common::server_and_client(true).await;
    let _nodes = HollowNodes::start(client.clone(), fleet("v", 2, &[], vec![]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: dynamic}
provisioner: rkube.io/local-path
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pinned}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  claimRef: {namespace: default, name: pinned}
  hostPath: {path: /tmp/pinned}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [v-1]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pinned}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: pinned
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: immediate}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scratch}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: dynamic
  resources: {requests: {storage: 1Gi}}
"#;
    let out = common::apply_file(&server.kubectl(), dir.path(), "volumes.yaml", objects, "create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let user = |name: &str, claim: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}))
        .unwrap()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bound = async |name: &str| {
        eventually(&format!("{name} to be bound"), WITHIN, async || {
            pods.get(name).await.ok()?.spec?.node_name
        })
        .await
    };
    pods.create(&PostParams::default(), &user("pinned", "pinned"))
        .await
        .unwrap();
    assert_eq!(bound("pinned").await, "v-1", "where its volume is");

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &user("waiting", "immediate"))
        .await
        .unwrap();
    assert_eq!(
        scheduling_event(&events, "waiting").await.message.as_deref(),
        Some(
            "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. \
             preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
        )
    );
    pods.create(&PostParams::default(), &user("orphan", "missing"))
        .await
        .unwrap();
    assert_eq!(
        scheduling_event(&events, "orphan").await.message.as_deref(),
        Some(
            "0/2 nodes are available: persistentvolumeclaim \"missing\" not found. \
             preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
        )
    );

    // WaitForFirstConsumer: the claim learns the node; the pod waits for the claim.
    pods.create(&PostParams::default(), &user("consumer", "scratch"))
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let selected = eventually("the claim to be given a node", WITHIN, async || {
        let claim = claims.get("scratch").await.ok()?;
        claim
            .metadata
            .annotations?
            .get("volume.kubernetes.io/selected-node")
            .cloned()
    })
    .await;
    assert!(selected.starts_with("v-"), "{selected}");
    assert_eq!(
        pods.get("consumer").await.unwrap().spec.unwrap().node_name,
        None,
        "not bound before its claim"
    );
    // What the provisioner and the volume controller do (the controllers' issue): a
    // volume on the chosen node, bound to the claim; then the scheduler binds the pod.
    let volume: k8s_openapi::api::core::v1::PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pvc-scratch"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "dynamic",
                 "hostPath": {"path": "/tmp/pvc-scratch"},
                 "claimRef": {"namespace": "default", "name": "scratch"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [selected]}]}]}}}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    let provisioned = json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                             "spec": {"volumeName": "pvc-scratch"}});
    claims
        .patch(
            "scratch",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&provisioned),
        )
        .await
        .unwrap();
    assert_eq!(bound("consumer").await, selected);
}
