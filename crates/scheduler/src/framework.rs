//! The scheduling framework as plain data and pure functions: a snapshot of nodes with the
//! pods on them and the objects plugins consult; per pod, the PreFilter state of every
//! plugin, filters that say why a node cannot take the pod, scores that rank the rest, and
//! upstream's wording of a failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaSelector;
use rayon::prelude::*;
use rkube_api::selector::{LabelSelector, label_selector_text};

use crate::plugins;
use crate::plugins::volume_binding::VolumeAction;
use crate::resources::{Resources, allocatable, pod_requests, pod_requests_non_zero};

/// A node and what is placed on it (bound pods, and pods assumed bound).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub allocatable: Resources,
    pub requested: Resources,
    /// Non-zero cpu and memory requests, for scoring.
    pub non_zero: (i64, i64),
    /// (protocol, host IP, host port) already taken.
    pub used_ports: HashSet<(String, String, i32)>,
    /// The pods placed here, for pod (anti-)affinity.
    pub pods: Vec<Arc<Pod>>,
    /// Positions in `pods` by a hash of (namespace, label key, label value): counting the
    /// pods a selector matches looks only at those carrying one of its required labels,
    /// not at every pod on the node for every node and every pod scheduled.
    labelled: HashMap<u64, Vec<usize>, BuildHasherDefault<AlreadyHashed>>,
    /// Those of them with pod (anti-)affinity terms, parsed: every decision checks their
    /// required anti-affinity and scores their other terms.
    pub pods_with_affinity: Vec<(Arc<Pod>, Arc<plugins::inter_pod_affinity::PodTerms>)>,
    /// The images the node holds (normalized names) and their sizes.
    pub images: Arc<HashMap<String, i64>>,
    /// The node's values of [`TOPOLOGY_KEYS`], held here: spreading and affinity read one
    /// of them on every node for every pod, and a search of the node's label map (a
    /// pointer chase per key compared) is what that cost on thousands of nodes.
    topology: [Option<Box<str>>; TOPOLOGY_KEYS.len()],
    /// Whether the node is cordoned or has taints of each kind, held here because every
    /// decision asks it of hundreds of nodes and the answer is nearly always no: reading it
    /// from the Node object costs a cache miss per node on a busy server.
    pub flags: NodeFlags,
}

/// What [`NodeInfo::flags`] holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFlags {
    pub cordoned: bool,
    /// Some taint has effect NoSchedule or NoExecute.
    pub hard_taints: bool,
    /// Some taint has effect PreferNoSchedule.
    pub soft_taints: bool,
}

impl NodeFlags {
    fn of(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let taints = spec.and_then(|s| s.taints.as_deref()).unwrap_or_default();
        Self {
            cordoned: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            hard_taints: taints
                .iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute"),
            soft_taints: taints.iter().any(|t| t.effect == "PreferNoSchedule"),
        }
    }
}

