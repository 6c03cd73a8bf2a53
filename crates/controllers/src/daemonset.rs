//! The DaemonSet controller, as upstream's `pkg/controller/daemon`: one pod per node that
//! the pod template accepts (nodeSelector, node affinity, taints after the default daemon
//! tolerations), each pinned to its node by node affinity so the scheduler binds it there;
//! pods leave nodes that no longer accept them (an untolerated NoExecute taint, a changed
//! label), failed pods are replaced, and template changes roll out by RollingUpdate
//! (maxUnavailable, maxSurge) or OnDelete, with the history in ControllerRevisions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use rkube_api::scheduling;
use rkube_api::selector::LabelSelector;
use rkube_client::events::{Recorder, reference};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::expectations::Expectations;
use crate::history::{self, HistoryError, Owner};
use crate::pods::{controller_of, is_available, is_finished, labels_match, selector};
use crate::shared::{PodEvent, SharedPods, handle_events};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

/// The pod and revision label carrying the template's hash.
pub const HASH_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";
/// Upstream's `BurstReplicas` for daemons.
const BURST_REPLICAS: usize = 250;
const WORKERS: usize = 2;
/// Upstream's backoff for failed daemon pods: a node's failed pod is replaced at once the
/// first time, then after doubling delays.
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// Upstream's `AddOrUpdateDaemonPodTolerations`: daemons stay through node trouble and
/// land on cordoned nodes.
pub fn default_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let wanted = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        tolerations.retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)));
        tolerations.push(wanted);
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    tolerations
}

/// Whether a daemon pod should be placed on the node, and whether one there may stay
/// (upstream's `NodeShouldRunDaemonPod`).
pub fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let mut spec = spec.clone();
    spec.tolerations = Some(default_tolerations(&spec));
    if !scheduling::node_accepts(&spec, node) {
        return (false, false);
    }
    let untolerated: Vec<&Taint> = scheduling::taints(node)
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !scheduling::tolerated(&spec, t))
        .collect();
    let evicted = untolerated.iter().any(|t| t.effect == "NoExecute");
    (untolerated.is_empty(), !evicted)
}

/// The node a daemon pod is for: where it is bound, or where its node affinity pins it.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|term| {
        term.match_fields.iter().flatten().find_map(|f| {
            (f.key == "metadata.name" && f.operator == "In")
                .then(|| f.values.as_ref().filter(|v| v.len() == 1).map(|v| v[0].clone()))
                .flatten()
        })
    })
}

/// Upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`: the pod's required node
/// affinity becomes exactly its node.
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

fn controller_ref(ds: &DaemonSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: ds.name_any(),
        uid: ds.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod for a node: the template with the hash and generation labels, the default
/// tolerations, pinned to the node.
pub fn new_pod(ds: &DaemonSet, template: &PodTemplateSpec, hash: &str, node: &str) -> Pod {
    let mut pod = crate::pods::from_template(template, &ds.name_any(), controller_ref(ds));
    pod.metadata.namespace = ds.namespace();
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(HASH_LABEL.into(), hash.into());
    labels.insert(GENERATION_LABEL.into(), ds.metadata.generation.unwrap_or(0).to_string());
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.tolerations = Some(default_tolerations(spec));
    pin_to_node(spec, node);
    pod
}

fn hash_of_pod(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(HASH_LABEL).map(String::as_str)
}

/// Upstream's `GetValueFromIntOrPercent` over the number of nodes wanting a pod.
fn resolve(value: Option<&IntOrString>, default: i32, total: i32, round_up: bool) -> i32 {
    match value {
        None => default,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = i64::from(total) * percent;
            let value = if round_up { (scaled + 99) / 100 } else { scaled / 100 };
            i32::try_from(value).unwrap_or(i32::MAX)
        }
    }
}

/// What the sync decided for the nodes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create_on: Vec<String>,
    pub delete: Vec<String>,
}

