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
        }
    }

    pub fn add_pod(&mut self, pod: &Pod) {
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

/// The filters, in upstream's order; the first refusal decides.
pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    plugins::node_unschedulable::filter(pod, node)?;
    plugins::node_name::filter(pod, node)?;
    plugins::taint_toleration::filter(pod, node)?;
    plugins::node_affinity::filter(pod, node)?;
    plugins::node_ports::filter(pod, node)?;
    plugins::node_resources_fit::filter(pod, node)?;
    Ok(())
}

/// The weighted sum of the scores (each 0..=100), as upstream's default weights have it.
pub fn score(pod: &Pod, node: &NodeInfo) -> i64 {
    plugins::node_resources_fit::least_allocated(pod, node)
        + plugins::node_resources_fit::balanced_allocation(pod, node)
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

/// The node for `pod`: the best-scoring node that passes every filter (ties go to the
/// first in name order, for determinism).
pub fn schedule<'a>(pod: &Pod, nodes: impl IntoIterator<Item = &'a NodeInfo>) -> Result<String, FitError> {
    let mut error = FitError {
        nodes: 0,
        reasons: BTreeMap::new(),
        unresolvable: 0,
    };
    let mut best: Option<(i64, &str)> = None;
    for node in nodes {
        error.nodes += 1;
        match filter(pod, node) {
            Ok(()) => {
                let score = score(pod, node);
                if best.is_none_or(|(s, name)| score > s || (score == s && node.name.as_str() < name)) {
                    best = Some((score, &node.name));
                }
            }
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
    best.map(|(_, name)| name.to_string()).ok_or(error)
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
    fn the_emptiest_fitting_node_wins() {
        let mut busy = node("a", json!({}));
        busy.add_pod(&pod(json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "3", "memory": "8Gi"}}}]}})));
        let nodes = vec![busy, node("b", json!({})), node("c", json!({}))];
        assert_eq!(
            schedule(&pod(json!({})), &nodes).unwrap(),
            "b",
            "b and c tie; b comes first"
        );
    }
}
