//! Node lifecycle, taint eviction and pod GC, as upstream's controllers do them: a node
//! whose Lease (and status) stops changing for 40 s gets its conditions set to Unknown
//! ("Kubelet stopped posting node status."); nodes that are not Ready carry the
//! `node.kubernetes.io/unreachable` (Unknown) or `node.kubernetes.io/not-ready` (False)
//! taints, NoSchedule and NoExecute; pods on a node with NoExecute taints they do not
//! tolerate are deleted at once, those tolerating them for `tolerationSeconds` when that
//! time has passed since the taint was added; pods bound to nodes that no longer exist are
//! deleted, and finished pods beyond 12,500 go oldest first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};

use crate::pods::is_finished;
use crate::shared::SharedPods;
use kube::runtime::{WatchStreamExt, watcher};
use rkube_client::events::{Recorder, reference};
use serde_json::{Value, json};
use tokio::time::Instant;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Upstream's `--node-monitor-grace-period` as the issue states it.
const GRACE: Duration = Duration::from_secs(40);
const PERIOD: Duration = Duration::from_secs(5);
/// Upstream's `--terminated-pod-gc-threshold`.
const TERMINATED_THRESHOLD: usize = 12_500;
/// How long a pod's node must be missing before the pod is collected (upstream's quarantine).
const ORPHAN_QUARANTINE: Duration = Duration::from_secs(40);
const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// A node not Ready that its operator marked out of service (upstream's non-graceful
/// node shutdown): its terminating pods will not be finished by it.
fn out_of_service(node: &Node) -> bool {
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE));
    tainted && ready_status(node) != Some("True")
}

/// Being deleted and not finished.
fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !is_finished(pod)
}

/// The not-ready taints a node should carry for its Ready status.
pub fn wanted_taint(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    }
}

/// When a pod must leave a node with these NoExecute taints: now (a taint it does not
/// tolerate), at a time (the earliest end of its tolerations), or never.
pub fn eviction_time(pod: &Pod, taints: &[Taint]) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut earliest: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations
            .iter()
            .filter(|t| rkube_api::scheduling::tolerates(t, taint))
            .collect();
        if matching.is_empty() {
            return Some(Timestamp::UNIX_EPOCH);
        }
        // Tolerated for the shortest of the matching tolerations' times (none: forever).
        let Some(seconds) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        let added = taint.time_added.as_ref().map_or_else(Timestamp::now, |t| t.0);
        let at = added + SignedDuration::from_secs(seconds.max(0));
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    earliest
}

struct Observed {
    signal: (Option<String>, Option<String>),
    at: Instant,
}

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: SharedPods,
    observed: tokio::sync::Mutex<HashMap<String, Observed>>,
    missing_since: tokio::sync::Mutex<HashMap<String, Instant>>,
}

impl Controller {
    async fn monitor(&self) {
        for node in self.nodes.state() {
            if let Err(err) = self.check_node(&node).await {
                tracing::info!(%err, node = node.name_any(), "node check failed");
            }
        }
        if let Err(err) = self.evict().await {
            tracing::info!(%err, "taint eviction failed");
        }
        if let Err(err) = self.collect_pods().await {
            tracing::info!(%err, "pod garbage collection failed");
        }
    }