/// A node's daemon pods as the planner sees them.
#[derive(Debug, Clone)]
pub struct NodePods {
    pub node: String,
    pub should_run: bool,
    pub may_stay: bool,
    /// Oldest first.
    pub pods: Vec<PodFacts>,
}

#[derive(Debug, Clone)]
pub struct PodFacts {
    pub name: String,
    pub updated: bool,
    pub ready: bool,
    pub available: bool,
    /// Failed or succeeded: daemons are never meant to end.
    pub failed: bool,
    pub terminating: bool,
}

/// Upstream's `podsShouldBeOnNode` and `rollingUpdate`, as a pure function of the nodes:
/// which nodes get a new pod and which pods go.
pub fn plan(nodes: &[NodePods], rolling: Option<(i32, i32)>, failed_allowed: &dyn Fn(&str) -> bool) -> Plan {
    let mut plan = Plan::default();
    for node in nodes {
        let live: Vec<&PodFacts> = node.pods.iter().filter(|p| !p.terminating).collect();
        if !node.may_stay {
            plan.delete.extend(live.iter().map(|p| p.name.clone()));
            continue;
        }
        let (failed, running): (Vec<&PodFacts>, Vec<&PodFacts>) = live.iter().partition(|p| p.failed);
        if !failed.is_empty() && failed_allowed(&node.node) {
            // Replaced at a later sync, once the failed pod is gone.
            plan.delete.extend(failed.iter().map(|p| p.name.clone()));
        }
        if node.pods.is_empty() && node.should_run {
            plan.create_on.push(node.node.clone());
        }
        if running.is_empty() {
            continue;
        }
        // Beyond one pod per node (an old and a new one only while surging): the oldest stays.
        let surging = rolling.is_some_and(|(surge, _)| surge > 0);
        let (new, old): (Vec<&&PodFacts>, Vec<&&PodFacts>) = running.iter().partition(|p| p.updated);
        if surging && new.len() == 1 && old.len() == 1 {
            continue;
        }
        if running.len() > 1 {
            plan.delete.extend(running[1..].iter().map(|p| p.name.clone()));
        }
    }
    let Some((max_surge, max_unavailable)) = rolling else {
        return plan;
    };
    // The rolling update, over the nodes left with one running pod (or an old and a new).
    let deleted: HashSet<String> = plan.delete.iter().cloned().collect();
    let mut unavailable = 0;
    let mut old_available: Vec<(&str, &str)> = Vec::new();
    let mut surged = 0;
    for node in nodes.iter().filter(|n| n.may_stay && n.should_run) {
        let running: Vec<&PodFacts> = node
            .pods
            .iter()
            .filter(|p| !p.terminating && !p.failed && !deleted.contains(&p.name))
            .collect();
        let new = running.iter().find(|p| p.updated);
        let old = running.iter().find(|p| !p.updated);
        match (new, old) {
            (None, None) => unavailable += 1,
            (Some(new), None) => {
                if !new.available {
                    unavailable += 1;
                }
            }
            (Some(new), Some(old)) => {
                surged += 1;
                if new.available {
                    plan.delete.push(old.name.clone());
                }
            }
            (None, Some(old)) => {
                if !old.available {
                    // Already unavailable: replacing it costs nothing.
                    plan.delete.push(old.name.clone());
                    unavailable += 1;
                } else {
                    old_available.push((&node.node, &old.name));
                }
            }
        }
    }
    for (node, old) in old_available {
        if max_surge > 0 {
            if surged < max_surge {
                plan.create_on.push(node.to_string());
                surged += 1;
            }
        } else if unavailable < max_unavailable {
            plan.delete.push(old.to_string());
            unavailable += 1;
        }
    }
    plan
}

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    sets: Store<DaemonSet>,
    pods: SharedPods,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    expectations: Mutex<Expectations>,
    seen: Mutex<HashSet<String>>,
    /// Per `set/node`: failed pods replaced so far and when the last one was.
    failures: Mutex<HashMap<String, (u32, tokio::time::Instant)>>,
}

