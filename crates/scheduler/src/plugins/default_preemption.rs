//! DefaultPreemption (PostFilter): when a pod fits nowhere, find a node where evicting
//! lower-priority pods would make it fit, evicting as few and as unimportant pods as
//! possible and sparing those a PodDisruptionBudget protects, then choose among such nodes
//! as upstream does. The pod is nominated to that node (`status.nominatedNodeName`) and
//! the victims are deleted by the caller.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{Cluster, Decision, FitError, NodeInfo, histogram_message, priority, selector_of};

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// What preemption decided.
#[derive(Debug, Clone)]
pub struct Preemption {
    pub node: String,
    /// Pods to evict, most important first.
    pub victims: Vec<Arc<Pod>>,
    /// Lower-priority pods nominated to the same node, which lose their nomination.
    pub displaced: Vec<Arc<Pod>>,
}

/// A node where preemption works, and at what cost.
struct Candidate<'a> {
    node: &'a NodeInfo,
    victims: Vec<Arc<Pod>>,
    budget_violations: usize,
}

fn start_time(pod: &Pod) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    pod.status.as_ref().and_then(|s| s.start_time.as_ref())
}

/// Upstream's `MoreImportantPod`: higher priority, then the one running longer.
fn more_important(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    priority(b)
        .cmp(&priority(a))
        .then_with(|| match (start_time(a), start_time(b)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
}

/// Splits pods into those whose eviction would exceed a disruption budget and the rest.
fn split_by_budgets(pods: Vec<Arc<Pod>>, cluster: Cluster<'_>) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let budgets: Vec<_> = cluster.objects.budgets.values().collect();
    let mut allowed: Vec<i32> = budgets
        .iter()
        .map(|b| b.status.as_ref().map_or(0, |s| s.disruptions_allowed))
        .collect();
    let (mut violating, mut other) = (Vec::new(), Vec::new());
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut violated = false;
        for (i, budget) in budgets.iter().enumerate() {
            let selector = budget.spec.as_ref().and_then(|s| s.selector.as_ref());
            let empty = selector.is_none_or(|s| s.match_labels.is_none() && s.match_expressions.is_none());
            let already_disrupted = budget
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(pod.metadata.name.as_deref().unwrap_or_default()));
            if labels.is_empty()
                || budget.metadata.namespace != pod.metadata.namespace
                || empty
                || already_disrupted
                || !selector_of(selector, &[]).matches(&labels)
            {
                continue;
            }
            allowed[i] -= 1;
            violated |= allowed[i] < 0;
        }
        if violated {
            violating.push(pod);
        } else {
            other.push(pod);
        }
    }
    (violating, other)
}

/// Upstream's `SelectVictimsOnNode`: remove every lower-priority pod; if the pod then fits,
/// put back as many as possible, most important first, budget-protected ones before others.
fn select_victims<'a>(decision: &Decision<'_>, node: &'a NodeInfo) -> Result<Candidate<'a>, String> {
    let pod = decision.pod;
    let mut potential: Vec<Arc<Pod>> = node
        .pods
        .iter()
        .filter(|p| priority(p) < priority(pod))
        .cloned()
        .collect();
    if potential.is_empty() {
        return Err(NO_VICTIMS.into());
    }
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let mut removed: HashSet<String> = potential.iter().map(|p| uid(p)).collect();
    let check = |removed: &HashSet<String>| {
        let uids: HashSet<&str> = removed.iter().map(String::as_str).collect();
        decision.filter_changed(&node.without(&uids))
    };
    if let Err(refusal) = check(&removed) {
        let (crate::framework::Refusal::Unschedulable(reasons) | crate::framework::Refusal::Unresolvable(reasons)) =
            refusal;
        return Err(reasons.join(", "));
    }
    potential.sort_by(|a, b| more_important(a, b));
    let (violating, other) = split_by_budgets(potential, decision.cluster);
    let mut victims = Vec::new();
    let mut budget_violations = 0;
    for (protected, pod) in violating
        .into_iter()
        .map(|p| (true, p))
        .chain(other.into_iter().map(|p| (false, p)))
    {
        removed.remove(&uid(&pod));
        if check(&removed).is_err() {
            removed.insert(uid(&pod));
            budget_violations += usize::from(protected);
            victims.push(pod);
        }
    }
    victims.sort_by(|a, b| more_important(a, b));
    Ok(Candidate {
        node,
        victims,
        budget_violations,
    })
}

