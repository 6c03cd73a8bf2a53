//! InterPodAffinity: a pod's required affinity (be in a topology domain — a node, a zone —
//! with pods matching a term) and anti-affinity (never share one with them), the
//! anti-affinity of pods already placed towards the incoming pod, and preferred terms as
//! scores. The domains are worked out once per decision (upstream's PreFilter), then each
//! node is checked against them.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use rkube_api::selector::LabelSelector;

use crate::framework::{FilterResult, NodeInfo, Refusal, labels_match, selector_of};

/// A term ready to match pods.
struct Term {
    selector: LabelSelector,
    /// Namespaces whose pods count; the owning pod's own when the term names none.
    namespaces: Vec<String>,
    topology_key: String,
    weight: i64,
}

impl Term {
    fn new(term: &PodAffinityTerm, owner_namespace: &str, weight: i64) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(owner_namespace.to_string());
        }
        Self {
            selector: selector_of(term.label_selector.as_ref(), &[]),
            namespaces,
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    fn matches(&self, pod: &Pod) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        // An empty namespace list with a namespaceSelector means all namespaces here
        // (namespace labels are not consulted yet).
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && labels_match(&self.selector, pod.metadata.labels.as_ref())
    }
}

fn label<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a str> {
    node.node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn terms(pod: &Pod) -> (Vec<Term>, Vec<Term>, Vec<Term>, Vec<Term>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let required = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
        list.into_iter().flatten().map(|t| Term::new(t, namespace, 1)).collect()
    };
    let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
    let pod_anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
    let preferred = |list: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| -> Vec<Term> {
        list.into_iter()
            .flatten()
            .map(|w| Term::new(&w.pod_affinity_term, namespace, i64::from(w.weight)))
            .collect()
    };
    (
        required(pod_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
        required(pod_anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
        preferred(pod_affinity.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())),
        preferred(pod_anti.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())),
    )
}

/// The topology domains that decide where one pod may go.
pub struct PreFilter {
    affinity: Vec<Term>,
    /// Per affinity term, the domain values holding a matching pod.
    affinity_domains: Vec<HashSet<String>>,
    /// No placed pod matches the affinity terms, and the pod matches them itself: the first
    /// of its group may go anywhere with the topology labels.
    first_of_group: bool,
    /// (topology key, value) domains the pod's anti-affinity forbids.
    anti_domains: HashSet<(String, String)>,
    /// (topology key, value) domains placed pods' anti-affinity forbids to this pod.
    existing_anti_domains: HashSet<(String, String)>,
    preferred: Vec<(Term, i64)>,
    /// Matching placed pods per (topology key, value), for each preferred term.
    preferred_counts: Vec<BTreeMap<String, i64>>,
}

impl PreFilter {
    pub fn new(pod: &Pod, nodes: &[&NodeInfo]) -> Self {
        let (affinity, anti, preferred_affinity, preferred_anti) = terms(pod);
        let preferred: Vec<(Term, i64)> = preferred_affinity
            .into_iter()
            .map(|t| (t, 1))
            .chain(preferred_anti.into_iter().map(|t| (t, -1)))
            .collect();
        let mut state = Self {
            affinity_domains: vec![HashSet::new(); affinity.len()],
            first_of_group: false,
            anti_domains: HashSet::new(),
            existing_anti_domains: HashSet::new(),
            preferred_counts: vec![BTreeMap::new(); preferred.len()],
            affinity,
            preferred,
        };
        let own_terms = !state.affinity.is_empty() || !anti.is_empty() || !state.preferred.is_empty();
        for node in nodes {
            // Placed pods whose required anti-affinity selects the incoming pod.
            for placed in &node.pods_with_anti_affinity {
                let (_, their_anti, _, _) = terms(placed);
                for term in their_anti.iter().filter(|t| t.matches(pod)) {
                    if let Some(value) = label(node, &term.topology_key) {
                        state
                            .existing_anti_domains
                            .insert((term.topology_key.clone(), value.to_string()));
                    }
                }
            }
            if !own_terms {
                continue;
            }
            for placed in &node.pods {
                for (i, term) in state.affinity.iter().enumerate() {
                    if term.matches(placed)
                        && let Some(value) = label(node, &term.topology_key)
                    {
                        state.affinity_domains[i].insert(value.to_string());
                    }
                }
                for term in anti.iter().filter(|t| t.matches(placed)) {
                    if let Some(value) = label(node, &term.topology_key) {
                        state
                            .anti_domains
                            .insert((term.topology_key.clone(), value.to_string()));
                    }
                }
                for (i, (term, _)) in state.preferred.iter().enumerate() {
                    if term.matches(placed)
                        && let Some(value) = label(node, &term.topology_key)
                    {
                        *state.preferred_counts[i].entry(value.to_string()).or_default() += 1;
                    }
                }
            }
        }
        state.first_of_group =
            state.affinity_domains.iter().all(HashSet::is_empty) && state.affinity.iter().all(|t| t.matches(pod));
        state
    }

