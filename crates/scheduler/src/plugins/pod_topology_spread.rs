//! PodTopologySpread: `DoNotSchedule` constraints keep the skew of matching pods between
//! topology domains within `maxSkew` (filter); `ScheduleAnyway` constraints, or the
//! system's default ones (at most 3 apart per node, 5 per zone, for pods selected by a
//! Service or controller), favour the emptier domains (score). Counting follows upstream:
//! pods of the incoming pod's namespace, not terminating, on nodes that have every
//! constraint's topology key and pass the node inclusion policies.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
use rayon::prelude::*;
use rkube_api::selector::LabelSelector;

use crate::framework::{FilterResult, Matching, NodeInfo, Objects, Refusal, labels_match, selector_of};
use crate::plugins::{node_affinity, taint_toleration};

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";
const NOT_MATCH: &str = "node(s) didn't match pod topology spread constraints";

struct Constraint {
    max_skew: i64,
    topology_key: String,
    selector: LabelSelector,
    min_domains: Option<i64>,
    /// Count only nodes that pass the pod's node affinity/selector (policy Honor).
    honor_affinity: bool,
    /// Count only nodes whose taints the pod tolerates (policy Honor).
    honor_taints: bool,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &Pod) -> Self {
        // matchLabelKeys add the pod's own values for those keys to the selector.
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let extra: Vec<(String, String)> = c
            .match_label_keys
            .iter()
            .flatten()
            .filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        Self {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            selector: selector_of(c.label_selector.as_ref(), &extra),
            min_domains: c.min_domains.map(i64::from),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    fn includes(&self, pod: &Pod, node: &NodeInfo) -> bool {
        (!self.honor_affinity || node_affinity::filter(pod, node).is_ok())
            && (!self.honor_taints || taint_toleration::filter(pod, node).is_ok())
    }
}

fn has_all_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|c| node.label(&c.topology_key).is_some())
}

fn constraints(pod: &Pod, when: &str) -> Vec<Constraint> {
    pod.spec
        .iter()
        .flat_map(|s| s.topology_spread_constraints.iter().flatten())
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| Constraint::new(c, pod))
        .collect()
}

fn has_constraints(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .is_some_and(|c| !c.is_empty())
}

/// Upstream's `DefaultSelector`: the selectors of the Services selecting the pod, and of
/// the ReplicaSet, ReplicationController or StatefulSet controlling it.
fn default_selector(pod: &Pod, objects: &Objects) -> Option<LabelSelector> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut parts: Vec<String> = objects
        .services
        .get(namespace)
        .into_iter()
        .flat_map(|services| services.values())
        .filter(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .flat_map(|selector| selector.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(owner) = owner
        && let Some(text) = objects
            .workloads
            .get(&(owner.kind.clone(), namespace.to_string(), owner.name.clone()))
        && !text.is_empty()
    {
        parts.push(text.clone());
    }
    parts.sort();
    parts.dedup();
    let selector = LabelSelector::parse(&parts.join(",")).ok()?;
    (!selector.is_empty()).then_some(selector)
}

/// The system default constraints, upstream's `systemDefaultConstraints`.
fn default_constraints(selector: LabelSelector) -> Vec<Constraint> {
    [(HOSTNAME, 3), (ZONE, 5)]
        .into_iter()
        .map(|(key, max_skew)| Constraint {
            max_skew,
            topology_key: key.into(),
            selector: selector.clone(),
            min_domains: None,
            honor_affinity: true,
            honor_taints: false,
        })
        .collect()
}

/// Matching pods per domain (a topology label's value). Hashed once per node per pod
/// while counting, so with a fast hasher: SipHash took 8 % of a busy server in the
/// TopologySpreading benchmark; foldhash's per-map random seed still keeps crafted label
/// values from colliding at will.
type DomainCounts<'a> = HashMap<&'a str, i64, foldhash::fast::RandomState>;

/// The hard constraints and the matching-pod counts per domain, over all nodes.
pub struct PreFilter<'a> {
    constraints: Vec<Constraint>,
    self_match: Vec<bool>,
    /// Per constraint, matching pods per domain (the node label values).
    counts: Vec<DomainCounts<'a>>,
    /// Per constraint, the fewest matching pods in a domain (0 below minDomains).
    min_matches: Vec<i64>,
}