impl Controller {
    async fn event(&self, involved: &ObjectReference, kind: &str, reason: &str, message: &str) {
        self.recorder.emit(involved, kind, reason, message).await;
    }

    async fn pod_event(&self, pod: &Pod, deleted: bool) {
        // Every pod is remembered, so that an orphan's adoption is not taken for the
        // creation an expectation waits for.
        let uid = pod.uid().unwrap_or_default();
        let first_sight = if deleted {
            self.seen.lock().await.remove(&uid);
            false
        } else {
            self.seen.lock().await.insert(uid)
        };
        let namespace = pod.namespace().unwrap_or_default();
        match controller_of(pod) {
            Some(owner) if owner.kind == "DaemonSet" => {
                let key = format!("{namespace}/{}", owner.name);
                {
                    let mut expectations = self.expectations.lock().await;
                    if deleted || pod.metadata.deletion_timestamp.is_some() {
                        expectations.deletion_observed(&key, &key_of(pod));
                    } else if first_sight {
                        expectations.creation_observed(&key);
                    }
                }
                self.queue.add(&key).await;
            }
            Some(_) => {}
            None if !deleted => {
                for set in self.sets.state() {
                    if set.metadata.namespace.as_deref() == Some(namespace.as_str())
                        && selector(set.spec.as_ref().map(|s| &s.selector))
                            .is_some_and(|s| labels_match(&s, pod.metadata.labels.as_ref()))
                    {
                        self.queue.add(&key_of(set.as_ref())).await;
                    }
                }
            }
            None => {}
        }
    }

    /// The set's pods: owned ones still matching, and matching orphans it adopts.
    async fn claim_pods(&self, ds: &DaemonSet, selector: &LabelSelector) -> Result<Vec<Arc<Pod>>, ControllerError> {
        let namespace = ds.namespace().unwrap_or_default();
        let reference = controller_ref(ds);
        let candidates = self.pods.claimable(&reference.uid, &namespace);
        let owner = (&reference, namespace.as_str(), ds.metadata.deletion_timestamp.is_some());
        crate::pods::claim(&self.client, candidates, owner, |pod| {
            labels_match(selector, pod.metadata.labels.as_ref())
        })
        .await
        .map_err(|source| ControllerError::api(&key_of(ds), "claiming a pod", source))
    }

