//! NodeResourcesFit: the pod's requests must fit in what the node has left; scoring prefers
//! the least allocated node (LeastAllocated) and even use of cpu and memory
//! (NodeResourcesBalancedAllocation).

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{FilterResult, NodeInfo, Refusal};
use crate::resources::{pod_requests, pod_requests_non_zero};

pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    fits(&pod_requests(pod), node)
}

/// [`filter`] with the pod's requests worked out once for all nodes.
pub fn fits(want: &crate::resources::Resources, node: &NodeInfo) -> FilterResult {
    let (have, used) = (&node.allocatable, &node.requested);
    let mut reasons = Vec::new();
    if used.pods + 1 > have.pods {
        reasons.push("Too many pods".to_string());
    }
    let short = |want: i64, used: i64, have: i64| want > 0 && used + want > have;
    if short(want.milli_cpu, used.milli_cpu, have.milli_cpu) {
        reasons.push("Insufficient cpu".into());
    }
    if short(want.memory, used.memory, have.memory) {
        reasons.push("Insufficient memory".into());
    }
    if short(want.ephemeral_storage, used.ephemeral_storage, have.ephemeral_storage) {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, amount) in &want.scalar {
        let used = used.scalar.get(name).copied().unwrap_or(0);
        let have = have.scalar.get(name).copied().unwrap_or(0);
        if short(*amount, used, have) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Unschedulable(reasons))
    }
}

/// Cpu and memory in use after placing a pod that asks for `(cpu, memory)` (non-zero
/// requests), as fractions of what the node has.
fn fractions((cpu, memory): (i64, i64), node: &NodeInfo) -> (f64, f64) {
    let fraction = |used: i64, have: i64| {
        if have <= 0 {
            1.0
        } else {
            (used as f64 / have as f64).min(1.0)
        }
    };
    (
        fraction(node.non_zero.0 + cpu, node.allocatable.milli_cpu),
        fraction(node.non_zero.1 + memory, node.allocatable.memory),
    )
}

pub fn least_allocated(pod: &Pod, node: &NodeInfo) -> i64 {
    least_allocated_for(pod_requests_non_zero(pod), node)
}

pub fn least_allocated_for(non_zero: (i64, i64), node: &NodeInfo) -> i64 {
    let (cpu, memory) = fractions(non_zero, node);
    (((1.0 - cpu) + (1.0 - memory)) * 50.0) as i64
}

pub fn balanced_allocation(pod: &Pod, node: &NodeInfo) -> i64 {
    balanced_allocation_for(pod_requests_non_zero(pod), node)
}

pub fn balanced_allocation_for(non_zero: (i64, i64), node: &NodeInfo) -> i64 {
    let (cpu, memory) = fractions(non_zero, node);
    // With two resources the standard deviation is half their difference.
    ((1.0 - (cpu - memory).abs() / 2.0) * 100.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    fn asking(cpu: &str, memory: &str) -> Pod {
        pod(json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}))
    }

    #[test]
    fn requests_must_fit() {
        let mut n = node(
            "a",
            json!({"status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "2"}}}),
        );
        assert!(filter(&asking("1500m", "512Mi"), &n).is_ok());
        n.add_pod(&std::sync::Arc::new(asking("1500m", "512Mi")));
        assert_eq!(
            filter(&asking("1", "1Gi"), &n),
            Err(Refusal::Unschedulable(vec![
                "Insufficient cpu".into(),
                "Insufficient memory".into()
            ]))
        );
        n.add_pod(&std::sync::Arc::new(asking("100m", "1Mi")));
        assert_eq!(
            filter(&asking("100m", "1Mi"), &n),
            Err(Refusal::Unschedulable(vec!["Too many pods".into()]))
        );
        let init_heavy = pod(json!({"spec": {
            "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}}));
        assert_eq!(
            pod_requests(&init_heavy).milli_cpu,
            3000,
            "the larger of init and the sum"
        );
        let gpu = pod(json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"example.com/gpu": "1"}}}]}}));
        assert_eq!(
            filter(&gpu, &node("b", json!({}))),
            Err(Refusal::Unschedulable(vec!["Insufficient example.com/gpu".into()]))
        );
    }

    #[test]
    fn emptier_and_more_balanced_nodes_score_higher() {
        let empty = node("a", json!({}));
        let mut busy = node("b", json!({}));
        busy.add_pod(&std::sync::Arc::new(asking("3", "2Gi")));
        let p = asking("500m", "1Gi");
        assert!(least_allocated(&p, &empty) > least_allocated(&p, &busy));
        assert!(balanced_allocation(&p, &empty) > balanced_allocation(&p, &busy));
    }
}
