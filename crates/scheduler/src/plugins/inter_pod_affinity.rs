//! InterPodAffinity: a pod's required affinity (be in a topology domain — a node, a zone —
//! with pods matching a term) and anti-affinity (never share one with them), the
//! anti-affinity of pods already placed towards the incoming pod, and as scores: the pod's
//! preferred terms, and placed pods' required affinity (weight 1) and preferred terms
//! towards it. The domains are worked out once per decision (upstream's PreFilter and
//! PreScore), then each node is checked against them. Terms select pods in the namespaces
//! they name and in those their `namespaceSelector` matches.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use rkube_api::selector::LabelSelector;

use crate::framework::{FilterResult, NodeInfo, Refusal, labels_match, selector_of};

/// Namespace labels by namespace name.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// Upstream's `hardPodAffinityWeight`: what a placed pod's required affinity towards the
/// incoming pod adds to its domain's score.
const HARD_AFFINITY_WEIGHT: i64 = 1;

/// A term ready to match pods.
#[derive(Debug)]
pub struct Term {
    selector: LabelSelector,
    /// Namespaces the term names; the owning pod's own when it names none and has no
    /// namespace selector.
    namespaces: Vec<String>,
    /// Namespaces whose labels match count too (an empty selector: every namespace).
    namespace_selector: Option<LabelSelector>,
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
            namespace_selector: term.namespace_selector.as_ref().map(|s| selector_of(Some(s), &[])),
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    fn matches(&self, pod: &Pod, namespace_labels: &NamespaceLabels) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let in_namespace = self.namespaces.iter().any(|n| n == namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| labels_match(s, namespace_labels.get(namespace)));
        in_namespace && labels_match(&self.selector, pod.metadata.labels.as_ref())
    }
}

/// A pod's terms, parsed once (when the pod is placed, for placed pods).
#[derive(Debug, Default)]
pub struct PodTerms {
    pub required_affinity: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred_affinity: Vec<Term>,
    pub preferred_anti: Vec<Term>,
}

impl PodTerms {
    pub fn of(pod: &Pod) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let required = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            list.into_iter().flatten().map(|t| Term::new(t, namespace, 1)).collect()
        };
        let preferred = |list: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<Term> {
            list.into_iter()
                .flatten()
                .map(|w| Term::new(&w.pod_affinity_term, namespace, i64::from(w.weight)))
                .collect()
        };
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        Self {
            required_affinity: required(
                pod_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            ),
            required_anti: required(
                pod_anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            ),
            preferred_affinity: preferred(
                pod_affinity.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            ),
            preferred_anti: preferred(
                pod_anti.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            ),
        }
    }

    /// Terms parsed only for pods that have any.
    pub fn of_placed(pod: &Pod) -> Option<Self> {
        let affinity = pod.spec.as_ref()?.affinity.as_ref()?;
        if affinity.pod_affinity.is_none() && affinity.pod_anti_affinity.is_none() {
            return None;
        }
        let terms = Self::of(pod);
        (!terms.is_empty()).then_some(terms)
    }

    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// The topology domains that decide where one pod may go, and the scores of domains.
/// Topology key → the values (domains) of that key.
type Domains = HashMap<String, HashSet<String>>;

fn forbid(domains: &mut Domains, key: &str, value: &str) {
    match domains.get_mut(key) {
        Some(values) => {
            values.insert(value.to_string());
        }
        None => {
            domains.insert(key.to_string(), HashSet::from([value.to_string()]));
        }
    }
}

pub struct PreFilter {
    affinity: Vec<Term>,
    /// Per affinity term, the domain values holding a matching pod.
    affinity_domains: Vec<HashSet<String>>,
    /// No placed pod matches the affinity terms, and the pod matches them itself: the first
    /// of its group may go anywhere with the topology labels.
    first_of_group: bool,
    /// Domains (values by topology key) the pod's anti-affinity forbids.
    anti_domains: Domains,
    /// Domains (values by topology key) placed pods' anti-affinity forbids to this pod.
    existing_anti_domains: Domains,
    /// Score per topology key and value (upstream's `topologyToScore`).
    domain_scores: HashMap<String, HashMap<String, i64>>,
}