/// The labels topology spreading and pod affinity use most (the default spreading
/// constraints use the first two).
const TOPOLOGY_KEYS: [&str; 3] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let labels = node.metadata.labels.as_ref();
        let topology = TOPOLOGY_KEYS.map(|key| labels.and_then(|l| l.get(key)).map(|v| v.as_str().into()));
        Self {
            topology,
            flags: NodeFlags::of(&node),
            name: node.metadata.name.clone().unwrap_or_default(),
            allocatable: allocatable(&node),
            images: Arc::new(plugins::image_locality::node_images(&node)),
            node,
            requested: Resources::default(),
            non_zero: (0, 0),
            used_ports: HashSet::new(),
            pods: Vec::new(),
            labelled: HashMap::default(),
            pods_with_affinity: Vec::new(),
        }
    }

    /// The node's value of the label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        match TOPOLOGY_KEYS.iter().position(|k| *k == key) {
            Some(i) => self.topology[i].as_deref(),
            None => self.node.metadata.labels.as_ref()?.get(key).map(String::as_str),
        }
    }

    /// The pods that may carry the (namespace, key, value) of [`label_hash`]: a superset
    /// (hashes collide), so callers still check.
    fn pods_with_label_hash(&self, hash: u64) -> impl Iterator<Item = &Arc<Pod>> {
        self.labelled
            .get(&hash)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.pods.get(i))
    }

    /// Holds `new` where `old` was; the caller knows they count the same here. False if
    /// `old` is not here.
    pub fn replace_pod(&mut self, old: &Arc<Pod>, new: &Arc<Pod>) -> bool {
        let Some(slot) = self.pods.iter_mut().find(|p| Arc::ptr_eq(p, old)) else {
            return false;
        };
        *slot = Arc::clone(new);
        for (pod, _) in self.pods_with_affinity.iter_mut().filter(|(p, _)| Arc::ptr_eq(p, old)) {
            *pod = Arc::clone(new);
        }
        true
    }

    pub fn add_pod(&mut self, pod: &Arc<Pod>) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        for (key, value) in pod.metadata.labels.iter().flatten() {
            self.labelled
                .entry(label_hash(namespace, key, value))
                .or_default()
                .push(self.pods.len());
        }
        self.pods.push(Arc::clone(pod));
        if let Some(terms) = plugins::inter_pod_affinity::PodTerms::of_placed(pod) {
            self.pods_with_affinity.push((Arc::clone(pod), Arc::new(terms)));
        }
        self.requested.add(&pod_requests(pod));
        let (cpu, memory) = pod_requests_non_zero(pod);
        self.non_zero.0 += cpu;
        self.non_zero.1 += memory;
        self.used_ports.extend(plugins::node_ports::host_ports(pod));
    }

    /// The same node without the pods whose uids are listed.
    pub fn without(&self, uids: &HashSet<&str>) -> Self {
        let mut fresh = Self {
            images: Arc::clone(&self.images),
            ..Self::new(Arc::clone(&self.node))
        };
        for pod in self
            .pods
            .iter()
            .filter(|p| !uids.contains(p.metadata.uid.as_deref().unwrap_or_default()))
        {
            fresh.add_pod(pod);
        }
        fresh
    }
}

/// The hasher of maps whose keys are hashes already: hashing them again (SipHash, per
/// node per decision) was a tenth of topology spreading's time.
#[derive(Default)]
struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach here; anything else still gets a fair mix.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

fn label_hash(namespace: &str, key: &str, value: &str) -> u64 {
    use std::hash::Hash;
    let mut hasher = std::hash::DefaultHasher::new();
    (namespace, key, value).hash(&mut hasher);
    hasher.finish()
}

/// How many pods on `node` in `namespace` and not being deleted `selector` matches.
pub fn count_matching(selector: &LabelSelector, namespace: &str, node: &NodeInfo) -> usize {
    Matching::new(selector, namespace).count(node)
}

/// A selector's matching pods in a namespace, counted node after node: what does not
/// depend on the node (the index key of a required label) is worked out once.
pub struct Matching<'a> {
    selector: &'a LabelSelector,
    namespace: &'a str,
    required: Option<u64>,
}

impl<'a> Matching<'a> {
    pub fn new(selector: &'a LabelSelector, namespace: &'a str) -> Self {
        let required = selector
            .required_label()
            .map(|(key, value)| label_hash(namespace, key, value));
        Self {
            selector,
            namespace,
            required,
        }
    }

    /// How many pods on `node` in the namespace and not being deleted the selector matches.
    pub fn count(&self, node: &NodeInfo) -> usize {
        let matches = |p: &&Arc<Pod>| {
            p.metadata.namespace.as_deref().unwrap_or_default() == self.namespace
                && p.metadata.deletion_timestamp.is_none()
                && labels_match(self.selector, p.metadata.labels.as_ref())
        };
        match self.required {
            Some(hash) => node.pods_with_label_hash(hash).filter(matches).count(),
            None => node.pods.iter().filter(matches).count(),
        }
    }
}

/// A pod's priority, as admission set it.
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// A `metav1.LabelSelector` with extra `key=value` requirements; none selects nothing.
pub fn selector_of(selector: Option<&MetaSelector>, extra: &[(String, String)]) -> LabelSelector {
    const NOTHING: &str = "!rkube.io/matches-nothing,rkube.io/matches-nothing";
    let Some(text) = selector
        .and_then(|s| serde_json::to_value(s).ok())
        .map(|s| label_selector_text(&s))
    else {
        return LabelSelector::parse(NOTHING).unwrap_or_default();
    };
    let mut parts: Vec<String> = vec![text];
    parts.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    parts.retain(|p| !p.is_empty());
    LabelSelector::parse(&parts.join(",")).unwrap_or_else(|_| LabelSelector::parse(NOTHING).unwrap_or_default())
}

