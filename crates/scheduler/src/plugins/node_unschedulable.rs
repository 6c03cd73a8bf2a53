//! NodeUnschedulable: cordoned nodes take only pods that tolerate
//! `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::{Pod, Taint};

use crate::framework::{FilterResult, NodeInfo, Refusal};
use crate::plugins::taint_toleration::tolerated;

pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    if !node.flags.cordoned {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    if !tolerated(pod, &taint) {
        return Err(Refusal::Unresolvable(vec!["node(s) were unschedulable".into()]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let cordoned = node("a", json!({"spec": {"unschedulable": true}}));
        assert!(filter(&pod(json!({})), &cordoned).is_err());
        let tolerant = pod(json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert!(filter(&tolerant, &cordoned).is_ok());
        assert!(filter(&pod(json!({})), &node("b", json!({}))).is_ok());
    }
}
