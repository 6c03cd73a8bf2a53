//! The scheduling framework as plain data and pure functions: a snapshot of nodes with the
//! pods on them, filter plugins that say why a node cannot take a pod, score plugins that
//! rank the rest, and upstream's wording of a failure.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::plugins;
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
    /// Those of them with required anti-affinity, which every decision must check.
    pub pods_with_anti_affinity: Vec<Arc<Pod>>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            allocatable: allocatable(&node),
            node,
            requested: Resources::default(),
            non_zero: (0, 0),
            used_ports: HashSet::new(),
            pods: Vec::new(),
            pods_with_anti_affinity: Vec::new(),
        }
    }

    pub fn add_pod(&mut self, pod: &Arc<Pod>) {
        self.pods.push(Arc::clone(pod));
        let anti = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .is_some_and(|terms| !terms.is_empty());
        if anti {
            self.pods_with_anti_affinity.push(Arc::clone(pod));
        }
        self.requested.add(&pod_requests(pod));
        let (cpu, memory) = pod_requests_non_zero(pod);
        self.non_zero.0 += cpu;
        self.non_zero.1 += memory;
        self.used_ports.extend(plugins::node_ports::host_ports(pod));
    }
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

/// The filters, in upstream's order; the first refusal decides.
pub fn filter(
    pod: &Pod,
    wanted: &Wanted,
    affinity: &plugins::inter_pod_affinity::PreFilter,
    node: &NodeInfo,
) -> FilterResult {
    plugins::node_unschedulable::filter(pod, node)?;
    plugins::node_name::filter(pod, node)?;
    plugins::taint_toleration::filter(pod, node)?;
    plugins::node_affinity::filter(pod, node)?;
    plugins::node_ports::filter(pod, node)?;
    plugins::node_resources_fit::fits(&wanted.requests, node)?;
    affinity.filter(node)?;
    Ok(())
}

/// The weighted sum of the scores (each 0..=100), as upstream's default weights have it.
pub fn score(pod: &Pod, wanted: &Wanted, node: &NodeInfo) -> i64 {
    plugins::node_resources_fit::least_allocated_for(wanted.non_zero, node)
        + plugins::node_resources_fit::balanced_allocation_for(wanted.non_zero, node)
        + 3 * plugins::taint_toleration::score(pod, node)
        + 2 * plugins::node_affinity::score(pod, node)
}

/// Why a pod fits no node, worded as upstream's scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    /// How many nodes gave each reason.
    pub reasons: BTreeMap<String, usize>,
    /// Nodes refused for reasons preemption cannot fix.
    pub unresolvable: usize,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut reasons: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        reasons.sort();
        write!(f, "0/{} nodes are available: {}.", self.nodes, reasons.join(", "))?;
        // No lower-priority pods are evicted (yet), so preemption finds no victims where
        // it could help at all.
        let mut preemption = Vec::new();
        if self.unresolvable > 0 {
            preemption.push(format!(
                "{} Preemption is not helpful for scheduling",
                self.unresolvable
            ));
        }
        let resolvable = self.nodes - self.unresolvable;
        if resolvable > 0 {
            preemption.push(format!("{resolvable} No preemption victims found for incoming pod"));
        }
        preemption.sort();
        write!(
            f,
            " preemption: 0/{} nodes are available: {}.",
            self.nodes,
            preemption.join(", ")
        )
    }
}

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

/// The node for `pod`: the best-scoring of the first feasible nodes found searching from
/// `start` (ties go to the first in name order); also where the next search starts, so
/// successive pods spread their search over the cluster as upstream's do.
pub fn find_node(pod: &Pod, nodes: &[&NodeInfo], start: usize) -> (Result<String, FitError>, usize) {
    let total = nodes.len();
    let mut error = FitError {
        nodes: total,
        reasons: BTreeMap::new(),
        unresolvable: 0,
    };
    let wanted = feasible_nodes_to_find(total);
    let asks = Wanted::of(pod);
    let affinity = plugins::inter_pod_affinity::PreFilter::new(pod, nodes);
    let mut feasible = Vec::new();
    let mut searched = 0;
    for offset in 0..total {
        if feasible.len() >= wanted {
            break;
        }
        searched += 1;
        let node = nodes[(start + offset) % total];
        match filter(pod, &asks, &affinity, node) {
            Ok(()) => feasible.push(node),
            Err(refusal) => {
                let reasons = match refusal {
                    Refusal::Unschedulable(reasons) => reasons,
                    Refusal::Unresolvable(reasons) => {
                        error.unresolvable += 1;
                        reasons
                    }
                };
                for reason in reasons {
                    *error.reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    let next = if total == 0 { 0 } else { (start + searched) % total };
    // InterPodAffinity's scores are normalized over the feasible nodes, as upstream's are.
    let raw: Vec<i64> = feasible.iter().map(|node| affinity.raw_score(node)).collect();
    let (low, high) = (
        raw.iter().copied().min().unwrap_or(0),
        raw.iter().copied().max().unwrap_or(0),
    );
    let best = feasible
        .into_iter()
        .zip(raw)
        .map(|(node, raw)| {
            let normalized = if high > low {
                (raw - low) * 100 / (high - low)
            } else {
                0
            };
            (score(pod, &asks, node) + 2 * normalized, node)
        })
        .max_by(|(a, x), (b, y)| a.cmp(b).then_with(|| y.name.cmp(&x.name)));
    (best.map(|(_, node)| node.name.clone()).ok_or(error), next)
}

/// [`find_node`] over every node, searching from the first.
pub fn schedule(pod: &Pod, nodes: &[NodeInfo]) -> Result<String, FitError> {
    let nodes: Vec<&NodeInfo> = nodes.iter().collect();
    find_node(pod, &nodes, 0).0
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
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let (chosen, next) = find_node(&pod(json!({})), &refs, 990);
        assert_eq!(next, (990 + feasible_nodes_to_find(1000)) % 1000);
        assert!(chosen.is_ok());
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