/// Whether an object's labels (absent: none) match, without copying them.
pub fn labels_match(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector.matches_by(|key| labels.and_then(|l| l.get(key)).map(String::as_str))
}

/// The objects besides nodes and pods that plugins consult, mirrored from the API.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// Namespace labels, for pod affinity terms' namespace selectors.
    pub namespaces: plugins::inter_pod_affinity::NamespaceLabels,
    /// Service selectors by namespace and name, for the default topology spread.
    pub services: HashMap<String, BTreeMap<String, BTreeMap<String, String>>>,
    /// Selectors (selector text) of ReplicaSets, ReplicationControllers and StatefulSets
    /// by (kind, namespace, name).
    pub workloads: HashMap<(String, String, String), String>,
    pub claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    pub volumes: BTreeMap<String, Arc<PersistentVolume>>,
    pub classes: HashMap<String, Arc<StorageClass>>,
    pub budgets: HashMap<(String, String), Arc<PodDisruptionBudget>>,
    /// Volumes promised to claims (namespace/name) by decisions whose binding is in flight.
    pub assumed_volumes: HashMap<String, String>,
}

/// Pods nominated to nodes by preemption: by node, then by pod key.
pub type Nominated = HashMap<String, BTreeMap<String, Arc<Pod>>>;

/// What one decision sees.
#[derive(Clone, Copy)]
pub struct Cluster<'a> {
    /// In name order (ties between equally scored nodes go by it).
    pub nodes: &'a [&'a NodeInfo],
    pub objects: &'a Objects,
    /// On how many nodes each image is.
    pub image_spread: &'a HashMap<String, usize>,
    /// Pods that preemption made room for, by the node they wait for.
    pub nominated: &'a Nominated,
}

/// Why a filter refused a node. Unresolvable ones no preemption could fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unschedulable(Vec<String>),
    Unresolvable(Vec<String>),
}

pub type FilterResult = Result<(), Refusal>;

/// What a pod asks for, worked out once per decision rather than once per node.
pub struct Wanted {
    pub requests: Resources,
    pub non_zero: (i64, i64),
}

impl Wanted {
    pub fn of(pod: &Pod) -> Self {
        Self {
            requests: pod_requests(pod),
            non_zero: pod_requests_non_zero(pod),
        }
    }
}

/// Every plugin's PreFilter state for one pod.
pub struct Decision<'a> {
    pub pod: &'a Pod,
    pub cluster: Cluster<'a>,
    wanted: Wanted,
    images: Vec<String>,
    affinity: plugins::inter_pod_affinity::PreFilter,
    spread: plugins::pod_topology_spread::PreFilter<'a>,
    restrictions: plugins::volume_restrictions::PreFilter,
    volumes: plugins::volume_binding::PreFilter,
}

impl<'a> Decision<'a> {
    /// Fails, with upstream's message, when no node could take the pod whatever it held.
    pub fn new(pod: &'a Pod, cluster: Cluster<'a>) -> Result<Self, String> {
        let volumes = plugins::volume_binding::PreFilter::new(pod, cluster.objects)?;
        Ok(Self {
            pod,
            wanted: Wanted::of(pod),
            images: plugins::image_locality::pod_images(pod),
            affinity: plugins::inter_pod_affinity::PreFilter::new(pod, cluster.nodes, &cluster.objects.namespaces),
            spread: plugins::pod_topology_spread::PreFilter::new(pod, cluster.nodes),
            restrictions: plugins::volume_restrictions::PreFilter::new(pod, cluster.objects, cluster.nodes),
            volumes,
            cluster,
        })
    }

    /// The filters, in upstream's order; the first refusal decides.
    fn filter_as_is(&self, node: &NodeInfo) -> FilterResult {
        let pod = self.pod;
        plugins::node_unschedulable::filter(pod, node)?;
        plugins::node_name::filter(pod, node)?;
        plugins::taint_toleration::filter(pod, node)?;
        plugins::node_affinity::filter(pod, node)?;
        plugins::node_ports::filter(pod, node)?;
        plugins::node_resources_fit::fits(&self.wanted.requests, node)?;
        self.restrictions.filter(pod, node)?;
        if !self.volumes.is_empty() {
            self.volumes.filter(self.cluster.objects, node)?;
        }
        if !self.spread.is_empty() {
            self.spread.filter(node)?;
        }
        self.affinity.filter(node)?;
        Ok(())
    }

