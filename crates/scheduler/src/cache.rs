//! The scheduler's view of the cluster, kept up to date from watch events rather than
//! rebuilt per decision: every node with the pods placed on it, including pods assumed
//! bound (decided, binding in flight) so the next decision already counts them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::{Choice, Cluster, FitError, NodeInfo, Nominated, Objects, find_node};
use crate::plugins::default_preemption::{Preemption, preempt};

/// Where a pod is placed, and whether that is only assumed so far.
#[derive(Debug, Clone)]
struct Placement {
    uid: String,
    node: String,
    pod: Arc<Pod>,
    assumed: bool,
}

/// Nodes in name order in one vector, so that a decision walks them in memory order.
#[derive(Debug, Default)]
struct Nodes {
    list: Vec<NodeInfo>,
}

impl Nodes {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.list.binary_search_by(|n| n.name.as_str().cmp(name))
    }

    fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.position(name).ok().map(|i| &self.list[i])
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.position(name).ok().map(|i| &mut self.list[i])
    }

    fn insert(&mut self, info: NodeInfo) {
        match self.position(&info.name) {
            Ok(i) => self.list[i] = info,
            Err(i) => self.list.insert(i, info),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.list.remove(i);
        }
    }
}

impl std::ops::Index<&str> for Nodes {
    type Output = NodeInfo;
    fn index(&self, name: &str) -> &NodeInfo {
        &self.list[self.position(name).unwrap_or(usize::MAX)]
    }
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: Nodes,
    /// Node objects for nodes not seen yet are kept with their pods when they arrive.
    placements: HashMap<String, Placement>,
    on_node: HashMap<String, BTreeSet<String>>,
    next_start: usize,
    /// Services, workloads, claims, volumes, classes and budgets, as the API shows them.
    pub objects: Objects,
    /// On how many nodes each image is.
    image_spread: HashMap<String, usize>,
    /// Unbound pods nominated to a node by preemption, by node, keyed by pod key.
    nominated: Nominated,
}

/// What a scheduling attempt decided.
#[derive(Debug)]
pub enum Outcome {
    Placed(Choice),
    /// Fits nowhere; preemption evicts these victims to make room on the nominated node.
    Preempting(FitError, Preemption),
    Unschedulable(FitError),
}

pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A pod that has finished (Succeeded or Failed) holds nothing on its node any more.
pub(crate) fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The node a pod is bound to.
pub(crate) fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

/// Pods that hold resources on their node: bound and not finished.
fn occupies(pod: &Pod) -> Option<&str> {
    node_of(pod).filter(|_| !is_terminal(pod))
}

/// Whether a pod's new version counts on its node exactly as the old one did: the node's
/// accounting reads requests, host ports and affinity terms from the spec, and namespace
/// and labels for selectors.
fn same_footprint(old: &Pod, new: &Pod) -> bool {
    let same_spec = match (old.spec.as_ref(), new.spec.as_ref()) {
        (Some(a), Some(b)) => {
            a.containers == b.containers
                && a.init_containers == b.init_containers
                && a.overhead == b.overhead
                && a.affinity == b.affinity
        }
        (a, b) => a.is_none() && b.is_none(),
    };
    same_spec && old.metadata.namespace == new.metadata.namespace && old.metadata.labels == new.metadata.labels
}

impl Cache {
    fn rebuild(&mut self, node: &str) {
        let Some(info) = self.nodes.get_mut(node) else { return };
        let mut fresh = NodeInfo::new(Arc::clone(&info.node));
        for key in self.on_node.get(node).into_iter().flatten() {
            if let Some(placement) = self.placements.get(key) {
                fresh.add_pod(&placement.pod);
            }
        }
        *info = fresh;
    }

    fn count_images(&mut self, name: &str, delta: isize) {
        let Some(info) = self.nodes.get(name) else { return };
        for image in info.images.keys() {
            let count = self.image_spread.entry(image.clone()).or_default();
            *count = count.saturating_add_signed(delta);
        }
        self.image_spread.retain(|_, count| *count > 0);
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.count_images(&name, -1);
        self.nodes.insert(NodeInfo::new(node));
        self.count_images(&name, 1);
        self.rebuild(&name);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.count_images(name, -1);
        self.nodes.remove(name);
    }

    fn set_nomination(&mut self, key: &str, pod: Option<&Arc<Pod>>) {
        for pods in self.nominated.values_mut() {
            pods.remove(key);
        }
        let node = pod.and_then(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
                .filter(|n| !n.is_empty())
        });
        if let (Some(pod), Some(node)) = (pod, node) {
            self.nominated
                .entry(node.to_string())
                .or_default()
                .insert(key.to_string(), Arc::clone(pod));
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
    }

