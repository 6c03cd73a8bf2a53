//! What controllers ask of pods: active or finished, ready or available, whose controller
//! owns them, upstream's ranking of which to delete first, and pods made from templates.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use rkube_api::selector::{LabelSelector, label_selector_text};
use serde_json::json;

/// Succeeded or Failed: its containers will not run again.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Neither finished nor being deleted.
pub fn is_active(pod: &Pod) -> bool {
    !is_finished(pod) && pod.metadata.deletion_timestamp.is_none()
}

fn ready_since(pod: &Pod) -> Option<&Time> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref())?
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|t| t.0 + SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now)
}

/// The owner reference that marks the object's controller.
pub use rkube_client::shared::controller_of;

/// A `metav1.LabelSelector`; none, or an unusable one, selects nothing.
pub fn selector(selector: Option<&MetaSelector>) -> Option<LabelSelector> {
    let text = label_selector_text(&serde_json::to_value(selector?).ok()?);
    // An empty selector would select every pod; upstream refuses it for workloads.
    if text.is_empty() {
        return None;
    }
    LabelSelector::parse(&text).ok()
}

pub fn labels_match(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector.matches_by(|key| labels.and_then(|l| l.get(key)).map(String::as_str))
}

/// Upstream's `ClaimPods`: of the `candidates` in `namespace`, the pods `owner` controls
/// that `wanted` still accepts; orphans it accepts are adopted, owned pods it no longer
/// accepts released (keeping their other owners). An owner being deleted, or a pod being
/// deleted, is adopted by or released from nothing.
pub async fn claim(
    client: &kube::Client,
    candidates: impl IntoIterator<Item = Arc<Pod>>,
    (owner, namespace, deleting): (&OwnerReference, &str, bool),
    wanted: impl Fn(&Pod) -> bool,
) -> Result<Vec<Arc<Pod>>, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut owned = Vec::new();
    for pod in candidates {
        if pod.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let accepted = wanted(&pod);
        let others: Vec<&OwnerReference> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.controller != Some(true))
            .collect();
        let patch = match controller_of(pod.as_ref()) {
            Some(c) if c.uid == owner.uid && accepted => {
                owned.push(pod);
                continue;
            }
            Some(c) if c.uid == owner.uid && !deleting => {
                json!({"metadata": {"uid": pod.metadata.uid, "ownerReferences": others}})
            }
            None if accepted && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                let mut references: Vec<&OwnerReference> = others;
                references.push(owner);
                json!({"metadata": {"uid": pod.metadata.uid, "ownerReferences": references}})
            }
            _ => continue,
        };
        match api
            .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(patched) if controller_of(&patched).is_some_and(|c| c.uid == owner.uid) => owned.push(Arc::new(patched)),
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(owned)
}

/// Upstream's `slowStartBatch`: `create(i)` for `i` in `0..count`, in batches of 1, 2, 4,
/// ..., stopping after a batch with a failure, so that a failing template fails once rather
/// than `count` times. The results of the calls made, in order.
pub async fn slow_start<T, Fut>(count: usize, create: impl Fn(usize) -> Fut) -> Vec<Result<T, kube::Error>>
where
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let (mut results, mut batch) = (Vec::with_capacity(count), 1);
    while results.len() < count {
        let start = results.len();
        let size = batch.min(count - start);
        let outcome = futures_util::future::join_all((start..start + size).map(&create)).await;
        let failed = outcome.iter().any(Result::is_err);
        results.extend(outcome);
        if failed {
            break;
        }
        batch *= 2;
    }
    results
}

/// What a controller reads back of a pod it created: the name the server gave it.
#[derive(serde::Deserialize)]
pub struct Created {
    pub metadata: CreatedMetadata,
}

#[derive(serde::Deserialize)]
pub struct CreatedMetadata {
    #[serde(default)]
    pub name: String,
}

/// Upstream's `GetPodFromTemplate`: the template's labels, annotations, finalizers and
/// spec, named after the owner, with the owner as controller.
pub fn from_template(template: &PodTemplateSpec, owner_name: &str, controller: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut pod = Pod::default();
    pod.metadata.generate_name = Some(format!("{owner_name}-"));
    pod.metadata.labels = meta.labels;
    pod.metadata.annotations = meta.annotations;
    pod.metadata.finalizers = meta.finalizers;
    pod.metadata.owner_references = Some(vec![controller]);
    pod.spec = template.spec.clone();
    pod
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

fn deletion_cost(pod: &Pod) -> i64 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

/// Upstream's `ActivePodsWithRanks` order: the pods to delete first come first. `related`
/// are the pods whose count per node ranks doubled-up pods first.
pub fn deletion_order(pods: &mut [&Pod], related: &[&Pod]) {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for pod in related {
        if let Some(node) = node(pod) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |pod: &Pod| node(pod).and_then(|n| per_node.get(n)).copied().unwrap_or(0);
    pods.sort_by(|a, b| {
        // Unassigned before assigned; Pending before Unknown before Running; not ready
        // before ready; cheaper to delete first; more crowded nodes first; ready more
        // recently first; more restarts first; newer first.
        node(a)
            .is_some()
            .cmp(&node(b).is_some())
            .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
            .then_with(|| is_ready(a).cmp(&is_ready(b)))
            .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
            .then_with(|| rank(b).cmp(&rank(a)))
            .then_with(|| match (ready_since(a), ready_since(b)) {
                (Some(x), Some(y)) => y.0.cmp(&x.0),
                _ => Ordering::Equal,
            })
            .then_with(|| restarts(b).cmp(&restarts(a)))
            .then_with(|| {
                let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                created(b).cmp(&created(a))
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                "lastTransitionTime": created}]}}))
        .unwrap()
    }

    #[test]
    fn the_least_useful_pods_are_deleted_first() {
        let pending = pod("pending", None, "Pending", false, "2026-01-01T00:00:00Z");
        let starting = pod("starting", Some("a"), "Running", false, "2026-01-01T00:00:00Z");
        let old = pod("old", Some("b"), "Running", true, "2026-01-01T00:00:00Z");
        let new = pod("new", Some("c"), "Running", true, "2026-02-01T00:00:00Z");
        let mut order = vec![&old, &new, &starting, &pending];
        deletion_order(&mut order, &[]);
        let names: Vec<_> = order.iter().map(|p| p.metadata.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["pending", "starting", "new", "old"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", Some("a"), "Running", true, "2026-01-01T00:00:00Z");
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 10, now));
        assert!(!is_available(&p, 11, now));
    }
}
