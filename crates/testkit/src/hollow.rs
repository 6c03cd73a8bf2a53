//! Hollow nodes: many Node objects served by one process, each behaving towards the API as a
//! real node does, without running anything. A node registers with a realistic status
//! (capacity, allocatable, addresses, conditions, nodeInfo), renews its Lease in
//! `kube-node-lease` every 10 s, marks the pods bound to it Running with an IP, finishes
//! pods whose restartPolicy is Never or OnFailure (Succeeded, after `finish_after`, as
//! KWOK's default stages do; Failed with the exit code a pod's [`EXIT_CODE_ANNOTATION`]
//! asks for, as a KWOK stage selecting on it would) and finalizes deleted pods. The
//! scheduler and controller tests and benchmarks run against them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::slim_pod::SlimPod;

/// A pod annotated with a non-zero exit code here finishes Failed, its containers
/// terminated with that code.
pub const EXIT_CODE_ANNOTATION: &str = "hollow.rkube.io/exit-code";

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("hollow node {node}: {source}")]
    Register { node: String, source: kube::Error },
}

/// What the hollow nodes look like.
#[derive(Debug, Clone)]
pub struct HollowOptions {
    pub count: usize,
    /// Nodes are named `<prefix>-<i>`.
    pub prefix: String,
    /// Labels besides the well-known ones every node carries.
    pub labels: BTreeMap<String, String>,
    /// Taints, as JSON `{"key","value","effect"}` objects.
    pub taints: Vec<Value>,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// How long a pod with restartPolicy Never or OnFailure runs before it succeeds.
    pub finish_after: Duration,
    /// How often each node renews its Lease.
    pub lease_interval: Duration,
    /// Whether the nodes run the pods bound to them (mark them Running, finish and
    /// finalize them). Without, they only exist and stay alive, as the nodes of upstream's
    /// scheduler_perf do.
    pub run_pods: bool,
}

impl Default for HollowOptions {
    fn default() -> Self {
        Self {
            count: 1,
            prefix: "hollow".into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: 110,
            finish_after: Duration::from_secs(1),
            lease_interval: Duration::from_secs(10),
            run_pods: true,
        }
    }
}

/// Counters of what the hollow nodes did, for progress lines and tests.
#[derive(Debug, Default)]
pub struct HollowStats {
    pub pods_started: AtomicUsize,
    pub pods_finished: AtomicUsize,
    pub pods_finalized: AtomicUsize,
    pub lease_renewals: AtomicUsize,
}

/// Running hollow nodes; they stop (their objects stay) when this is dropped.
pub struct HollowNodes {
    names: Vec<String>,
    pub stats: Arc<HollowStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The node's index-th addresses: a pod CIDR out of 10.64.0.0/10 and a node address out of
/// 10.255.0.0/16 (never contacted: nothing listens behind a hollow node).
fn node_network(index: usize) -> (String, String) {
    let (high, low) = (index / 256, index % 256);
    (format!("10.{}.{low}.0/24", 64 + high), format!("10.255.{high}.{low}"))
}

fn node_object(options: &HollowOptions, index: usize) -> Value {
    let name = format!("{}-{index}", options.prefix);
    let (pod_cidr, address) = node_network(index);
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "hollow"),
        ("type", "hollow"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(options.labels.clone());
    let resources = json!({"cpu": options.cpu, "memory": options.memory, "pods": options.pods.to_string(),
                           "ephemeral-storage": "100Gi"});
    let at = now();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": at, "lastTransitionTime": at})
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": options.taints},
        "status": {
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{index:032x}"), "systemUUID": format!("{index:032x}"),
                "bootID": format!("{index:032x}"), "kernelVersion": "6.1.0-hollow",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "rkube://0.1.0",
                "kubeletVersion": "v1.33.0", "kubeProxyVersion": "v1.33.0",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

/// Which node serves which pods, and the next pod address on each.
struct Assignments {
    nodes: HashMap<String, usize>,
    next_ip: Mutex<HashMap<String, u32>>,
}

impl HollowNodes {
    /// Registers the nodes (or takes over existing ones of the same names) and starts
    /// serving them.
    pub async fn start(client: kube::Client, options: HollowOptions) -> Result<Self, HollowError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let mut names = Vec::with_capacity(options.count);
        // Registration runs a few dozen nodes at a time, as a fleet of kubelets starting does.
        let mut pending = futures_util::stream::iter(0..options.count)
            .map(|index| {
                let (nodes, leases, options) = (nodes.clone(), leases.clone(), &options);
                async move {
                    let object = node_object(options, index);
                    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    register(&nodes, &leases, &object, &name)
                        .await
                        .map_err(|source| HollowError::Register {
                            node: name.clone(),
                            source,
                        })?;
                    Ok::<_, HollowError>(name)
                }
            })
            .buffer_unordered(32);
        while let Some(name) = pending.next().await {
            names.push(name?);
        }
        drop(pending);
        names.sort_by_key(|n| n.rsplit('-').next().and_then(|i| i.parse::<usize>().ok()));
        let stats = Arc::new(HollowStats::default());
        let assignments = Arc::new(Assignments {
            nodes: names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect(),
            next_ip: Mutex::new(HashMap::new()),
        });
        let mut tasks = vec![tokio::spawn(renew_leases(
            leases,
            names.clone(),
            options.lease_interval,
            Arc::clone(&stats),
        ))];
        if options.run_pods {
            tasks.push(tokio::spawn(serve_pods(
                client,
                assignments,
                options.finish_after,
                Arc::clone(&stats),
            )));
        }
        Ok(Self { names, stats, tasks })
    }

    /// Stops the nodes and waits until nothing of theirs runs any more.
    pub async fn stop(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // An aborted task's only outcome is its cancellation.
            drop(task.await);
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

async fn register(nodes: &Api<Node>, leases: &Api<Lease>, object: &Value, name: &str) -> Result<(), kube::Error> {
    let node: Node = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        // A node of that name exists (a restarted fleet): take it over with a fresh status.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let status_patch = json!({"status": object["status"]});
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status_patch))
                .await?;
        }
        Err(err) => return Err(err),
    }
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
    }))
    .map_err(kube::Error::SerdeError)?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Renews every node's Lease once per interval, spread evenly over it.