    /// Records a nomination made here before the API shows it.
    pub fn nominate(&mut self, pod: &Pod, node: Option<&str>) {
        let mut nominated = pod.clone();
        nominated.status.get_or_insert_default().nominated_node_name = node.map(str::to_string);
        let key = pod_key(pod);
        self.set_nomination(&key, Some(&Arc::new(nominated)));
    }

    fn place(&mut self, key: &str, placement: Placement) {
        // Most updates of a placed pod are its status: the node's accounting stays, only
        // the pod it holds is the newer one (a rebuild would re-add every pod there).
        if let Some(old) = self.placements.get(key)
            && old.node == placement.node
            && old.uid == placement.uid
            && same_footprint(&old.pod, &placement.pod)
            && let Some(info) = self.nodes.get_mut(&placement.node)
            && info.replace_pod(&old.pod, &placement.pod)
        {
            self.placements.insert(key.to_string(), placement);
            return;
        }
        let node = placement.node.clone();
        self.unplace(key);
        self.on_node.entry(node.clone()).or_default().insert(key.to_string());
        // Adding needs no rebuild: only removals do.
        if let Some(info) = self.nodes.get_mut(&node) {
            info.add_pod(&placement.pod);
        }
        self.placements.insert(key.to_string(), placement);
    }

    fn unplace(&mut self, key: &str) {
        if let Some(old) = self.placements.remove(key) {
            if let Some(keys) = self.on_node.get_mut(&old.node) {
                keys.remove(key);
            }
            self.rebuild(&old.node);
        }
    }

    /// A pod as the API shows it now.
    pub fn set_pod(&mut self, pod: Arc<Pod>) {
        let key = pod_key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let waiting = node_of(&pod).is_none() && pod.metadata.deletion_timestamp.is_none() && !is_terminal(&pod);
        self.set_nomination(&key, waiting.then_some(&pod));
        match occupies(&pod).map(str::to_string) {
            Some(node) => self.place(
                &key,
                Placement {
                    uid,
                    node,
                    pod,
                    assumed: false,
                },
            ),
            // Not bound yet: keep an assumption made for this very pod.
            None if self.placements.get(&key).is_some_and(|p| p.assumed && p.uid == uid)
                && !is_terminal(&pod)
                && pod.metadata.deletion_timestamp.is_none() => {}
            None => self.unplace(&key),
        }
    }