    /// The filters with the pods nominated to the node (of at least this pod's priority)
    /// counted as if they were there, so that room made by preemption stays theirs.
    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        if self.cluster.nominated.is_empty() {
            return self.filter_as_is(node);
        }
        let own = self.pod.metadata.uid.as_deref();
        let mut nominated = self
            .cluster
            .nominated
            .get(&node.name)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|p| priority(p) >= priority(self.pod) && p.metadata.uid.as_deref() != own)
            .peekable();
        if nominated.peek().is_none() {
            return self.filter_as_is(node);
        }
        let mut with = node.clone();
        for pod in nominated {
            with.add_pod(pod);
        }
        self.filter_as_is(&with)
    }

    /// Whether removing pods from a node can change other plugins' PreFilter state.
    fn depends_on_placed_pods(&self) -> bool {
        !self.affinity.is_empty() || !self.spread.is_empty() || self.restrictions.depends_on_placed_pods()
    }

    /// [`Decision::filter`] on `node` as it would be without some of its pods (preemption's
    /// question), with the PreFilter state worked out again when it depends on them.
    pub fn filter_changed(&self, node: &NodeInfo) -> FilterResult {
        if !self.depends_on_placed_pods() {
            return self.filter(node);
        }
        let nodes: Vec<&NodeInfo> = self
            .cluster
            .nodes
            .iter()
            .map(|n| if n.name == node.name { node } else { *n })
            .collect();
        let cluster = Cluster {
            nodes: &nodes,
            ..self.cluster
        };
        match Decision::new(self.pod, cluster) {
            Ok(decision) => decision.filter(node),
            Err(message) => Err(Refusal::Unresolvable(vec![message])),
        }
    }

    /// The weighted sum of the scores (each 0..=100) per feasible node, with upstream's
    /// default weights; normalized scores are normalized over the feasible nodes.
    fn scores(&self, feasible: &[&NodeInfo]) -> Vec<i64> {
        let pod = self.pod;
        let parallel = self.worth_the_pool(feasible.len());
        let raw = map_indices(parallel, feasible.len(), |i| self.affinity.raw_score(feasible[i]));
        let (low, high) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        let spread = plugins::pod_topology_spread::scores(pod, self.cluster.objects, feasible, self.cluster.nodes);
        let total = self.cluster.nodes.len();
        // ImageLocality can only tell nodes apart when some node holds one of the images.
        let images_somewhere = self.images.iter().any(|i| self.cluster.image_spread.contains_key(i));
        map_indices(parallel, feasible.len(), |i| {
            let node = feasible[i];
            let affinity = if high > low {
                (raw[i] - low) * 100 / (high - low)
            } else {
                0
            };
            plugins::node_resources_fit::least_allocated_for(self.wanted.non_zero, node)
                + plugins::node_resources_fit::balanced_allocation_for(self.wanted.non_zero, node)
                + 3 * plugins::taint_toleration::score(pod, node)
                + 2 * plugins::node_affinity::score(pod, node)
                + 2 * spread[i]
                + 2 * affinity
                + if images_somewhere {
                    plugins::image_locality::score(&self.images, node, self.cluster.image_spread, total)
                } else {
                    0
                }
        })
    }

    /// Whether filtering or scoring `nodes` nodes for this pod is worth handing to the
    /// pool: only filters that look at other pods cost more than waking a thread.
    fn worth_the_pool(&self, nodes: usize) -> bool {
        nodes >= PARALLEL_FROM && self.depends_on_placed_pods()
    }

    /// What binding the pod's volumes on `node` takes.
    pub fn volume_actions(&self, node: &NodeInfo) -> Vec<VolumeAction> {
        self.volumes.actions(self.cluster.objects, node).unwrap_or_default()
    }
}

/// Why a pod fits no node, worded as upstream's scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FitError {
    pub nodes: usize,
    /// How many nodes gave each reason.
    pub reasons: BTreeMap<String, usize>,
    /// Why no node could do (a PreFilter's message), instead of per-node reasons.
    pub prefilter: Option<String>,
    /// Nodes whose refusal preemption might resolve.
    pub resolvable: Vec<String>,
    /// What preemption found, when it ran and found nothing.
    pub post_filter: Option<String>,
}