    /// Whether a failed pod on the node may be replaced now (with exponential backoff per node).
    async fn failed_allowed(&self, key: &str, nodes_with_failures: &[String]) -> HashSet<String> {
        let mut failures = self.failures.lock().await;
        let mut allowed = HashSet::new();
        for node in nodes_with_failures {
            let entry_key = format!("{key}/{node}");
            let now = tokio::time::Instant::now();
            let (count, last) = failures.get(&entry_key).copied().unwrap_or((0, now));
            let wait = if count == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(1u64 << count.min(10)).min(FAILED_BACKOFF_MAX)
            };
            if count == 0 || now.duration_since(last) >= wait {
                failures.insert(entry_key, (count + 1, now));
                allowed.insert(node.clone());
            }
        }
        allowed
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(ds) = self.sets.get(&ObjectRef::new(name).within(namespace)) else {
            self.expectations.lock().await.forget(key);
            self.failures
                .lock()
                .await
                .retain(|k, _| !k.starts_with(&format!("{key}/")));
            return Ok(None);
        };
        let Some(selector) = selector(ds.spec.as_ref().map(|s| &s.selector)) else {
            tracing::warn!(key, "invalid or empty selector; nothing to manage");
            return Ok(None);
        };
        let spec = ds.spec.clone().unwrap_or_default();
        let pods = self.claim_pods(&ds, &selector).await?;
        let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
        let owner = Owner {
            reference: controller_ref(&ds),
            namespace: namespace.to_string(),
            selector: &selector,
            template: &spec.template,
            hash_label: HASH_LABEL,
            collision_count,
        };
        let revisions = history::claim(&self.client, &self.revisions, &owner)
            .await
            .map_err(|source| ControllerError::api(key, "claiming revisions", source))?;
        let update = match history::update_revision(&self.client, &owner, &revisions).await {
            Ok(revision) => revision,
            Err(HistoryError::Collision(_)) => {
                let status = json!({"status": {"collisionCount": collision_count.unwrap_or(0) + 1}});
                let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), namespace);
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .map_err(|source| ControllerError::api(key, "counting a collision", source))?;
                return Err(ControllerError::Conflict { key: key.to_string() });
            }
            Err(HistoryError::Api(source)) => return Err(ControllerError::api(key, "recording a revision", source)),
        };
        let hash = update
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL).cloned())
            .unwrap_or_default();

        // Pods by the node they are for; pods for nodes that are gone and never bound go.
        let template_spec = spec.template.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = Timestamp::now();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        let mut orphaned: Vec<String> = Vec::new();
        for pod in &pods {
            match target_node(pod) {
                Some(node) if self.nodes.get(&ObjectRef::new(&node)).is_some() => {
                    by_node.entry(node).or_default().push(Arc::clone(pod));
                }
                _ if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
                    && pod.metadata.deletion_timestamp.is_none() =>
                {
                    orphaned.push(pod.name_any());
                }
                _ => {}
            }
        }
        let mut nodes: Vec<NodePods> = Vec::new();
        for node in self.nodes.state() {
            let node_name = node.name_any();
            let (should_run, may_stay) = should_run(&template_spec, &node);
            let mut on_node = by_node.remove(&node_name).unwrap_or_default();
            on_node.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            nodes.push(NodePods {
                node: node_name,
                should_run,
                may_stay,
                pods: on_node
                    .iter()
                    .map(|p| PodFacts {
                        name: p.name_any(),
                        updated: hash_of_pod(p) == Some(hash.as_str()),
                        ready: crate::pods::is_ready(p),
                        available: is_available(p, min_ready, now),
                        failed: is_finished(p),
                        terminating: p.metadata.deletion_timestamp.is_some(),
                    })
                    .collect(),
            });
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));

        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = if strategy.type_.as_deref().is_none_or(|t| t == "RollingUpdate") {
            let wanting = i32::try_from(nodes.iter().filter(|n| n.should_run).count()).unwrap_or(i32::MAX);
            let update = strategy.rolling_update.unwrap_or_default();
            let surge = resolve(update.max_surge.as_ref(), 0, wanting, true);
            let unavailable = resolve(update.max_unavailable.as_ref(), 1, wanting, true);
            Some(if surge == 0 && unavailable == 0 {
                (0, 1)
            } else {
                (surge, unavailable)
            })
        } else {
            None
        };

        let mut requeue = None;
        if ds.metadata.deletion_timestamp.is_none() && self.expectations.lock().await.satisfied(key) {
            let with_failures: Vec<String> = nodes
                .iter()
                .filter(|n| n.pods.iter().any(|p| p.failed && !p.terminating))
                .map(|n| n.node.clone())
                .collect();
            let allowed = self.failed_allowed(key, &with_failures).await;
            if allowed.len() < with_failures.len() {
                requeue = Some(Duration::from_secs(2));
            }
            for node in nodes.iter().filter(|n| allowed.contains(&n.node)) {
                for pod in node.pods.iter().filter(|p| p.failed && !p.terminating) {
                    let message = format!(
                        "Found failed daemon pod {namespace}/{} on node {}, will try to kill it",
                        pod.name, node.node
                    );
                    self.event(&reference(ds.as_ref()), "Warning", "FailedDaemonPod", &message)
                        .await;
                }
            }
            let mut plan = plan(&nodes, rolling, &|node| allowed.contains(node));
            plan.delete.extend(orphaned);
            self.sync_nodes(&ds, key, &spec.template, &hash, plan).await?;
        }

        let status = status_of(&ds, &nodes);
        let have = serde_json::to_value(&ds.status).unwrap_or_default();
        let differs = status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(field, value)| have.get(field).unwrap_or(&Value::Null) != value);
        if differs {
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), namespace);
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                .await
                .map_err(|source| ControllerError::api(key, "updating the status", source))?;
        }
        let live: HashSet<String> = revisions
            .iter()
            .filter(|r| {
                let revision_hash = r.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
                r.name_any() == update.name_any()
                    || pods.iter().any(|p| hash_of_pod(p) == revision_hash.map(String::as_str))
            })
            .map(|r| r.name_any())
            .collect();
        history::prune(
            &self.client,
            namespace,
            &revisions,
            &live,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await
        .map_err(|source| ControllerError::api(key, "pruning revisions", source))?;
        if min_ready > 0 && status["numberAvailable"] != status["numberReady"] {
            requeue = Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(0)));
        }
        Ok(requeue)
    }

    async fn sync_nodes(
        &self,
        ds: &DaemonSet,
        key: &str,
        template: &PodTemplateSpec,
        hash: &str,
        plan: Plan,
    ) -> Result<(), ControllerError> {
        let namespace = ds.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let involved = reference(ds);
        let create_on: Vec<String> = plan.create_on.into_iter().take(BURST_REPLICAS).collect();
        let delete: Vec<String> = plan.delete.into_iter().take(BURST_REPLICAS).collect();
        {
            let mut expectations = self.expectations.lock().await;
            expectations.expect_deletions(key, delete.iter().map(|n| format!("{namespace}/{n}")));
        }
        let params = DeleteParams::default();
        let results = join_all(delete.iter().map(|name| api.delete(name, &params))).await;
        let mut failed = None;
        for (name, result) in delete.iter().zip(results) {
            match result {
                Ok(_) => {
                    self.event(&involved, "Normal", "SuccessfulDelete", &format!("Deleted pod: {name}"))
                        .await;
                }
                Err(err) => {
                    self.expectations
                        .lock()
                        .await
                        .deletion_observed(key, &format!("{namespace}/{name}"));
                    if !matches!(&err, kube::Error::Api(status) if status.code == 404) {
                        let message = format!("Error deleting: {}", crate::api_message(&err));
                        self.event(&involved, "Warning", "FailedDelete", &message).await;
                        failed = Some(err);
                    }
                }
            }
        }
        // Creations are expected after the deletions, which a new expectation would replace.
        let mut expectations_creations = create_on.len();
        if !delete.is_empty() && !create_on.is_empty() {
            expectations_creations = 0;
        }
        if expectations_creations > 0 {
            self.expectations
                .lock()
                .await
                .expect_creations(key, expectations_creations);
        }
        let params = PostParams::default();
        let results = crate::pods::slow_start(create_on.len(), |i| {
            let pod = new_pod(ds, template, hash, &create_on[i]);
            let (api, params) = (api.clone(), params.clone());
            async move { api.create(&params, &pod).await }
        })
        .await;
        let attempted = results.len();
        for result in results {
            match result {
                Ok(created) => {
                    let message = format!("Created pod: {}", created.name_any());
                    self.event(&involved, "Normal", "SuccessfulCreate", &message).await;
                }
                Err(err) => {
                    if expectations_creations > 0 {
                        self.expectations.lock().await.creation_observed(key);
                    }
                    let message = format!("Error creating: {}", crate::api_message(&err));
                    self.event(&involved, "Warning", "FailedCreate", &message).await;
                    failed = Some(err);
                }
            }
        }
        if expectations_creations > 0 && attempted < create_on.len() {
            // The rest of this sync's creations will not happen.
            let mut expectations = self.expectations.lock().await;
            for _ in attempted..create_on.len() {
                expectations.creation_observed(key);
            }
        }
        match failed {
            Some(err) => Err(ControllerError::api(key, "managing daemon pods", err)),
            None => Ok(()),
        }
    }
}