impl PreFilter {
    pub fn new(pod: &Pod, nodes: &[&NodeInfo], namespace_labels: &NamespaceLabels) -> Self {
        let own = PodTerms::of(pod);
        let mut state = Self {
            affinity_domains: vec![HashSet::new(); own.required_affinity.len()],
            first_of_group: false,
            anti_domains: Domains::new(),
            existing_anti_domains: Domains::new(),
            domain_scores: HashMap::new(),
            affinity: Vec::new(),
        };
        let mut add_score = |key: &str, value: &str, weight: i64| {
            *state
                .domain_scores
                .entry(key.to_string())
                .or_default()
                .entry(value.to_string())
                .or_default() += weight;
        };
        let own_terms = !own.is_empty();
        for node in nodes {
            // Placed pods' terms towards the incoming pod.
            for (_, theirs) in &node.pods_with_affinity {
                for term in theirs.required_anti.iter().filter(|t| t.matches(pod, namespace_labels)) {
                    if let Some(value) = node.label(&term.topology_key) {
                        forbid(&mut state.existing_anti_domains, &term.topology_key, value);
                    }
                }
                let weighted = theirs
                    .required_affinity
                    .iter()
                    .map(|t| (t, HARD_AFFINITY_WEIGHT))
                    .chain(theirs.preferred_affinity.iter().map(|t| (t, t.weight)))
                    .chain(theirs.preferred_anti.iter().map(|t| (t, -t.weight)));
                for (term, weight) in weighted {
                    if let Some(value) = node.label(&term.topology_key)
                        && term.matches(pod, namespace_labels)
                    {
                        add_score(&term.topology_key, value, weight);
                    }
                }
            }
            if !own_terms {
                continue;
            }
            // The incoming pod's terms towards placed pods.
            for placed in &node.pods {
                for (i, term) in own.required_affinity.iter().enumerate() {
                    if let Some(value) = node.label(&term.topology_key)
                        && term.matches(placed, namespace_labels)
                    {
                        state.affinity_domains[i].insert(value.to_string());
                    }
                }
                for term in &own.required_anti {
                    if let Some(value) = node.label(&term.topology_key)
                        && term.matches(placed, namespace_labels)
                    {
                        forbid(&mut state.anti_domains, &term.topology_key, value);
                    }
                }
                let weighted = own
                    .preferred_affinity
                    .iter()
                    .map(|t| (t, t.weight))
                    .chain(own.preferred_anti.iter().map(|t| (t, -t.weight)));
                for (term, weight) in weighted {
                    if let Some(value) = node.label(&term.topology_key)
                        && term.matches(placed, namespace_labels)
                    {
                        add_score(&term.topology_key, value, weight);
                    }
                }
            }
        }
        state.first_of_group = state.affinity_domains.iter().all(HashSet::is_empty)
            && own.required_affinity.iter().all(|t| t.matches(pod, namespace_labels));
        state.affinity = own.required_affinity;
        state
    }

