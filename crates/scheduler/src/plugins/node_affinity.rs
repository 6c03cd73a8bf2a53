//! NodeAffinity: `nodeSelector` and required node affinity must match the node's labels
//! (and name, for `matchFields`); preferred terms add their weights to the score.

use k8s_openapi::api::core::v1::{NodeSelector, Pod};
use rkube_api::scheduling;

use crate::framework::{FilterResult, NodeInfo, Refusal};

/// A node selector (required node affinity, a volume's node affinity) matches when any of
/// its terms does.
pub fn node_selector_matches(selector: &NodeSelector, node: &NodeInfo) -> bool {
    scheduling::node_selector_matches(selector, &node.node)
}

pub fn filter(pod: &Pod, node: &NodeInfo) -> FilterResult {
    let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
    if scheduling::node_accepts(spec, &node.node) {
        Ok(())
    } else {
        Err(Refusal::Unresolvable(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]))
    }
}

/// The weights of the preferred terms the node matches, capped at 100.
pub fn score(pod: &Pod, node: &NodeInfo) -> i64 {
    let preferred = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default();
    let total: i64 = preferred
        .iter()
        .filter(|p| scheduling::term_matches(&p.preference, &node.node))
        .map(|p| i64::from(p.weight))
        .sum();
    total.min(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn selectors_and_required_terms() {
        let dmz = node("a", json!({"metadata": {"labels": {"zone": "dmz", "gen": "5"}}}));
        let lan = node("b", json!({"metadata": {"labels": {"zone": "lan"}}}));
        let selecting = pod(json!({"spec": {"nodeSelector": {"zone": "dmz"}}}));
        assert!(filter(&selecting, &dmz).is_ok());
        assert_eq!(
            filter(&selecting, &lan),
            Err(Refusal::Unresolvable(vec![
                "node(s) didn't match Pod's node affinity/selector".into()
            ]))
        );
        let required = |term: serde_json::Value| {
            pod(
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [term]}}}}}),
            )
        };
        for (term, on_dmz, on_lan) in [
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["dmz", "x"]}]}),
                true,
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["dmz"]}]}),
                false,
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "gen", "operator": "Exists"}]}),
                true,
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "gen", "operator": "DoesNotExist"}]}),
                false,
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}),
                true,
                false,
            ),
            (
                json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}),
                false,
                true,
            ),
            (json!({}), false, false),
        ] {
            let p = required(term.clone());
            assert_eq!(
                (filter(&p, &dmz).is_ok(), filter(&p, &lan).is_ok()),
                (on_dmz, on_lan),
                "{term}"
            );
        }
        let preferring = pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 30, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["lan"]}]}}]}}}}),
        );
        assert_eq!((score(&preferring, &dmz), score(&preferring, &lan)), (0, 30));
    }
}