/// "0/3 nodes are available: 1 reason, 2 other reason." as upstream counts reasons.
pub fn histogram_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        match &self.prefilter {
            Some(message) => write!(f, "0/{} nodes are available: {message}.", self.nodes)?,
            None => f.write_str(&histogram_message(self.nodes, &self.reasons))?,
        }
        if let Some(post) = &self.post_filter {
            write!(f, " {post}")?;
        }
        Ok(())
    }
}

/// Where a pod goes, and what binding its volumes there takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub node: String,
    pub volumes: Vec<VolumeAction>,
}

/// Below this many nodes to filter or score, one thread does it: handing work to the
/// pool costs more than it saves.
const PARALLEL_FROM: usize = 64;

/// `f` of `0..n`, in order; on the pool when `parallel`.
fn map_indices<R: Send>(parallel: bool, n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if parallel {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// The fewest nodes filtered in one batch (more than are still wanted when only a few are).
const MIN_BATCH: usize = 16;

/// How many feasible nodes to find before choosing among them (upstream's
/// `percentageOfNodesToScore` left adaptive): all of a small cluster, a shrinking share of
/// a large one (10% of 5,000), never fewer than 100.
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(MIN)
}

fn nominated_node(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The node for `pod`: its nominated node if that still fits, else the best-scoring of the
/// first feasible nodes found searching from `start` (ties go to the first in name
/// order); also where the next search starts, so successive pods spread their search over
/// the cluster as upstream's do.
pub fn find_node(pod: &Pod, cluster: Cluster<'_>, start: usize) -> (Result<Choice, FitError>, usize) {
    let nodes = cluster.nodes;
    let total = nodes.len();
    let mut error = FitError {
        nodes: total,
        ..FitError::default()
    };
    let decision = match Decision::new(pod, cluster) {
        Ok(decision) => decision,
        Err(message) => {
            error.prefilter = Some(message);
            return (Err(error), start);
        }
    };
    if let Some(node) = nominated_node(pod).and_then(|name| nodes.iter().find(|n| n.name == name))
        && decision.filter(node).is_ok()
    {
        let choice = Choice {
            node: node.name.clone(),
            volumes: decision.volume_actions(node),
        };
        return (Ok(choice), start);
    }
    let wanted = feasible_nodes_to_find(total);
    let mut feasible = Vec::new();
    // Each feasible node's position in `nodes`, which are in name order: ties go to the
    // first name without reading names (cold memory on a busy server).
    let mut positions = Vec::new();
    let mut searched = 0;
    // Filtered a batch at a time, in parallel when the batch is large, and the verdicts
    // taken in search order: the outcome is the sequential search's, the surplus of the
    // last batch is work thrown away (as upstream's parallel search throws it away).
    let mut offset = 0;
    while offset < total && feasible.len() < wanted {
        let batch = (wanted - feasible.len()).max(MIN_BATCH).min(total - offset);
        let at = |i: usize| nodes[(start + offset + i) % total];
        let verdicts = map_indices(decision.worth_the_pool(batch), batch, |i| decision.filter(at(i)));
        for (i, verdict) in verdicts.into_iter().enumerate() {
            if feasible.len() >= wanted {
                break;
            }
            searched += 1;
            let node = at(i);
            match verdict {
                Ok(()) => {
                    feasible.push(node);
                    positions.push((start + offset + i) % total);
                }
                Err(refusal) => {
                    let reasons = match refusal {
                        Refusal::Unschedulable(reasons) => {
                            error.resolvable.push(node.name.clone());
                            reasons
                        }
                        Refusal::Unresolvable(reasons) => reasons,
                    };
                    for reason in reasons {
                        *error.reasons.entry(reason).or_default() += 1;
                    }
                }
            }
        }
        offset += batch;
    }
    let next = if total == 0 { 0 } else { (start + searched) % total };
    let scores = decision.scores(&feasible);
    let best = feasible
        .into_iter()
        .zip(scores)
        .zip(positions)
        .max_by(|((_, a), x), ((_, b), y)| a.cmp(b).then_with(|| y.cmp(x)));
    match best {
        Some(((node, _), _)) => {
            let choice = Choice {
                node: node.name.clone(),
                volumes: decision.volume_actions(node),
            };
            (Ok(choice), next)
        }
        None => (Err(error), next),
    }
}

/// [`find_node`] over every node, searching from the first, with preemption's verdict
/// when nothing fits (victims are not evicted here).
pub fn schedule(pod: &Pod, nodes: &[NodeInfo]) -> Result<String, FitError> {
    with_bare_cluster(nodes, |cluster| match find_node(pod, cluster, 0).0 {
        Ok(choice) => Ok(choice.node),
        Err(mut fit) => {
            if let Err(message) = plugins::default_preemption::preempt(pod, cluster, &fit) {
                fit.post_filter = Some(message);
            }
            Err(fit)
        }
    })
}

/// `decide` over a cluster of `nodes` alone: no other objects, images or nominations.
pub fn with_bare_cluster<T>(nodes: &[NodeInfo], decide: impl FnOnce(Cluster<'_>) -> T) -> T {
    let mut refs: Vec<&NodeInfo> = nodes.iter().collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    let (objects, spread, nominated) = (Objects::default(), HashMap::new(), Nominated::new());
    decide(Cluster {
        nodes: &refs,
        objects: &objects,
        image_spread: &spread,
        nominated: &nominated,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Nodes and pods for the plugins' table tests.
    use super::*;
    use serde_json::{Value, json};

    pub fn node(name: &str, extra: Value) -> NodeInfo {
        let mut node = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}}});
        merge(&mut node, extra);
        NodeInfo::new(Arc::new(serde_json::from_value(node).unwrap()))
    }

    pub fn pod(extra: Value) -> Pod {
        let mut pod = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        merge(&mut pod, extra);
        serde_json::from_value(pod).unwrap()
    }

    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{node, pod};
    use super::*;
    use serde_json::json;

    #[test]
    fn counting_through_the_label_index_matches_a_full_scan() {
        let mut info = node("n", json!({}));
        let placed = [
            ("default", json!({"app": "web", "tier": "a"}), false),
            ("default", json!({"app": "web", "tier": "b"}), false),
            ("default", json!({"app": "web"}), true),
            ("default", json!({"app": "db"}), false),
            ("other", json!({"app": "web", "tier": "a"}), false),
            ("default", json!({}), false),
        ];
        for (namespace, labels, deleting) in placed {
            let mut meta = json!({"namespace": namespace, "labels": labels});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            info.add_pod(&Arc::new(pod(json!({"metadata": meta, "spec": {"containers": []}}))));
        }
        for (text, namespace, expected) in [
            ("app=web", "default", 2),
            ("app=web,tier=a", "default", 1),
            ("tier in (a,b)", "default", 2),
            ("app=web", "other", 1),
            ("app!=web", "default", 2),
            ("app=nothing", "default", 0),
        ] {
            let selector = LabelSelector::parse(text).unwrap();
            let scanned = info
                .pods
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(namespace)
                        && p.metadata.deletion_timestamp.is_none()
                        && labels_match(&selector, p.metadata.labels.as_ref())
                })
                .count();
            assert_eq!(scanned, expected, "{text} in {namespace} (scan)");
            assert_eq!(
                count_matching(&selector, namespace, &info),
                expected,
                "{text} in {namespace}"
            );
        }
    }

    #[test]
    fn node_labels_read_alike_whether_held_aside_or_not() {
        let info = node(
            "n",
            json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "z1", "rack": "r7"}}}),
        );
        assert_eq!(info.label("kubernetes.io/hostname"), Some("n"));
        assert_eq!(info.label("topology.kubernetes.io/zone"), Some("z1"));
        assert_eq!(info.label("topology.kubernetes.io/region"), None);
        assert_eq!(info.label("rack"), Some("r7"));
        assert_eq!(info.label("zone"), None);
        let unlabelled = NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "u"}})).unwrap(),
        ));
        assert_eq!(unlabelled.label("kubernetes.io/hostname"), None);
    }

    #[test]
    fn failure_messages_read_as_upstream() {
        let nodes = vec![
            node("a", json!({"metadata": {"labels": {"zone": "lan"}}})),
            node(
                "b",
                json!({"metadata": {"labels": {"zone": "dmz"}}, "status": {"allocatable": {"cpu": "1"}}}),
            ),
            node(
                "c",
                json!({"metadata": {"labels": {"zone": "dmz"}}, "status": {"allocatable": {"cpu": "1"}}}),
            ),
        ];
        let greedy = pod(json!({"spec": {"nodeSelector": {"zone": "dmz"},
            "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "2"}}}]}}));
        let err = schedule(&greedy, &nodes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
             2 No preemption victims found for incoming pod."
        );
        assert_eq!(
            schedule(&greedy, &[]).unwrap_err().to_string(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn large_clusters_are_searched_in_part_and_in_turn() {
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(500), 230);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(100_000), 5000);
        let nodes: Vec<NodeInfo> = (0..1000).map(|i| node(&format!("n{i:04}"), json!({}))).collect();
        let (chosen, next) = with_bare_cluster(&nodes, |cluster| find_node(&pod(json!({})), cluster, 990));
        assert_eq!(next, (990 + feasible_nodes_to_find(1000)) % 1000);
        assert!(chosen.is_ok());
    }

    #[test]
    fn the_parallel_search_stops_where_a_sequential_one_would() {
        // Every third node is too small; the search from 700 wraps around.
        let nodes: Vec<NodeInfo> = (0..1000)
            .map(|i| {
                let cpu = if i % 3 == 0 { "1" } else { "4" };
                node(&format!("n{i:04}"), json!({"status": {"allocatable": {"cpu": cpu}}}))
            })
            .collect();
        let asking = |cpu: &str| {
            pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}}))
        };
        let start = 700;
        let wanted = feasible_nodes_to_find(1000);
        let (mut found, mut searched) = (0, 0);
        while found < wanted {
            if (start + searched) % 1000 % 3 != 0 {
                found += 1;
            }
            searched += 1;
        }
        let (chosen, next) = with_bare_cluster(&nodes, |cluster| find_node(&asking("2"), cluster, start));
        assert_eq!(next, (start + searched) % 1000);
        let chosen = chosen.unwrap().node;
        let index: usize = chosen[1..].parse().unwrap();
        assert_ne!(index % 3, 0, "{chosen} is too small");
        assert!((index + 1000 - start) % 1000 < searched, "{chosen} was not searched");
        // Nothing fits: every node is filtered and counted once.
        let fit = with_bare_cluster(&nodes, |cluster| find_node(&asking("8"), cluster, start))
            .0
            .unwrap_err();
        assert_eq!(fit.to_string(), "0/1000 nodes are available: 1000 Insufficient cpu.");
    }

    #[test]
    fn room_made_for_a_nominated_pod_stays_its_own() {
        let nodes = [
            node("a", json!({})),
            node("b", json!({"status": {"allocatable": {"cpu": "2"}}})),
        ];
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let big = |name: &str, priority: i32| {
            pod(
                json!({"metadata": {"name": name, "uid": name}, "spec": {"priority": priority,
                "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3"}}}]}}),
            )
        };
        let nominated: Nominated = [(
            "a".to_string(),
            [("default/vip".to_string(), Arc::new(big("vip", 100)))].into(),
        )]
        .into();
        let (objects, spread) = (Objects::default(), HashMap::new());
        let cluster = Cluster {
            nodes: &refs,
            objects: &objects,
            image_spread: &spread,
            nominated: &nominated,
        };
        let fit = find_node(&big("low", 1), cluster, 0).0.unwrap_err();
        assert_eq!(fit.to_string(), "0/2 nodes are available: 2 Insufficient cpu.");
        // The nominee itself, and pods of higher priority, do not make way.
        assert_eq!(find_node(&big("vip", 100), cluster, 0).0.unwrap().node, "a");
        assert_eq!(find_node(&big("boss", 200), cluster, 0).0.unwrap().node, "a");
    }

    #[test]
    fn a_prefilter_failure_speaks_for_every_node() {
        let nodes = vec![node("a", json!({})), node("b", json!({}))];
        let p = pod(json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "gone"}}]}}));
        assert_eq!(
            schedule(&p, &nodes).unwrap_err().to_string(),
            "0/2 nodes are available: persistentvolumeclaim \"gone\" not found. \
             preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn the_emptiest_fitting_node_wins() {
        let mut busy = node("a", json!({}));
        busy.add_pod(&Arc::new(pod(
            json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "3", "memory": "8Gi"}}}]}}),
        )));
        let nodes = vec![busy, node("b", json!({})), node("c", json!({}))];
        assert_eq!(
            schedule(&pod(json!({})), &nodes).unwrap(),
            "b",
            "b and c tie; b comes first"
        );
    }
}