    /// Nothing to check: no required terms of its own that matter, no placed pod's
    /// anti-affinity against it.
    pub fn is_empty(&self) -> bool {
        self.affinity.is_empty() && self.anti_domains.is_empty() && self.existing_anti_domains.is_empty()
    }

    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        let forbidden = |domains: &HashSet<(String, String)>| {
            domains
                .iter()
                .any(|(key, value)| label(node, key) == Some(value.as_str()))
        };
        // Upstream's order: the pod's affinity, its anti-affinity, then placed pods'.
        let affinity_ok = self.affinity.iter().zip(&self.affinity_domains).all(|(term, domains)| {
            label(node, &term.topology_key).is_some_and(|value| self.first_of_group || domains.contains(value))
        });
        if !affinity_ok {
            return Err(Refusal::Unresolvable(vec![
                "node(s) didn't match pod affinity rules".into(),
            ]));
        }
        if forbidden(&self.anti_domains) {
            return Err(Refusal::Unschedulable(vec![
                "node(s) didn't match pod anti-affinity rules".into(),
            ]));
        }
        if forbidden(&self.existing_anti_domains) {
            return Err(Refusal::Unschedulable(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into(),
            ]));
        }
        Ok(())
    }

    /// Preferred affinity weights times matching pods in the node's domains, minus the
    /// same for preferred anti-affinity; normalized over the nodes by the caller.
    pub fn raw_score(&self, node: &NodeInfo) -> i64 {
        self.preferred
            .iter()
            .zip(&self.preferred_counts)
            .map(|((term, sign), counts)| {
                let count = label(node, &term.topology_key).and_then(|v| counts.get(v)).copied();
                sign * term.weight * count.unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;
    use std::sync::Arc;

    fn in_zone(name: &str, zone: &str) -> NodeInfo {
        node(name, json!({"metadata": {"labels": {"zone": zone}}}))
    }

    fn labelled(name: &str, app: &str) -> Arc<Pod> {
        Arc::new(pod(json!({"metadata": {"name": name, "labels": {"app": app}}})))
    }

    fn term(kind: &str, app: &str, key: &str) -> serde_json::Value {
        json!({kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}})
    }

    #[test]
    fn anti_affinity_spreads_and_affinity_gathers() {
        let mut a = in_zone("a", "east");
        let b = in_zone("b", "west");
        a.add_pod(&labelled("web-1", "web"));
        let nodes = [&a, &b];

        let spread = pod(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"affinity": term("podAntiAffinity", "web", "kubernetes.io/hostname")}}));
        let state = PreFilter::new(&spread, &nodes);
        assert_eq!(
            state.filter(&a),
            Err(Refusal::Unschedulable(vec![
                "node(s) didn't match pod anti-affinity rules".into()
            ]))
        );
        assert!(state.filter(&b).is_ok());

        let near = pod(json!({"metadata": {"labels": {"app": "cache"}},
            "spec": {"affinity": term("podAffinity", "web", "zone")}}));
        let state = PreFilter::new(&near, &nodes);
        assert!(state.filter(&a).is_ok());
        assert_eq!(
            state.filter(&b),
            Err(Refusal::Unresolvable(vec![
                "node(s) didn't match pod affinity rules".into()
            ]))
        );

        // The first pod of a group that selects itself may go anywhere.
        let first = pod(json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"affinity": term("podAffinity", "db", "zone")}}));
        assert!(PreFilter::new(&first, &nodes).filter(&b).is_ok());
    }

    #[test]
    fn placed_pods_keep_others_away() {
        let mut a = in_zone("a", "east");
        let loner = Arc::new(pod(json!({"metadata": {"name": "loner", "labels": {"app": "loner"}},
            "spec": {"affinity": term("podAntiAffinity", "web", "zone")}})));
        a.add_pod(&loner);
        let b = in_zone("b", "east");
        let c = in_zone("c", "west");
        let web = pod(json!({"metadata": {"labels": {"app": "web"}}}));
        let state = PreFilter::new(&web, &[&a, &b, &c]);
        for blocked in [&a, &b] {
            assert_eq!(
                state.filter(blocked),
                Err(Refusal::Unschedulable(vec![
                    "node(s) didn't satisfy existing pods anti-affinity rules".into()
                ]))
            );
        }
        assert!(state.filter(&c).is_ok());
    }

    #[test]
    fn preferred_terms_score_domains() {
        let mut a = in_zone("a", "east");
        a.add_pod(&labelled("web-1", "web"));
        let b = in_zone("b", "west");
        let p = pod(
            json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}}]}}}}),
        );
        let state = PreFilter::new(&p, &[&a, &b]);
        assert_eq!((state.raw_score(&a), state.raw_score(&b)), (50, 0));
    }
}