    pub fn remove_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        self.set_nomination(&key, None);
        self.unplace(&key);
    }

    /// Counts `pod` on `node` until the API shows it bound (or [`Cache::forget`]).
    pub fn assume(&mut self, pod: Arc<Pod>, node: &str) {
        let key = pod_key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.place(
            &key,
            Placement {
                uid,
                node: node.to_string(),
                pod,
                assumed: true,
            },
        );
    }

    /// Drops an assumption whose binding failed.
    pub fn forget(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        if self.placements.get(&key).is_some_and(|p| p.assumed) {
            self.unplace(&key);
        }
    }

    /// Every node from scratch after a re-list of nodes, with the pods known here: those
    /// on nodes and those nominated to one.
    pub fn reset_nodes(&mut self, nodes: Vec<Arc<Node>>) {
        let placed = self
            .placements
            .values()
            .filter(|p| !p.assumed)
            .map(|p| Arc::clone(&p.pod));
        let nominated = self.nominated.values().flat_map(|pods| pods.values().cloned());
        let pods = placed.chain(nominated).collect();
        self.reset(nodes, pods);
    }

    /// Every node from scratch (after a re-list).
    pub fn reset(&mut self, nodes: Vec<Arc<Node>>, pods: Vec<Arc<Pod>>) {
        let assumed: Vec<Placement> = self.placements.values().filter(|p| p.assumed).cloned().collect();
        *self = Self {
            next_start: self.next_start,
            objects: std::mem::take(&mut self.objects),
            ..Self::default()
        };
        for node in nodes {
            self.set_node(node);
        }
        for pod in pods {
            self.set_pod(pod);
        }
        for placement in assumed {
            let key = pod_key(&placement.pod);
            if !self.placements.contains_key(&key) {
                self.place(&key, placement);
            }
        }
    }

    /// A node for `pod`, searching on from where the previous search stopped; when none
    /// fits, preemption's choice of a node and victims.
    pub fn schedule(&mut self, pod: &Pod) -> Outcome {
        let nodes: Vec<&NodeInfo> = self.nodes.list.iter().collect();
        let cluster = Cluster {
            nodes: &nodes,
            objects: &self.objects,
            image_spread: &self.image_spread,
            nominated: &self.nominated,
        };
        let (result, next) = find_node(pod, cluster, self.next_start);
        self.next_start = next;
        match result {
            Ok(choice) => Outcome::Placed(choice),
            Err(mut fit) => match preempt(pod, cluster, &fit) {
                Ok(preemption) => Outcome::Preempting(fit, preemption),
                Err(message) => {
                    fit.post_filter = Some(message);
                    Outcome::Unschedulable(fit)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"}}}))
            .unwrap(),
        )
    }

    fn pod(name: &str, node: Option<&str>, phase: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                    "resources": {"requests": {"cpu": "1"}}}]},
                "status": {"phase": phase}}))
            .unwrap(),
        )
    }

    #[test]
    fn placements_follow_events_and_assumptions() {
        let mut cache = Cache::default();
        cache.set_node(node("a", "2"));
        cache.set_pod(pod("bound", Some("a"), "Running"));
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
        // Assumed: counted at once, kept while the API still shows it unbound.
        cache.assume(pod("new", None, "Pending"), "a");
        cache.set_pod(pod("new", None, "Pending"));
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 2000);
        assert!(
            matches!(
                cache.schedule(&pod("third", None, "Pending")),
                Outcome::Unschedulable(_)
            ),
            "the node is full"
        );
        // Confirmed by the API, then finished: the room comes back.
        cache.set_pod(pod("new", Some("a"), "Running"));
        cache.set_pod(pod("bound", Some("a"), "Succeeded"));
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
        assert!(matches!(cache.schedule(&pod("third", None, "Pending")), Outcome::Placed(c) if c.node == "a"));
        // A failed binding is forgotten; a node that arrives later brings its pods along.
        cache.assume(pod("x", None, "Pending"), "a");
        cache.forget(&pod("x", None, "Pending"));
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
        cache.set_pod(pod("early", Some("b"), "Running"));
        cache.set_node(node("b", "4"));
        assert_eq!(cache.nodes["b"].requested.milli_cpu, 1000);
        cache.remove_pod(&pod("early", Some("b"), "Running"));
        assert_eq!(cache.nodes["b"].requested.milli_cpu, 0);
    }

    #[test]
    fn status_updates_swap_the_pod_and_spec_changes_rebuild() {
        let mut cache = Cache::default();
        cache.set_node(node("a", "8"));
        cache.set_pod(pod("p", Some("a"), "Pending"));
        cache.set_pod(pod("q", Some("a"), "Running"));
        let running = pod("p", Some("a"), "Running");
        cache.set_pod(Arc::clone(&running));
        let info = &cache.nodes["a"];
        assert_eq!(info.pods.len(), 2);
        assert!(
            info.pods.iter().any(|p| Arc::ptr_eq(p, &running)),
            "the newer pod is held"
        );
        assert_eq!(info.requested.milli_cpu, 2000);
        // New labels: the label index must see them.
        let mut labelled = (*running).clone();
        labelled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        cache.set_pod(Arc::new(labelled));
        let selector = rkube_api::selector::LabelSelector::parse("app=web").unwrap();
        assert_eq!(
            crate::framework::count_matching(&selector, "default", &cache.nodes["a"]),
            1
        );
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 2000);
        // Bigger requests: counted anew.
        let mut bigger = (*running).clone();
        bigger.spec.as_mut().unwrap().containers[0].resources =
            serde_json::from_value(json!({"requests": {"cpu": "3"}})).unwrap();
        cache.set_pod(Arc::new(bigger));
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 4000);
        assert_eq!(cache.nodes["a"].pods.len(), 2);
    }

    #[test]
    fn a_node_relist_keeps_the_pods_on_nodes_assumed_and_nominated() {
        let mut cache = Cache::default();
        cache.set_node(node("a", "8"));
        cache.set_node(node("gone", "8"));
        cache.set_pod(pod("bound", Some("a"), "Running"));
        cache.set_pod(pod("on-gone", Some("gone"), "Running"));
        cache.assume(pod("assumed", None, "Pending"), "a");
        cache.nominate(&pod("waiting", None, "Pending"), Some("a"));
        cache.reset_nodes(vec![node("a", "8"), node("new", "8")]);
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 2000, "bound and assumed");
        assert_eq!(cache.nodes["a"].pods.len(), 2);
        assert_eq!(cache.nodes["new"].requested.milli_cpu, 0);
        assert!(cache.nominated["a"].contains_key("default/waiting"));
        // The pod of the node that went is kept and counted when the node comes back.
        cache.set_node(node("gone", "8"));
        assert_eq!(cache.nodes["gone"].requested.milli_cpu, 1000);
    }
}
