//! TaintToleration: NoSchedule and NoExecute taints keep out pods that do not tolerate
//! them; PreferNoSchedule ones count against a node in scoring.

use k8s_openapi::api::core::v1::{Pod, Taint};
use rkube_api::scheduling;

use crate::framework::{FilterResult, NodeInfo, Refusal};

pub fn tolerated(pod: &Pod, taint: &Taint) -> bool {
    pod.spec.as_ref().is_some_and(|s| scheduling::tolerated(s, taint))
}

fn taints(node: &NodeInfo) -> &[Taint] {
    node.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    if !node.flags.hard_taints {
        return Ok(());
    }
    let untolerated = taints(node)
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerated(pod, t));
    match untolerated {
        Some(taint) => Err(Refusal::Unresolvable(vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or_default()
        )])),
        None => Ok(()),
    }
}

/// 100 for a node without intolerable PreferNoSchedule taints, less for each one.
pub fn score(pod: &Pod, node: &NodeInfo) -> i64 {
    if !node.flags.soft_taints {
        return 100;
    }
    let intolerable = taints(node)
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(pod, t))
        .count() as i64;
    (100 - 20 * intolerable).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn tolerations_match_as_upstream() {
        let tainted = node(
            "a",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        let refused = filter(&pod(json!({})), &tainted).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Unresolvable(vec!["node(s) had untolerated taint {dedicated: db}".into()])
        );
        for (toleration, fits) in [
            (json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}), true),
            (json!({"key": "dedicated", "operator": "Exists"}), true),
            (json!({"operator": "Exists"}), true),
            (json!({"key": "dedicated", "value": "web"}), false),
            (json!({"key": "dedicated", "value": "db", "effect": "NoExecute"}), false),
        ] {
            let p = pod(json!({"spec": {"tolerations": [toleration.clone()]}}));
            assert_eq!(filter(&p, &tainted).is_ok(), fits, "{toleration}");
        }
        let preferred = node(
            "b",
            json!({"spec": {"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}}),
        );
        assert!(filter(&pod(json!({})), &preferred).is_ok());
        assert!(score(&pod(json!({})), &preferred) < score(&pod(json!({})), &node("c", json!({}))));
    }
}
