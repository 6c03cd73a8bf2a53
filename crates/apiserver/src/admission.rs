//! Admission of new pods, as upstream's Priority plugin does it: the priority and
//! preemption policy come from the pod's PriorityClass (or the global default class), and a
//! pod may not state values that disagree with its class. Also what upstream's pod strategy
//! does on create: pod affinity terms' `matchLabelKeys`/`mismatchLabelKeys` become
//! requirements of their label selectors, with the pod's own label values. Upstream's
//! ServiceAccount plugin: a pod that automounts its service account's token gets the
//! projected `kube-api-access-*` volume in every container. And upstream's
//! DefaultStorageClass plugin: a claim that names no class gets the default one.

use http::StatusCode;
use rkube_api::find;
use serde_json::{Value, json};

use crate::State;
use crate::filter::Filter;
use crate::response::ApiError;

const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";
/// Where a pod's containers find their service account's credentials.
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

fn forbidden(name: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!("pods \"{name}\" is forbidden: {message}"),
    )
}

/// The objects as the watch cache holds them: admission, like upstream's listers, does not
/// wait for the newest revision.
fn cached(state: &State, group: &str, plural: &str) -> Result<Vec<Value>, ApiError> {
    cached_where(state, group, plural, &[])
}

/// [`cached`], decoding only the objects whose encoding contains `text` (every pod
/// creation looks its priority class up; the classes it cannot be are left encoded).
fn cached_where(state: &State, group: &str, plural: &str, text: &[u8]) -> Result<Vec<Value>, ApiError> {
    let Some(info) = find(group, "v1", plural) else {
        return Ok(Vec::new());
    };
    let page = state
        .cache
        .page(info, None, &Filter::everything(), None, None, None)?
        .ok_or_else(|| ApiError::internal(format!("the watch cache could not list {plural}")))?;
    page.items
        .iter()
        .filter(|cached| text.is_empty() || cached.json.windows(text.len()).any(|w| w == text))
        .map(|cached| cached.value())
        .collect()
}

/// Gives a claim created without `spec.storageClassName` (nor the beta annotation) the
/// default StorageClass: the newest of those marked default, as upstream.
pub(crate) async fn admit_claim(state: &State, claim: &mut Value) -> Result<(), ApiError> {
    let named = claim.pointer("/spec/storageClassName").is_some_and(|v| !v.is_null())
        || claim
            .pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
            .is_some();
    if named {
        return Ok(());
    }
    let classes = cached(state, "storage.k8s.io", "storageclasses")?;
    let default = classes
        .iter()
        .filter(|c| {
            c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true")
        })
        .max_by_key(|c| {
            let text = |p: &str| c.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
            (text("/metadata/creationTimestamp"), text("/metadata/name"))
        });
    if let (Some(default), Some(spec)) = (default, claim.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("storageClassName".into(), default["metadata"]["name"].clone());
    }
    Ok(())
}

/// Sets `spec.priority`, `spec.priorityClassName` and `spec.preemptionPolicy` of a pod
/// being created.
pub(crate) async fn admit_pod(state: &State, pod: &mut Value, name: &str) -> Result<(), ApiError> {
    merge_label_keys(pod);
    mount_service_account_token(state, pod).await?;
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let class_name = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // Stored objects are written compactly, so the class sought shows in its encoding so.
    let sought = if class_name.is_empty() {
        "\"globalDefault\":true".to_string()
    } else {
        format!("\"name\":\"{class_name}\"")
    };
    let mut classes = cached_where(state, "scheduling.k8s.io", "priorityclasses", sought.as_bytes())?;
    let named = |c: &Value| c.pointer("/metadata/name").and_then(Value::as_str) == Some(class_name.as_str());
    if !class_name.is_empty() && !classes.iter().any(named) && state.cache.wait_for_current().await? {
        // A class created just before the pod may not have reached the cache yet.
        classes = cached_where(state, "scheduling.k8s.io", "priorityclasses", sought.as_bytes())?;
    }
    let class = if class_name.is_empty() {
        // The global default with the lowest value, as upstream picks among several.
        classes
            .iter()
            .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or_default())
    } else {
        let found = classes.iter().find(|c| named(c));
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

/// Upstream's ServiceAccount admission, as far as the pod's spec goes: unless the pod (or
/// else its service account) says `automountServiceAccountToken: false`, every container
/// and init container without a mount at the token path gets one of the projected volume
/// (token, cluster CA, namespace) that the node later fills. Mirror pods are left alone.
async fn mount_service_account_token(state: &State, pod: &mut Value) -> Result<(), ApiError> {
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return Ok(());
    }
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let automount = match spec.get("automountServiceAccountToken").and_then(Value::as_bool) {
        Some(stated) => stated,
        None => account_automounts(state, &namespace, &account).await?.unwrap_or(true),
    };
    if !automount {
        return Ok(());
    }
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
        .map(str::to_string);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", crate::object::random_suffix()));
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else { continue };
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH))
            {
                continue;
            }
            mounts.push(json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
                // Upstream's bound-token lifetime while tokens are still accepted past it.
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}));
        }
    }
    Ok(())
}