    async fn check_node(&self, node: &Node) -> Result<(), kube::Error> {
        let name = node.name_any();
        let lease = self
            .leases
            .get(&ObjectRef::new(&name).within("kube-node-lease"))
            .and_then(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| format!("{:?}", t.0))
            });
        let heartbeat = node
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| format!("{:?}", t.0));
        let signal = (lease, heartbeat);
        let stale = {
            let mut observed = self.observed.lock().await;
            let entry = observed.entry(name.clone()).or_insert_with(|| Observed {
                signal: signal.clone(),
                at: Instant::now(),
            });
            if entry.signal != signal {
                entry.signal = signal;
                entry.at = Instant::now();
            }
            entry.at.elapsed() > GRACE
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let mut ready = ready_status(node).map(str::to_string);
        if stale && ready.as_deref() != Some("Unknown") {
            let now = rkube_client::now_text();
            let mut conditions: Vec<Value> = node
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .map(|c| {
                    json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                           "message": "Kubelet stopped posting node status.",
                           "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now})
                })
                .collect();
            if conditions.is_empty() {
                for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                    conditions.push(json!({"type": kind, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                        "message": "Kubelet never posted node status.", "lastHeartbeatTime": null, "lastTransitionTime": now}));
                }
            }
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": conditions}})),
            )
            .await?;
            let message = format!("Node {name} status is now: NodeNotReady");
            self.recorder
                .emit(&reference(node), "Normal", "NodeNotReady", &message)
                .await;
            ready = Some("Unknown".into());
        }
        // The not-ready taints, NoSchedule and NoExecute, follow the Ready status (a node
        // that never reported one is left as it registered).
        if ready.is_none() {
            return Ok(());
        }
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let wanted = wanted_taint(ready.as_deref());
        let ours = |t: &Taint| {
            (t.key == UNREACHABLE || t.key == NOT_READY) && (t.effect == "NoSchedule" || t.effect == "NoExecute")
        };
        let mut kept: Vec<Taint> = taints
            .iter()
            .filter(|t| !ours(t) || Some(t.key.as_str()) == wanted)
            .cloned()
            .collect();
        if let Some(key) = wanted {
            for effect in ["NoSchedule", "NoExecute"] {
                if !kept.iter().any(|t| t.key == key && t.effect == effect) {
                    kept.push(
                        serde_json::from_value(
                            json!({"key": key, "effect": effect, "timeAdded": rkube_client::now_text()}),
                        )
                        .map_err(kube::Error::SerdeError)?,
                    );
                }
            }
        }
        if kept != taints {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"taints": kept}})),
            )
            .await?;
        }
        Ok(())
    }

    /// Upstream's NoExecute taint manager.
    async fn evict(&self) -> Result<(), kube::Error> {
        let tainted: HashMap<String, Vec<Taint>> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let taints: Vec<Taint> = n
                    .spec
                    .as_ref()?
                    .taints
                    .clone()?
                    .into_iter()
                    .filter(|t| t.effect == "NoExecute")
                    .collect();
                (!taints.is_empty()).then(|| (n.name_any(), taints))
            })
            .collect();
        if tainted.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        for pod in self.pods.state() {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let Some(taints) = tainted.get(&node) else { continue };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if eviction_time(&pod, taints).is_none_or(|at| at > now) {
                continue;
            }
            let namespace = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let marked = json!({"status": {"conditions": disruption_target(&pod, "DeletionByTaintManager",
                "Taint manager: deleting due to NoExecute taint")}});
            if !patch_status(&api, &pod, &marked).await? {
                continue;
            }
            let message = format!("Marking for deletion Pod {namespace}/{}", pod.name_any());
            self.recorder
                .emit(&reference(pod.as_ref()), "Normal", "TaintManagerEviction", &message)
                .await;
            crate::ignore_not_found(api.delete(&pod.name_any(), &DeleteParams::default()).await)?;
        }
        Ok(())
    }

    /// Upstream's `markFailedAndDeletePodWithCondition`: a pod no node will finish is
    /// marked Failed (with a `DisruptionTarget` condition for `cause`, its reason and
    /// message) unless it has finished, then deleted at once. False when it was gone already.
    async fn fail_and_delete(&self, pod: &Pod, cause: Option<(&str, &str)>) -> Result<bool, kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if !is_finished(pod) {
            let mut failed = json!({"status": {"phase": "Failed"}});
            if let Some((reason, message)) = cause {
                failed["status"]["conditions"] = json!(disruption_target(pod, reason, message));
            }
            if !patch_status(&api, pod, &failed).await? {
                return Ok(false);
            }
        }
        match api
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Upstream's pod GC: orphans of deleted nodes, terminating pods of out-of-service
    /// nodes, and finished pods over the threshold.
    async fn collect_pods(&self) -> Result<(), kube::Error> {
        let pods = self.pods.state();
        let mut missing = self.missing_since.lock().await;
        let mut still_missing = HashMap::new();
        for pod in &pods {
            let Some(node) = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            if let Some(known) = self.nodes.get(&ObjectRef::new(&node)) {
                if out_of_service(&known) && is_terminating(pod) {
                    // Upstream's non-graceful node shutdown: the node will not finish its
                    // pods; they go now.
                    if self.fail_and_delete(pod, None).await? {
                        tracing::info!(pod = pod.name_any(), node, "deleted a pod of an out-of-service node");
                    }
                }
                continue;
            }
            let since = missing.get(&node).copied().unwrap_or_else(Instant::now);
            still_missing.insert(node.clone(), since);
            if since.elapsed() < ORPHAN_QUARANTINE {
                continue;
            }
            // No node is left to say how the pod ended: it is marked disrupted.
            let cause = ("DeletionByPodGC", "PodGC: node no longer exists");
            if self.fail_and_delete(pod, Some(cause)).await? {
                tracing::info!(pod = pod.name_any(), node, "deleted a pod of a node that is gone");
            }
        }
        *missing = still_missing;
        drop(missing);
        let mut finished: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_finished(p)).collect();
        if finished.len() > TERMINATED_THRESHOLD {
            finished.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            for pod in &finished[..finished.len() - TERMINATED_THRESHOLD] {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                crate::ignore_not_found(
                    api.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                        .await,
                )?;
            }
        }
        Ok(())
    }
}