async fn renew_leases(leases: Api<Lease>, names: Vec<String>, interval: Duration, stats: Arc<HollowStats>) {
    let gap = interval / names.len().max(1) as u32;
    let mut ticker = tokio::time::interval(gap.max(Duration::from_micros(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for name in names.iter().cycle() {
        ticker.tick().await;
        let patch = json!({"spec": {"renewTime": micro_now(), "holderIdentity": name}});
        match leases.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(node = name, %err, "renewing the lease failed"),
        }
    }
}

/// Watches the pods bound to these nodes and moves each through its life as a node would.
async fn serve_pods(
    client: kube::Client,
    assignments: Arc<Assignments>,
    finish_after: Duration,
    stats: Arc<HollowStats>,
) {
    let all: Api<SlimPod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = watcher(all, config).boxed();
    // Each pod's step runs on its own, but within this task's set: when the nodes stop,
    // the steps in flight stop with them instead of talking to a server that is gone.
    let mut steps = tokio::task::JoinSet::new();
    while let Some(event) = events.next().await {
        while steps.try_join_next().is_some() {}
        let pods = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => vec![pod],
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(%err, "hollow nodes' pod watch failed; it restarts");
                continue;
            }
        };
        for pod in pods {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(&index) = assignments.nodes.get(&node) else {
                continue;
            };
            let (client, assignments, stats) = (client.clone(), Arc::clone(&assignments), Arc::clone(&stats));
            steps.spawn(async move {
                if let Err(err) = advance(client, &pod, (&node, index), &assignments, finish_after, &stats).await {
                    tracing::debug!(%err, "a hollow pod step failed; the next event retries it");
                }
            });
        }
    }
}

async fn advance(
    client: kube::Client,
    pod: &SlimPod,
    (node, index): (&str, usize),
    assignments: &Assignments,
    finish_after: Duration,
    stats: &HollowStats,
) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<SlimPod> = Api::namespaced(client, &namespace);
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        // The containers are gone at once: finish the deletion, for this very pod only.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        pods.delete(&name, &params).await?;
        stats.pods_finalized.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    if matches!(phase.as_str(), "Running" | "Succeeded" | "Failed") {
        return Ok(());
    }
    let (pod_cidr, host_ip) = node_network(index);
    let ip = {
        let mut next = assignments.next_ip.lock().await;
        let n = next.entry(node.to_string()).or_insert(1);
        *n = *n % 253 + 1;
        format!("{}.{}", pod_cidr.trim_end_matches(".0/24"), *n)
    };
    let started = now();
    let containers = container_statuses(pod, true, &json!({"running": {"startedAt": started}}));
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": started});
    let running = json!({"status": {
        "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": started, "containerStatuses": containers,
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
                       condition("ContainersReady"), condition("PodScheduled")],
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
        .await?;
    stats.pods_started.fetch_add(1, Ordering::Relaxed);
    let restart = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_default();
    if restart == "Never" || restart == "OnFailure" {
        tokio::time::sleep(finish_after).await;
        let finished = now();
        let exit_code: i32 = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXIT_CODE_ANNOTATION))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let (phase, reason) = if exit_code == 0 {
            ("Succeeded", "Completed")
        } else {
            ("Failed", "Error")
        };
        let terminated = json!({"terminated": {"exitCode": exit_code, "reason": reason,
            "startedAt": started, "finishedAt": finished}});
        let containers = container_statuses(pod, false, &terminated);
        let not_ready = |kind: &str| json!({"type": kind, "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished});
        let done = json!({"status": {
            "phase": phase, "containerStatuses": containers,
            "conditions": [not_ready("PodReadyToStartContainers"), condition("Initialized"), not_ready("Ready"),
                           not_ready("ContainersReady"), condition("PodScheduled")],
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&done))
            .await?;
        stats.pods_finished.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A status per container of `pod`, all in `state`.
fn container_statuses(pod: &SlimPod, running: bool, state: &Value) -> Vec<Value> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({"name": c.name, "image": image, "imageID": format!("hollow://{image}"),
                   "containerID": format!("rkube://{name}-{}", c.name), "ready": running, "started": running,
                   "restartCount": 0, "state": state})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_look_like_kubelets_registered_them() {
        let options = HollowOptions {
            labels: [("zone".to_string(), "dmz".to_string())].into(),
            ..HollowOptions::default()
        };
        let node = node_object(&options, 300);
        assert_eq!(node["metadata"]["name"], "hollow-300");
        assert_eq!(node["metadata"]["labels"]["zone"], "dmz");
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "hollow-300");
        assert_eq!(node["spec"]["podCIDR"], "10.65.44.0/24");
        assert_eq!(node["status"]["addresses"][0]["address"], "10.255.1.44");
        assert_eq!(node["status"]["allocatable"]["pods"], "110");
        let ready = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready");
        assert_eq!(ready.unwrap()["status"], "True");
        let typed: Node = serde_json::from_value(node).unwrap();
        assert_eq!(typed.status.unwrap().node_info.unwrap().kubelet_version, "v1.33.0");
    }
}
