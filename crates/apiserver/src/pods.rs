//! Pod subresources: binding (how the scheduler places a pod), eviction (delete within
//! the pod's disruption budgets), and the streaming ones, which need a node agent.

use http::{Method, Response, StatusCode};
use rkube_api::selector::LabelSelector;
use rkube_api::{ResourceInfo, find};
use serde_json::{Value, json};

use crate::State;
use crate::object::{bad_request, check_name_matches, conflict, labels, meta_str};
use crate::query::Query;
use crate::response::{ApiError, Body, json as json_response};
use crate::rest::{self, DeleteOptions};

pub(crate) async fn handle(
    state: &State,
    (info, ns, name): (&ResourceInfo, &str, &str),
    subresource: &str,
    method: &Method,
    body: &[u8],
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    match (subresource, method) {
        ("binding", &Method::POST) => bind(state, (info, ns, name), body, query).await,
        ("eviction", &Method::POST) => evict(state, (info, ns, name), body, query).await,
        ("log" | "exec" | "attach" | "portforward", &Method::GET | &Method::POST) => {
            let pod = rest::get_object(state, info, Some(ns), name).await?;
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node.is_empty() {
                return Err(bad_request(format!("pod {name} does not have a host assigned")));
            }
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("pods/{subresource} needs the node agent on node {node:?}, and this rkube has none yet"),
            ))
        }
        (_, method) => Err(ApiError::method_not_allowed(method)),
    }
}

/// `POST pods/<name>/binding`: sets the node of a pod that has none.
async fn bind(
    state: &State,
    (info, ns, name): (&ResourceInfo, &str, &str),
    body: &[u8],
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let binding: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("couldn't decode the Binding: {e}")))?;
    check_name_matches(&binding, name)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = binding
        .pointer("/target/kind")
        .and_then(Value::as_str)
        .unwrap_or("Node");
    if node.is_empty() || !(kind.is_empty() || kind == "Node") {
        let binding_info = find("", "v1", "pods").unwrap_or(info);
        return Err(crate::object::invalid(
            binding_info,
            name,
            vec![(
                "target.name".into(),
                "Required value".into(),
                "a binding targets a node by name".into(),
            )],
        ));
    }
    // The watch cache's copy first: the write is a compare-and-swap, so a stale copy fails
    // and the attempt is redone from the store's, whose answer stands.
    let cached = rest::read_with_revision(state, info, Some(ns), name, true).await?;
    if bind_to(state, (info, ns, name), &binding, node, cached, query)
        .await
        .is_ok()
    {
        return Ok(bound_status());
    }
    let current = rest::read_with_revision(state, info, Some(ns), name, false).await?;
    bind_to(state, (info, ns, name), &binding, node, current, query).await?;
    Ok(bound_status())
}

fn bound_status() -> Response<Body> {
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// Binds `pod`, read at `revision`, if it still is at that revision, as upstream's
/// setPodHostAndAnnotations: the node, the binding's annotations, and PodScheduled=True.
async fn bind_to(
    state: &State,
    (info, ns, name): (&ResourceInfo, &str, &str),
    binding: &Value,
    node: &str,
    (pod, revision): (Value, i64),
    query: &Query,
) -> Result<(), ApiError> {
    if let Some(uid) = binding.pointer("/metadata/uid").and_then(Value::as_str)
        && meta_str(&pod, "uid") != Some(uid)
    {
        return Err(conflict(info, name).with_message(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
            meta_str(&pod, "uid").unwrap_or_default()
        )));
    }
    if meta_str(&pod, "deletionTimestamp").is_some() {
        return Err(conflict(info, name).with_message(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host"
        )));
    }
    let current = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !current.is_empty() {
        return Err(conflict(info, name).with_message(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{current}\""
        )));
    }
    let gated = pod
        .pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|gates| !gates.is_empty());
    if gated {
        return Err(conflict(info, name).with_message(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} has non-empty .spec.schedulingGates"
        )));
    }
    let mut bound = pod;
    bound["spec"]["nodeName"] = json!(node);
    if let Some(annotations) = binding.pointer("/metadata/annotations").and_then(Value::as_object) {
        for (key, value) in annotations {
            bound["metadata"]["annotations"][key] = value.clone();
        }
    }
    set_scheduled(&mut bound);
    if !query.dry_run {
        rest::store_update(state, (info, Some(ns), name), &bound, revision).await?;
    }
    Ok(())
}

/// PodScheduled=True, as upstream's UpdatePodCondition writes it: reason and message
/// cleared, the transition time kept unless the status changes.
fn set_scheduled(pod: &mut Value) {
    let Some(status) = pod
        .as_object_mut()
        .map(|p| p.entry("status").or_insert_with(|| json!({})))
    else {
        return;
    };
    if !status.is_object() {
        *status = json!({});
    }
    let conditions = &mut status["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(conditions) = conditions.as_array_mut() else {
        return;
    };
    let existing = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"));
    let mut transition = json!(crate::object::now_rfc3339());
    if let Some(i) = existing
        && conditions[i].get("status").and_then(Value::as_str) == Some("True")
        && let Some(kept) = conditions[i].get("lastTransitionTime")
    {
        transition = kept.clone();
    }
    let condition =
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": transition});
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// `POST pods/<name>/eviction`: deletes the pod unless a disruption budget that selects it
/// allows no more disruptions (429, as upstream).
async fn evict(
    state: &State,
    (info, ns, name): (&ResourceInfo, &str, &str),
    body: &[u8],
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let eviction: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("couldn't decode the Eviction: {e}")))?;
    check_name_matches(&eviction, name)?;
    let pod = rest::get_object(state, info, Some(ns), name).await?;
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    // Finished or already deleting pods hold no budget.
    let counts = !matches!(phase, "Succeeded" | "Failed") && meta_str(&pod, "deletionTimestamp").is_none();
    if counts && let Some(pdbs) = find("policy", "v1", "poddisruptionbudgets") {
        let page = rest::list_all(state, pdbs, Some(ns)).await?;
        let pod_labels = labels(&pod);
        for pdb in &page {
            let Some(selector) = pdb.pointer("/spec/selector") else {
                continue;
            };
            let text = rkube_api::selector::label_selector_text(selector);
            let matches = LabelSelector::parse(&text).is_ok_and(|s| !s.is_empty() && s.matches(&pod_labels));
            if !matches {
                continue;
            }
            let allowed = pdb
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if allowed <= 0 {
                let pdb_name = meta_str(pdb, "name").unwrap_or_default();
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                err = err.with_causes(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                    reason: Some("DisruptionBudget".into()),
                    message: Some(format!(
                        "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        pdb.pointer("/status/desiredHealthy")
                            .and_then(Value::as_i64)
                            .unwrap_or(0),
                        pdb.pointer("/status/currentHealthy")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                    )),
                    field: None,
                }]);
                return Err(err);
            }
        }
    }
    let mut options = DeleteOptions::from_value(eviction.get("deleteOptions"), query)?;
    options.dry_run |= query.dry_run;
    rest::delete_object(state, info, Some(ns), name, &options).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