/// The service account's own `automountServiceAccountToken`. An account the cache does
/// not hold yet is looked up again once the cache is current (upstream falls back to a
/// live read likewise); a missing one says nothing.
async fn account_automounts(state: &State, namespace: &str, account: &str) -> Result<Option<bool>, ApiError> {
    let Some(info) = find("", "v1", "serviceaccounts") else {
        return Ok(None);
    };
    let key = info.key(Some(namespace), account);
    let mut cached = state.cache.object(info, &key);
    if cached.is_none() && state.cache.wait_for_current().await? {
        cached = state.cache.object(info, &key);
    }
    Ok(cached
        .and_then(|c| c.value().ok())
        .and_then(|v| v.get("automountServiceAccountToken")?.as_bool()))
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

/// Upstream's `applyMatchLabelKeysAndMismatchLabelKeys` over every pod affinity term.
fn merge_label_keys(pod: &mut Value) {
    let labels = pod.pointer("/metadata/labels").cloned().unwrap_or_default();
    let Some(affinity) = pod.pointer_mut("/spec/affinity").and_then(Value::as_object_mut) else {
        return;
    };
    for kind in ["podAffinity", "podAntiAffinity"] {
        let Some(kind) = affinity.get_mut(kind).and_then(Value::as_object_mut) else {
            continue;
        };
        let required = kind
            .get_mut("requiredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten();
        for term in required {
            merge_into_term(term, &labels);
        }
        let preferred = kind
            .get_mut("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten();
        for weighted in preferred {
            if let Some(term) = weighted.get_mut("podAffinityTerm") {
                merge_into_term(term, &labels);
            }
        }
    }
}

fn merge_into_term(term: &mut Value, labels: &Value) {
    let keys = |field: &str| -> Vec<String> {
        term.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    };
    let (matching, mismatching) = (keys("matchLabelKeys"), keys("mismatchLabelKeys"));
    // A term without a selector selects nothing, with or without the keys.
    let Some(selector) = term.get_mut("labelSelector").filter(|s| s.is_object()) else {
        return;
    };
    let additions: Vec<Value> = matching
        .iter()
        .map(|k| (k, "In"))
        .chain(mismatching.iter().map(|k| (k, "NotIn")))
        .filter_map(|(key, operator)| {
            let value = labels.get(key)?.as_str()?;
            Some(json!({"key": key, "operator": operator, "values": [value]}))
        })
        .collect();
    if additions.is_empty() {
        return;
    }
    let expressions = selector
        .as_object_mut()
        .map(|s| s.entry("matchExpressions").or_insert_with(|| json!([])));
    if let Some(list) = expressions.and_then(Value::as_array_mut) {
        list.extend(additions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_become_selector_requirements() {
        let mut pod = json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {"affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
                    "labelSelector": {"matchLabels": {"app": "web"}},
                    "matchLabelKeys": ["pod-template-hash", "absent"]}],
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm":
                    {"topologyKey": "zone", "mismatchLabelKeys": ["app"], "labelSelector": {}}}]},
              "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                  {"topologyKey": "zone", "matchLabelKeys": ["app"]}]}}}});
        merge_label_keys(&mut pod);
        let anti = &pod["spec"]["affinity"]["podAntiAffinity"];
        assert_eq!(
            anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchExpressions"],
            json!([{"key": "pod-template-hash", "operator": "In", "values": ["abc"]}])
        );
        assert_eq!(
            anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["labelSelector"],
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})
        );
        assert!(
            pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
                .get("labelSelector")
                .is_none(),
            "no selector: still selects nothing"
        );
    }
}