/// Upstream's `updateDaemonSetStatus` counts.
fn status_of(ds: &DaemonSet, nodes: &[NodePods]) -> Value {
    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0, 0);
    for node in nodes {
        let running: Vec<&PodFacts> = node.pods.iter().filter(|p| !p.terminating).collect();
        if node.should_run {
            desired += 1;
            if !running.is_empty() {
                current += 1;
                // The newest pod speaks for the node, as upstream's sorted list.
                if let Some(pod) = running.last() {
                    if pod.ready {
                        ready += 1;
                    }
                    if pod.available {
                        available += 1;
                    }
                    if pod.updated {
                        updated += 1;
                    }
                }
            }
        } else if !running.is_empty() {
            misscheduled += 1;
        }
    }
    json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
    })
}

/// What of a node matters to daemons: a change to it wakes every DaemonSet.
fn node_fingerprint(node: &Node) -> String {
    let labels = serde_json::to_string(&node.metadata.labels).unwrap_or_default();
    let spec = node.spec.as_ref();
    let taints = serde_json::to_string(&spec.and_then(|s| s.taints.as_ref())).unwrap_or_default();
    format!("{labels}|{taints}|{:?}", spec.and_then(|s| s.unschedulable))
}

/// Runs the controller until the future is dropped.
pub async fn run(client: kube::Client, pods: SharedPods, pod_events: tokio::sync::mpsc::UnboundedReceiver<PodEvent>) {
    let queue = WorkQueue::new();
    let mut tasks = tokio::task::JoinSet::new();
    let sets = crate::informer::spawn::<DaemonSet, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |set, _| {
            let queue = Arc::clone(&queue);
            async move { queue.add(&key_of(&set)).await }
        }
    });
    let (node_events, mut node_receiver) = tokio::sync::mpsc::unbounded_channel::<(Node, bool)>();
    let nodes = crate::informer::spawn::<Node, _, _>(&mut tasks, &client, move |node, deleted| {
        let _ = node_events.send((node, deleted));
        async {}
    });
    let revisions = crate::informer::spawn::<ControllerRevision, _, _>(&mut tasks, &client, |_, _| async {});
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
        client,
        queue: Arc::clone(&queue),
        sets: sets.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        revisions: revisions.clone(),
        expectations: Mutex::new(Expectations::default()),
        seen: Mutex::new(HashSet::new()),
        failures: Mutex::new(HashMap::new()),
    });
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(handle_events(pod_events, move |pod, deleted| {
            let controller = Arc::clone(&controller);
            async move { controller.pod_event(&pod, deleted).await }
        }));
    }
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(async move {
            let mut seen: HashMap<String, String> = HashMap::new();
            while let Some((node, deleted)) = node_receiver.recv().await {
                let changed = if deleted {
                    seen.remove(&node.name_any()).is_some()
                } else {
                    let print = node_fingerprint(&node);
                    seen.insert(node.name_any(), print.clone()).as_ref() != Some(&print)
                };
                if changed {
                    for set in controller.sets.state() {
                        controller.queue.add(&key_of(set.as_ref())).await;
                    }
                }
            }
        });
    }
    sets.wait_until_ready().await.ok();
    pods.wait_until_ready().await;
    nodes.wait_until_ready().await.ok();
    revisions.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &queue, WORKERS, "daemonset", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, updated: bool, available: bool) -> PodFacts {
        PodFacts {
            name: name.into(),
            updated,
            ready: available,
            available,
            failed: false,
            terminating: false,
        }
    }

    fn node(name: &str, pods: Vec<PodFacts>) -> NodePods {
        NodePods {
            node: name.into(),
            should_run: true,
            may_stay: true,
            pods,
        }
    }

    #[test]
    fn eligibility_follows_selectors_and_taints_after_default_tolerations() {
        let spec: PodSpec =
            serde_json::from_value(json!({"containers": [], "nodeSelector": {"role": "edge"}})).unwrap();
        let n = |labels: Value, taints: Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints}}))
                .unwrap()
        };
        assert_eq!(should_run(&spec, &n(json!({"role": "edge"}), json!([]))), (true, true));
        assert_eq!(
            should_run(&spec, &n(json!({"role": "core"}), json!([]))),
            (false, false)
        );
        let unreachable = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
        assert_eq!(
            should_run(&spec, &n(json!({"role": "edge"}), unreachable)),
            (true, true)
        );
        let cordoned = json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
        assert_eq!(should_run(&spec, &n(json!({"role": "edge"}), cordoned)), (true, true));
        let dedicated = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        assert_eq!(should_run(&spec, &n(json!({"role": "edge"}), dedicated)), (false, true));
        let evicting = json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]);
        assert_eq!(should_run(&spec, &n(json!({"role": "edge"}), evicting)), (false, false));
    }

    #[test]
    fn pods_are_pinned_to_their_node() {
        let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent", "namespace": "kube-system",
            "uid": "u", "generation": 3}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": []}}}}))
        .unwrap();
        let template = ds.spec.as_ref().unwrap().template.clone();
        let pod = new_pod(&ds, &template, "h1", "node-7");
        assert_eq!(target_node(&pod).as_deref(), Some("node-7"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(
            (labels[HASH_LABEL].as_str(), labels[GENERATION_LABEL].as_str()),
            ("h1", "3")
        );
        assert_eq!(pod.spec.as_ref().unwrap().tolerations.as_ref().unwrap().len(), 6);
    }

    #[test]
    fn missing_pods_are_created_and_extra_ones_deleted() {
        let mut ineligible = node("c", vec![facts("c1", true, true)]);
        ineligible.should_run = false;
        ineligible.may_stay = false;
        let nodes = vec![
            node("a", vec![]),
            node("b", vec![facts("b1", true, true), facts("b2", true, true)]),
            ineligible,
        ];
        let plan = plan(&nodes, Some((0, 1)), &|_| true);
        assert_eq!(plan.create_on, ["a"]);
        assert_eq!(plan.delete, ["b2", "c1"]);
    }

    #[test]
    fn rolling_updates_respect_max_unavailable_and_surge() {
        let nodes: Vec<NodePods> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, vec![facts(&format!("{n}-old"), false, true)]))
            .collect();
        assert_eq!(plan(&nodes, Some((0, 1)), &|_| true).delete, ["a-old"]);
        assert_eq!(plan(&nodes, Some((0, 2)), &|_| true).delete, ["a-old", "b-old"]);
        let surge = plan(&nodes, Some((1, 0)), &|_| true);
        assert_eq!(
            (surge.create_on, surge.delete),
            (vec!["a".to_string()], Vec::<String>::new())
        );
        // A new pod available beside the old one: the old one goes.
        let mut surged = nodes.clone();
        surged[0].pods.push(facts("a-new", true, true));
        assert_eq!(plan(&surged, Some((1, 0)), &|_| true).delete, ["a-old"]);
        // Unavailable old pods go regardless of the budget.
        let mut broken = nodes.clone();
        broken[1].pods[0].available = false;
        assert_eq!(plan(&broken, Some((0, 1)), &|_| true).delete, ["b-old"]);
    }

    #[test]
    fn failed_pods_are_replaced_when_backoff_allows() {
        let mut failed = facts("a1", true, false);
        failed.failed = true;
        let nodes = vec![node("a", vec![failed])];
        let plan_now = plan(&nodes, None, &|_| true);
        assert_eq!(
            (plan_now.delete, plan_now.create_on),
            (vec!["a1".to_string()], Vec::<String>::new())
        );
        assert_eq!(plan(&nodes, None, &|_| false), Plan::default());
    }
}