    /// Nothing to check: no required terms of its own that matter, no placed pod's
    /// anti-affinity against it.
    pub fn is_empty(&self) -> bool {
        self.affinity.is_empty() && self.anti_domains.is_empty() && self.existing_anti_domains.is_empty()
    }

    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        // One lookup per topology key, however many domains are forbidden.
        let forbidden = |domains: &Domains| {
            domains
                .iter()
                .any(|(key, values)| node.label(key).is_some_and(|value| values.contains(value)))
        };
        // Upstream's order: the pod's affinity, its anti-affinity, then placed pods'.
        let affinity_ok = self.affinity.iter().zip(&self.affinity_domains).all(|(term, domains)| {
            node.label(&term.topology_key)
                .is_some_and(|value| self.first_of_group || domains.contains(value))
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

    /// The sum of the scores of the node's domains; normalized over the nodes by the caller.
    pub fn raw_score(&self, node: &NodeInfo) -> i64 {
        self.domain_scores
            .iter()
            .filter_map(|(key, values)| values.get(node.label(key)?))
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
        let state = PreFilter::new(&spread, &nodes, &NamespaceLabels::new());
        assert_eq!(
            state.filter(&a),
            Err(Refusal::Unschedulable(vec![
                "node(s) didn't match pod anti-affinity rules".into()
            ]))
        );
        assert!(state.filter(&b).is_ok());

        let near = pod(json!({"metadata": {"labels": {"app": "cache"}},
            "spec": {"affinity": term("podAffinity", "web", "zone")}}));
        let state = PreFilter::new(&near, &nodes, &NamespaceLabels::new());
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
        assert!(
            PreFilter::new(&first, &nodes, &NamespaceLabels::new())
                .filter(&b)
                .is_ok()
        );
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
        let state = PreFilter::new(&web, &[&a, &b, &c], &NamespaceLabels::new());
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
        let state = PreFilter::new(&p, &[&a, &b], &NamespaceLabels::new());
        assert_eq!((state.raw_score(&a), state.raw_score(&b)), (50, 0));
    }

    #[test]
    fn namespace_selectors_widen_the_terms() {
        let mut a = in_zone("a", "east");
        a.add_pod(&Arc::new(pod(
            json!({"metadata": {"name": "db", "namespace": "data", "labels": {"app": "db"}}}),
        )));
        let b = in_zone("b", "west");
        let near = |namespace_selector: serde_json::Value| {
            pod(
                json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone",
                 "namespaceSelector": namespace_selector}]}}}}),
            )
        };
        let namespaces: NamespaceLabels = [
            ("data".to_string(), [("team".to_string(), "storage".to_string())].into()),
            ("default".to_string(), BTreeMap::new()),
        ]
        .into();
        // The pod's own namespace has no db; a selector naming the team finds it.
        let by_team = near(json!({"matchLabels": {"team": "storage"}}));
        let state = PreFilter::new(&by_team, &[&a, &b], &namespaces);
        assert!(state.filter(&a).is_ok());
        assert!(state.filter(&b).is_err());
        // An empty selector means every namespace.
        assert!(
            PreFilter::new(&near(json!({})), &[&a, &b], &namespaces)
                .filter(&a)
                .is_ok()
        );
        // A selector matching no namespace finds nothing, so only the first-of-group rule
        // could apply (it does not: the pod is not a db).
        let nobody = near(json!({"matchLabels": {"team": "nobody"}}));
        assert!(PreFilter::new(&nobody, &[&a, &b], &namespaces).filter(&a).is_err());
    }

    #[test]
    fn placed_pods_terms_towards_the_incoming_pod_score() {
        let mut a = in_zone("a", "east");
        let mut b = in_zone("b", "west");
        let c = in_zone("c", "north");
        // In east, a pod that prefers web near it; in west, one that prefers web away.
        a.add_pod(&Arc::new(pod(
            json!({"metadata": {"name": "fan"}, "spec": {"affinity": {"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 30, "podAffinityTerm":
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}}]}}}}),
        )));
        b.add_pod(&Arc::new(pod(
            json!({"metadata": {"name": "hater"}, "spec": {"affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 20, "podAffinityTerm":
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}}]}}}}),
        )));
        let web = pod(json!({"metadata": {"labels": {"app": "web"}}}));
        let state = PreFilter::new(&web, &[&a, &b, &c], &NamespaceLabels::new());
        assert_eq!(
            (state.raw_score(&a), state.raw_score(&b), state.raw_score(&c)),
            (30, -20, 0)
        );
        // A placed pod's required affinity towards the pod counts with weight 1.
        let mut d = in_zone("d", "south");
        d.add_pod(&Arc::new(pod(
            json!({"metadata": {"name": "needy"}, "spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}}),
        )));
        let state = PreFilter::new(&web, &[&d, &c], &NamespaceLabels::new());
        assert_eq!((state.raw_score(&d), state.raw_score(&c)), (1, 0));
    }
}