/// Upstream's `pickOneNodeForPreemption`, criterion by criterion.
fn pick<'a>(candidates: Vec<Candidate<'a>>) -> Option<Candidate<'a>> {
    let highest = |c: &Candidate<'_>| c.victims.first().map_or(i32::MIN, |p| priority(p));
    let sum = |c: &Candidate<'_>| -> i64 {
        c.victims
            .iter()
            .map(|p| i64::from(priority(p)) + i64::from(i32::MAX) + 1)
            .sum()
    };
    // The earliest start among the highest-priority victims; later is better.
    let earliest = |c: &Candidate<'_>| {
        let top = highest(c);
        c.victims
            .iter()
            .filter(|p| priority(p) == top)
            .filter_map(|p| start_time(p).map(|t| t.0))
            .min()
    };
    let mut remaining = candidates;
    if let Some(free) = remaining.iter().position(|c| c.victims.is_empty()) {
        return Some(remaining.swap_remove(free));
    }
    fn keep_min<'a, K: Ord>(list: Vec<Candidate<'a>>, key: impl Fn(&Candidate<'a>) -> K) -> Vec<Candidate<'a>> {
        let Some(best) = list.iter().map(&key).min() else {
            return list;
        };
        list.into_iter().filter(|c| key(c) == best).collect()
    }
    remaining = keep_min(remaining, |c| c.budget_violations);
    remaining = keep_min(remaining, highest);
    remaining = keep_min(remaining, sum);
    remaining = keep_min(remaining, |c| c.victims.len());
    remaining = keep_min(remaining, |c| std::cmp::Reverse(earliest(c)));
    remaining.into_iter().next()
}