/// Below this many nodes, one thread counts: the pool's hand-off costs more.
const PARALLEL_FROM: usize = 256;

/// Per constraint, the matching pods per domain of `nodes`.
fn count_domains<'a>(pod: &Pod, constraints: &[Constraint], nodes: &[&'a NodeInfo]) -> Vec<DomainCounts<'a>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let matching: Vec<Matching<'_>> = constraints
        .iter()
        .map(|c| Matching::new(&c.selector, namespace))
        .collect();
    let mut counts: Vec<DomainCounts<'a>> = vec![DomainCounts::default(); constraints.len()];
    let mut values: Vec<&'a str> = Vec::with_capacity(constraints.len());
    for node in nodes {
        // Nodes without every topology key take no part.
        values.clear();
        values.extend(constraints.iter().map_while(|c| node.label(&c.topology_key)));
        if values.len() < constraints.len() {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            if c.includes(pod, node) {
                let found = if node.pods.is_empty() {
                    0
                } else {
                    i64::try_from(matching[i].count(node)).unwrap_or(i64::MAX)
                };
                *counts[i].entry(values[i]).or_default() += found;
            }
        }
    }
    counts
}

impl<'a> PreFilter<'a> {
    pub fn new(pod: &Pod, nodes: &[&'a NodeInfo]) -> Self {
        let constraints = constraints(pod, "DoNotSchedule");
        let self_match = constraints
            .iter()
            .map(|c| labels_match(&c.selector, pod.metadata.labels.as_ref()))
            .collect();
        // Counting looks at every pod on every node: upstream parallelises it, so do we,
        // a chunk of nodes per thread, the chunks' counts added up after.
        let counts = if constraints.is_empty() {
            Vec::new()
        } else if nodes.len() < PARALLEL_FROM {
            count_domains(pod, &constraints, nodes)
        } else {
            let chunk = nodes.len().div_ceil(rayon::current_num_threads().max(1));
            nodes
                .par_chunks(chunk)
                .map(|part| count_domains(pod, &constraints, part))
                .reduce(
                    || vec![DomainCounts::default(); constraints.len()],
                    |mut total, part| {
                        for (sum, counts) in total.iter_mut().zip(part) {
                            for (domain, n) in counts {
                                *sum.entry(domain).or_default() += n;
                            }
                        }
                        total
                    },
                )
        };
        let min_matches = constraints
            .iter()
            .zip(&counts)
            .map(|(c, domains)| {
                let fewer_than_min = c
                    .min_domains
                    .is_some_and(|min| i64::try_from(domains.len()).unwrap_or(i64::MAX) < min);
                if fewer_than_min {
                    0
                } else {
                    domains.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        Self {
            constraints,
            self_match,
            counts,
            min_matches,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
    }

    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        for (i, c) in self.constraints.iter().enumerate() {
            let Some(value) = node.label(&c.topology_key) else {
                return Err(Refusal::Unresolvable(vec![format!(
                    "{NOT_MATCH} (missing required label)"
                )]));
            };
            let matching = self.counts[i].get(value).copied().unwrap_or(0);
            let skew = matching + i64::from(self.self_match[i]) - self.min_matches[i];
            if skew > c.max_skew {
                return Err(Refusal::Unschedulable(vec![NOT_MATCH.into()]));
            }
        }
        Ok(())
    }
}

/// Scores (0..=100, higher for emptier domains) of the feasible nodes, in their order.
pub fn scores(pod: &Pod, objects: &Objects, feasible: &[&NodeInfo], all: &[&NodeInfo]) -> Vec<i64> {
    let explicit = has_constraints(pod);
    let constraints = if explicit {
        constraints(pod, "ScheduleAnyway")
    } else {
        default_selector(pod, objects)
            .map(default_constraints)
            .unwrap_or_default()
    };
    if constraints.is_empty() {
        return vec![0; feasible.len()];
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let matching: Vec<Matching<'_>> = constraints
        .iter()
        .map(|c| Matching::new(&c.selector, namespace))
        .collect();
    let matching_on = |i: usize, node: &NodeInfo| i64::try_from(matching[i].count(node)).unwrap_or(i64::MAX);
    // Only the system defaults tolerate nodes without every topology key.
    let require_all = explicit;
    let ignored: HashSet<&str> = feasible
        .iter()
        .filter(|n| require_all && !has_all_keys(n, &constraints))
        .map(|n| n.name.as_str())
        .collect();
    // Domains present among the feasible nodes, counted over every node.
    let mut counts: Vec<BTreeMap<&str, i64>> = vec![BTreeMap::new(); constraints.len()];
    for node in feasible.iter().filter(|n| !ignored.contains(n.name.as_str())) {
        for (i, c) in constraints.iter().enumerate() {
            if c.topology_key != HOSTNAME {
                counts[i]
                    .entry(node.label(&c.topology_key).unwrap_or_default())
                    .or_insert(0);
            }
        }
    }
    for node in all.iter().filter(|n| !require_all || has_all_keys(n, &constraints)) {
        for (i, c) in constraints.iter().enumerate() {
            if c.topology_key == HOSTNAME || !c.includes(pod, node) {
                continue;
            }
            if let Some(count) = counts[i].get_mut(node.label(&c.topology_key).unwrap_or_default()) {
                *count += matching_on(i, node);
            }
        }
    }
    let weights: Vec<f64> = constraints
        .iter()
        .zip(&counts)
        .map(|(c, domains)| {
            let size = if c.topology_key == HOSTNAME {
                feasible.len() - ignored.len()
            } else {
                domains.len()
            };
            // Upstream's topologyNormalizingWeight: log(size + 2).
            (size as f64 + 2.0).ln()
        })
        .collect();
    let raw: Vec<Option<i64>> = feasible
        .iter()
        .map(|node| {
            if ignored.contains(node.name.as_str()) {
                return None;
            }
            let mut score = 0.0;
            for (i, c) in constraints.iter().enumerate() {
                let Some(value) = node.label(&c.topology_key) else {
                    continue;
                };
                let count = if c.topology_key == HOSTNAME {
                    matching_on(i, node)
                } else {
                    counts[i].get(value).copied().unwrap_or(0)
                };
                score += count as f64 * weights[i] + (c.max_skew - 1) as f64;
            }
            Some(score.round() as i64)
        })
        .collect();
    let present = raw.iter().flatten().copied();
    let (low, high) = (present.clone().min().unwrap_or(0), present.max().unwrap_or(0));
    raw.into_iter()
        .map(|score| match score {
            None => 0,
            Some(_) if high == 0 => 100,
            Some(s) => 100 * (high + low - s) / high,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;
    use std::sync::Arc;

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        node(name, json!({"metadata": {"labels": {ZONE: zone}}}))
    }

    fn web(name: &str) -> Arc<Pod> {
        Arc::new(pod(json!({"metadata": {"name": name, "labels": {"app": "web"}}})))
    }

    fn spread(when: &str, max_skew: i32, extra: serde_json::Value) -> Pod {
        let mut constraint = json!({"maxSkew": max_skew, "topologyKey": ZONE, "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let (Some(c), Some(e)) = (constraint.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        pod(json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [constraint]}}))
    }

    #[test]
    fn hard_constraints_keep_the_skew() {
        let mut a = zoned("a", "east");
        a.add_pod(&web("w1"));
        let b = zoned("b", "west");
        let bare = node("c", json!({}));
        let nodes = [&a, &b, &bare];
        let state = PreFilter::new(&spread("DoNotSchedule", 1, json!({})), &nodes);
        assert_eq!(state.filter(&a), Err(Refusal::Unschedulable(vec![NOT_MATCH.into()])));
        assert!(state.filter(&b).is_ok());
        assert_eq!(
            state.filter(&bare),
            Err(Refusal::Unresolvable(vec![format!(
                "{NOT_MATCH} (missing required label)"
            )]))
        );
        // maxSkew 2 allows a second pod in east.
        assert!(
            PreFilter::new(&spread("DoNotSchedule", 2, json!({})), &nodes)
                .filter(&a)
                .is_ok()
        );
        // minDomains beyond the domains there are makes the global minimum 0.
        let state = PreFilter::new(&spread("DoNotSchedule", 1, json!({"minDomains": 3})), &[&a]);
        assert_eq!(state.filter(&a), Err(Refusal::Unschedulable(vec![NOT_MATCH.into()])));
        // Other namespaces' pods do not count.
        let mut other = zoned("a", "east");
        other.add_pod(&Arc::new(pod(
            json!({"metadata": {"namespace": "other", "labels": {"app": "web"}}}),
        )));
        let state = PreFilter::new(&spread("DoNotSchedule", 1, json!({})), &[&other, &b]);
        assert!(state.filter(&other).is_ok());
    }

    #[test]
    fn node_affinity_limits_the_counted_domains_unless_ignored() {
        let mut a = zoned("a", "east");
        a.add_pod(&web("w1"));
        let b = node("b", json!({"metadata": {"labels": {ZONE: "west", "disk": "hdd"}}}));
        let mut honoring = spread("DoNotSchedule", 1, json!({}));
        if let Some(spec) = honoring.spec.as_mut() {
            spec.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        }
        let a_ssd = node("a", json!({"metadata": {"labels": {ZONE: "east", "disk": "ssd"}}}));
        let mut a_ssd = a_ssd;
        a_ssd.add_pod(&web("w1"));
        // West does not pass the selector, so east's one pod is the minimum: skew 1 is fine.
        assert!(PreFilter::new(&honoring, &[&a_ssd, &b]).filter(&a_ssd).is_ok());
        let ignoring = spread("DoNotSchedule", 1, json!({"nodeAffinityPolicy": "Ignore"}));
        assert!(PreFilter::new(&ignoring, &[&a, &b]).filter(&a).is_err());
    }

    #[test]
    fn soft_constraints_favour_the_emptier_zone() {
        let mut a = zoned("a", "east");
        a.add_pod(&web("w1"));
        a.add_pod(&web("w2"));
        let b = zoned("b", "west");
        let nodes = [&a, &b];
        let scores = scores(
            &spread("ScheduleAnyway", 1, json!({})),
            &Objects::default(),
            &nodes,
            &nodes,
        );
        assert_eq!(scores, vec![0, 100]);
    }

    #[test]
    fn system_defaults_apply_to_pods_a_service_selects() {
        let mut a = zoned("a", "east");
        for i in 0..4 {
            a.add_pod(&web(&format!("w{i}")));
        }
        let b = zoned("b", "west");
        let nodes = [&a, &b];
        let plain = pod(json!({"metadata": {"labels": {"app": "web"}}}));
        assert_eq!(scores(&plain, &Objects::default(), &nodes, &nodes), vec![0, 0]);
        let mut objects = Objects::default();
        objects.services.insert(
            "default".into(),
            [("web".to_string(), [("app".to_string(), "web".to_string())].into())].into(),
        );
        let with_service = scores(&plain, &objects, &nodes, &nodes);
        assert!(with_service[1] > with_service[0], "{with_service:?}");
    }
}