/// The pod's conditions with a `DisruptionTarget` one, written before the pod is deleted
/// so that its owner (a Job's pod failure policy) can tell a disruption from a failure. A
/// merge patch replaces the whole list, so the pod's other conditions are kept.
fn disruption_target(pod: &Pod, reason: &str, message: &str) -> Vec<Value> {
    let mut conditions: Vec<Value> = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.type_ != "DisruptionTarget")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": reason,
        "message": message, "lastTransitionTime": rkube_client::now_text()}));
    conditions
}

/// Merge-patches the pod's status; false when the pod is gone already.
async fn patch_status(api: &Api<Pod>, pod: &Pod, patch: &Value) -> Result<bool, kube::Error> {
    match api
        .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Runs the controllers until the future is dropped.
pub async fn run(client: kube::Client, pods: SharedPods) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client: client.clone(),
        nodes: nodes.clone(),
        leases: leases.clone(),
        pods: pods.clone(),
        observed: tokio::sync::Mutex::new(HashMap::new()),
        missing_since: tokio::sync::Mutex::new(HashMap::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(crate::trim)
        .reflect(node_writer);
    tasks.spawn(async move {
        let mut events = std::pin::pin!(node_events);
        while events.next().await.is_some() {}
    });
    let lease_events = watcher(
        Api::<Lease>::namespaced(client, "kube-node-lease"),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(lease_writer);
    tasks.spawn(async move {
        let mut events = std::pin::pin!(lease_events);
        while events.next().await.is_some() {}
    });
    nodes.wait_until_ready().await.ok();
    leases.wait_until_ready().await.ok();
    pods.wait_until_ready().await;
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(PERIOD);
        loop {
            ticker.tick().await;
            controller.monitor().await;
        }
    });
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tolerations: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}),
        )
        .unwrap()
    }

    fn taint(key: &str, added: &str) -> Taint {
        serde_json::from_value(json!({"key": key, "effect": "NoExecute", "timeAdded": added})).unwrap()
    }

    #[test]
    fn pods_leave_when_their_tolerations_run_out() {
        let added = "2026-01-01T00:00:00Z";
        let taints = [taint(UNREACHABLE, added)];
        assert_eq!(
            eviction_time(&pod(json!([])), &taints),
            Some(Timestamp::UNIX_EPOCH),
            "untolerated: now"
        );
        let patient =
            pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]));
        assert_eq!(
            eviction_time(&patient, &taints),
            Some("2026-01-01T00:05:00Z".parse().unwrap())
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &taints), None);
    }

    #[test]
    fn ready_status_decides_the_taint() {
        assert_eq!(wanted_taint(Some("True")), None);
        assert_eq!(wanted_taint(Some("False")), Some(NOT_READY));
        assert_eq!(wanted_taint(Some("Unknown")), Some(UNREACHABLE));
        assert_eq!(wanted_taint(None), Some(UNREACHABLE));
    }
}