/// A node to nominate and the pods to evict there, or why there is none (upstream's
/// PostFilter message, `preemption: ...`).
pub fn preempt(pod: &Pod, cluster: Cluster<'_>, fit: &FitError) -> Result<Preemption, String> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let nominated = pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref());
    if let Some(node) = nominated.and_then(|name| cluster.nodes.iter().find(|n| n.name == name)) {
        let terminating = node
            .pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some() && priority(p) < priority(pod));
        if terminating {
            return Err("preemption: not eligible due to a terminating pod on the nominated node.".into());
        }
    }
    let total = cluster.nodes.len();
    let unhelpful = |count: usize| format!("preemption: 0/{total} nodes are available: {count} {NOT_HELPFUL}.");
    if fit.resolvable.is_empty() {
        return Err(unhelpful(total));
    }
    let decision = Decision::new(pod, cluster).map_err(|_| unhelpful(total))?;
    let candidate_nodes: HashSet<&str> = fit.resolvable.iter().map(String::as_str).collect();
    let mut candidates = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for node in cluster
        .nodes
        .iter()
        .filter(|n| candidate_nodes.contains(n.name.as_str()))
    {
        match select_victims(&decision, node) {
            Ok(candidate) => candidates.push(candidate),
            Err(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    let Some(chosen) = pick(candidates) else {
        let absent = total - candidate_nodes.len();
        if absent > 0 {
            *reasons.entry(NOT_HELPFUL.into()).or_default() += absent;
        }
        return Err(format!("preemption: {}", histogram_message(total, &reasons)));
    };
    let displaced = cluster
        .nominated
        .get(&chosen.node.name)
        .into_iter()
        .flat_map(BTreeMap::values)
        .filter(|p| priority(p) < priority(pod))
        .cloned()
        .collect();
    Ok(Preemption {
        node: chosen.node.name.clone(),
        victims: chosen.victims,
        displaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use crate::framework::{Objects, find_node};
    use serde_json::{Value, json};
    use std::collections::HashMap;

    fn running(name: &str, priority: i32, cpu: &str, start: &str) -> Arc<Pod> {
        Arc::new(pod(
            json!({"metadata": {"name": name, "uid": name, "labels": {"app": name}},
            "spec": {"priority": priority, "containers": [{"name": "c", "image": "x",
                "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"startTime": start}}),
        ))
    }

    fn incoming(priority: i32, cpu: &str, extra: Value) -> Pod {
        let mut p = pod(json!({"metadata": {"name": "vip", "uid": "vip"},
            "spec": {"priority": priority, "containers": [{"name": "c", "image": "x",
                "resources": {"requests": {"cpu": cpu}}}]}}));
        if let Some(policy) = extra.get("preemptionPolicy").and_then(Value::as_str)
            && let Some(spec) = p.spec.as_mut()
        {
            spec.preemption_policy = Some(policy.into());
        }
        p
    }

    fn run(p: &Pod, nodes: &[NodeInfo], objects: &Objects) -> Result<Preemption, String> {
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let (spread, nominated) = (HashMap::new(), HashMap::new());
        let cluster = Cluster {
            nodes: &refs,
            objects,
            image_spread: &spread,
            nominated: &nominated,
        };
        let fit = find_node(p, cluster, 0).0.unwrap_err();
        preempt(p, cluster, &fit)
    }

    const EARLY: &str = "2026-01-01T00:00:00Z";
    const LATE: &str = "2026-06-01T00:00:00Z";

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        // a: two low-priority pods, one enough to evict; b: one medium-priority pod.
        let mut a = node("a", json!({}));
        a.add_pod(&running("low-1", 1, "2", EARLY));
        a.add_pod(&running("low-2", 2, "2", EARLY));
        let mut b = node("b", json!({}));
        b.add_pod(&running("mid", 50, "4", EARLY));
        let chosen = run(&incoming(100, "2", json!({})), &[a, b], &Objects::default()).unwrap();
        assert_eq!(chosen.node, "a", "a's highest victim (1) is below b's (50)");
        let names: Vec<_> = chosen
            .victims
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["low-1"], "low-2 is more important and reprieved");
    }

    #[test]
    fn ties_go_to_the_node_whose_victims_started_last() {
        let mut a = node("a", json!({}));
        a.add_pod(&running("old", 1, "4", EARLY));
        let mut b = node("b", json!({}));
        b.add_pod(&running("new", 1, "4", LATE));
        let chosen = run(&incoming(100, "2", json!({})), &[a, b], &Objects::default()).unwrap();
        assert_eq!(chosen.node, "b");
    }

    #[test]
    fn disruption_budgets_steer_the_choice() {
        let mut a = node("a", json!({}));
        a.add_pod(&running("guarded", 1, "4", LATE));
        let mut b = node("b", json!({}));
        b.add_pod(&running("free", 1, "4", EARLY));
        let mut objects = Objects::default();
        objects.budgets.insert(
            ("default".into(), "pdb".into()),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "pdb", "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"app": "guarded"}}},
                    "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
                .unwrap(),
            ),
        );
        let chosen = run(&incoming(100, "2", json!({})), &[a, b], &objects).unwrap();
        assert_eq!(chosen.node, "b", "evicting 'guarded' would break its budget");
    }

    #[test]
    fn messages_when_preemption_cannot_help() {
        let mut a = node("a", json!({}));
        a.add_pod(&running("peer", 100, "4", EARLY));
        let tainted = node(
            "b",
            json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
        );
        let mut small = node("c", json!({"status": {"allocatable": {"cpu": "1"}}}));
        small.add_pod(&running("tiny", 1, "1", EARLY));
        let nodes = [a, tainted, small];
        assert_eq!(
            run(&incoming(100, "2", json!({})), &nodes, &Objects::default()).unwrap_err(),
            "preemption: 0/3 nodes are available: 1 Insufficient cpu, 1 No preemption victims found for incoming pod, \
             1 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            run(
                &incoming(100, "2", json!({"preemptionPolicy": "Never"})),
                &nodes,
                &Objects::default()
            )
            .unwrap_err(),
            "preemption: not eligible due to preemptionPolicy=Never."
        );
    }
}
