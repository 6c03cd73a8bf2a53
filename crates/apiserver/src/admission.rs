//! Admission of new pods, as upstream's Priority plugin does it: the priority and
//! preemption policy come from the pod's PriorityClass (or the global default class), and a
//! pod may not state values that disagree with its class.

use http::StatusCode;
use rkube_api::find;
use serde_json::{Value, json};

use crate::State;
use crate::filter::Filter;
use crate::query::Query;
use crate::response::ApiError;
use crate::rest;

const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";

fn forbidden(name: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!("pods \"{name}\" is forbidden: {message}"),
    )
}

/// The classes as the watch cache holds them: admission, like upstream's lister, does not
/// wait for the newest revision.
async fn priority_classes(state: &State) -> Result<Vec<Value>, ApiError> {
    let Some(info) = find("scheduling.k8s.io", "v1", "priorityclasses") else {
        return Ok(Vec::new());
    };
    let query = Query {
        resource_version: Some("0".into()),
        ..Query::default()
    };
    Ok(rest::list_page(state, info, None, &query, &Filter::everything(), None)
        .await?
        .items)
}

/// Sets `spec.priority`, `spec.priorityClassName` and `spec.preemptionPolicy` of a pod
/// being created.
pub(crate) async fn admit_pod(state: &State, pod: &mut Value, name: &str) -> Result<(), ApiError> {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let class_name = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let classes = priority_classes(state).await?;
    let class = if class_name.is_empty() {
        // The global default with the lowest value, as upstream picks among several.
        classes
            .iter()
            .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or_default())
    } else {
        let found = classes
            .iter()
            .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(class_name.as_str()));
        if found.is_none() {
            return Err(forbidden(
                name,
                format!("no PriorityClass with name {class_name} was found"),
            ));
        }
        found
    };
    let priority = class
        .and_then(|c| c.get("value"))
        .and_then(Value::as_i64)
        .unwrap_or_default();
    if let Some(stated) = spec.get("priority").and_then(Value::as_i64)
        && stated != priority
    {
        return Err(forbidden(
            name,
            format!(
                "the integer value of priority ({stated}) must not be provided in pod spec; \
                 priority admission controller computed {priority} from the given PriorityClass name"
            ),
        ));
    }
    let policy = class.and_then(|c| c.get("preemptionPolicy")).and_then(Value::as_str);
    if let (Some(stated), Some(computed)) = (spec.get("preemptionPolicy").and_then(Value::as_str), policy)
        && stated != computed
    {
        return Err(forbidden(
            name,
            format!(
                "the string value of PreemptionPolicy ({stated}) must not be provided in pod spec; \
                 priority admission controller computed {computed} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(class) = class
        .and_then(|c| c.pointer("/metadata/name"))
        .filter(|_| class_name.is_empty())
    {
        spec.insert("priorityClassName".into(), class.clone());
    }
    spec.insert("priority".into(), json!(priority));
    let policy = policy
        .map(str::to_string)
        .or_else(|| spec.get("preemptionPolicy").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| PREEMPT_LOWER_PRIORITY.into());
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}

/// On update a pod keeps what admission set at creation when the new body leaves it out.
pub(crate) fn keep_priority(current: &Value, new: &mut Value) {
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for field in ["priority", "preemptionPolicy", "priorityClassName"] {
        if !spec.contains_key(field)
            && let Some(value) = current.pointer(&format!("/spec/{field}"))
        {
            spec.insert(field.into(), value.clone());
        }
    }
}
