//! Strategic merge patch (`application/strategic-merge-patch+json`), with upstream's
//! semantics: maps merge key by key and `null` deletes; lists whose field has the `merge`
//! strategy merge their elements by the field's merge key (or, for scalars, as a set),
//! other lists are replaced whole; and the directives `$patch: replace|merge|delete`,
//! `$retainKeys`, `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.
//!
//! The merge keys and strategies of every built-in type are facts of upstream's API
//! (its OpenAPI extensions `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key`),
//! kept in `facts/patch-facts.json` (see `facts/generate.py` for where they come from).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Map, Value};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// What upstream knows of one field: the type it leads to, its shape, its patch strategy
/// and its merge key.
#[derive(Debug, Deserialize)]
struct Field(Option<String>, String, Option<String>, Option<String>);

#[derive(Debug, Deserialize)]
struct Facts {
    kinds: HashMap<String, String>,
    types: HashMap<String, HashMap<String, Field>>,
}

static FACTS: LazyLock<Facts> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../facts/patch-facts.json")).unwrap_or_else(|err| {
        // The file is part of the source tree; a test checks that it parses.
        tracing::error!(%err, "the strategic merge patch facts do not parse");
        Facts {
            kinds: HashMap::new(),
            types: HashMap::new(),
        }
    })
});

/// Why a strategic merge patch does not apply; upstream answers these with 400.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("map: {0} does not contain declared merge key: {1}")]
    NoMergeKey(String, String),
    #[error("unknown patch type: {0} in map: {1}")]
    BadPatchType(String, String),
    #[error("merging lists cannot yet be specified in the patch")]
    MergeDirectiveInList,
    #[error("invalid patch: {0}")]
    Invalid(String),
}

/// The type whose facts govern patches of a kind, if the kind is built in.
pub fn type_of(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    FACTS
        .kinds
        .get(&format!("{group}/{version}/{kind}"))
        .map(String::as_str)
}

/// Applies `patch` to `original`, an object of type `ty` (see [`type_of`]).
pub fn apply(original: &Value, patch: &Value, ty: &str) -> Result<Value, PatchError> {
    let (Value::Object(original), Value::Object(patch)) = (original, patch) else {
        return Err(PatchError::Invalid("a strategic merge patch must be an object".into()));
    };
    merge_map(original.clone(), patch, Some(ty)).map(Value::Object)
}

fn field<'a>(ty: Option<&str>, name: &str) -> Option<&'a Field> {
    FACTS.types.get(ty?)?.get(name)
}

/// A value as Go's `%v` prints it, which upstream's messages use (`map[image:x]`).
fn short(value: &Map<String, Value>) -> String {
    go_text(&Value::Object(value.clone()))
}

fn go_text(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Object(map) => {
            let mut entries: Vec<String> = map.iter().map(|(k, v)| format!("{k}:{}", go_text(v))).collect();
            entries.sort();
            format!("map[{}]", entries.join(" "))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(go_text).collect::<Vec<_>>().join(" ")),
        other => other.to_string(),
    }
}

/// A value taken from the patch where the original had nothing: its directives applied to
/// nothing, and its nulls dropped.
fn fresh(patch: &Value, field: Option<&Field>) -> Result<Value, PatchError> {
    match patch {
        Value::Object(map) => {
            if map.get(PATCH).and_then(Value::as_str) == Some("delete") {
                return Ok(Value::Object(Map::new()));
            }
            merge_map(
                Map::new(),
                map,
                field.and_then(|f| f.0.as_deref()).filter(|_| f_shape(field) != "m"),
            )
            .map(Value::Object)
        }
        Value::Array(items) if strategy_has(field, "merge") => {
            merge_list(Vec::new(), items, field, &Map::new(), "").map(Value::Array)
        }
        other => Ok(other.clone()),
    }
}

fn f_shape(field: Option<&Field>) -> &str {
    field.map_or("o", |f| f.1.as_str())
}

fn strategy_has(field: Option<&Field>, strategy: &str) -> bool {
    field
        .and_then(|f| f.2.as_deref())
        .is_some_and(|s| s.split(',').any(|part| part == strategy))
}

/// Upstream's `mergeMap`.
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: Option<&str>,
) -> Result<Map<String, Value>, PatchError> {
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(directive)) if directive == "replace" => {
            let mut replaced = patch.clone();
            replaced.remove(PATCH);
            return merge_map(Map::new(), &replaced, ty);
        }
        Some(Value::String(directive)) if directive == "delete" => return Ok(Map::new()),
        Some(other) => {
            return Err(PatchError::BadPatchType(go_text(other), short(patch)));
        }
    }
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Some(keys) = retain.as_array() else {
            return Err(PatchError::Invalid(format!(
                "$retainKeys must be a list: {}",
                go_text(retain)
            )));
        };
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        for key in patch.keys().filter(|k| !k.starts_with('$')) {
            if !keys.contains(&key.as_str()) {
                return Err(PatchError::Invalid(format!(
                    "The $retainKeys list {} doesn't contain the key {key} in the patch",
                    go_text(retain)
                )));
            }
        }
        original.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if let Some(list) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Some(doomed) = value.as_array() else {
                return Err(PatchError::Invalid(format!("{key} must be a list")));
            };
            if let Some(Value::Array(items)) = original.get_mut(list) {
                items.retain(|item| !doomed.contains(item));
            }
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        let info = field(ty, key);
        if value.is_null() {
            original.remove(key);
            continue;
        }
        let order = patch
            .get(&format!("{SET_ELEMENT_ORDER}{key}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let merged = match (original.remove(key), value) {
            (None, patched) => {
                let mut value = fresh(patched, info)?;
                if let (Value::Array(items), false) = (&mut value, order.is_empty()) {
                    *items = reorder(std::mem::take(items), &order, &[], info.and_then(|f| f.3.as_deref()));
                }
                value
            }
            (Some(Value::Object(current)), Value::Object(patched)) => {
                if strategy_has(info, "replace") {
                    fresh(value, info)?
                } else if f_shape(info) == "m" {
                    // A map of typed values: each entry merges as the value type.
                    let element = info.and_then(|f| f.0.as_deref());
                    let mut current = current;
                    for (entry, patched_entry) in patched {
                        if patched_entry.is_null() {
                            current.remove(entry);
                            continue;
                        }
                        let merged = match (current.remove(entry), patched_entry) {
                            (Some(Value::Object(a)), Value::Object(b)) => Value::Object(merge_map(a, b, element)?),
                            (_, other) => fresh(other, None)?,
                        };
                        current.insert(entry.clone(), merged);
                    }
                    Value::Object(current)
                } else {
                    Value::Object(merge_map(current, patched, info.and_then(|f| f.0.as_deref()))?)
                }
            }
            (Some(Value::Array(current)), Value::Array(patched)) => {
                if strategy_has(info, "merge") {
                    Value::Array(merge_list(current, patched, info, patch, key)?)
                } else {
                    fresh(value, info)?
                }
            }
            (Some(_), patched) => fresh(patched, info)?,
        };
        original.insert(key.clone(), merged);
    }
    // Orders lists the patch names only in `$setElementOrder` (nothing else changed in them).
    for (key, value) in patch {
        let Some(list) = key.strip_prefix(SET_ELEMENT_ORDER) else {
            continue;
        };
        if patch.contains_key(list) {
            continue;
        }
        let Some(order) = value.as_array() else {
            return Err(PatchError::Invalid(format!("{key} must be a list")));
        };
        if let Some(Value::Array(items)) = original.get_mut(list) {
            let merge_key = field(ty, list).and_then(|f| f.3.as_deref());
            let current = std::mem::take(items);
            *items = reorder(current.clone(), order, &current, merge_key);
        }
    }
    Ok(original)
}

/// The merge-key value of a list element (the element itself for scalars).
fn identity<'a>(item: &'a Value, merge_key: Option<&str>) -> Option<&'a Value> {
    match (item, merge_key) {
        (Value::Object(map), Some(key)) => map.get(key),
        (Value::Object(_), None) => None,
        (scalar, _) => Some(scalar),
    }
}

/// Upstream's `mergeSlice` for lists with the merge strategy.
fn merge_list(
    mut original: Vec<Value>,
    patch: &[Value],
    info: Option<&Field>,
    parent_patch: &Map<String, Value>,
    name: &str,
) -> Result<Vec<Value>, PatchError> {
    let merge_key = info.and_then(|f| f.3.as_deref());
    let element = info.and_then(|f| f.0.as_deref());
    // Directives first: `replace` anywhere replaces the list with the plain elements.
    for item in patch {
        if let Some(map) = item.as_object()
            && let Some(directive) = map.get(PATCH)
        {
            match directive.as_str() {
                Some("replace") => {
                    let plain: Vec<Value> = patch.iter().filter(|i| i.get(PATCH).is_none()).cloned().collect();
                    return Ok(plain);
                }
                Some("delete") => {}
                Some("merge") => return Err(PatchError::MergeDirectiveInList),
                _ => return Err(PatchError::BadPatchType(go_text(directive), short(map))),
            }
        }
    }
    let server_order = original.clone();
    for item in patch {
        match item {
            Value::Object(map) => {
                let Some(key) = merge_key else {
                    // A list of maps without a merge key replaces as a whole.
                    return Ok(patch.to_vec());
                };
                let Some(wanted) = map.get(key) else {
                    return Err(PatchError::NoMergeKey(short(map), key.into()));
                };
                if map.get(PATCH).is_some() {
                    // `delete`, the only directive left.
                    original.retain(|o| o.get(key) != Some(wanted));
                    continue;
                }
                match original.iter().position(|o| o.get(key) == Some(wanted)) {
                    Some(i) => {
                        let current = match std::mem::take(&mut original[i]) {
                            Value::Object(current) => current,
                            _ => Map::new(),
                        };
                        original[i] = Value::Object(merge_map(current, map, element)?);
                    }
                    None => original.push(Value::Object(merge_map(Map::new(), map, element)?)),
                }
            }
            scalar => {
                if !original.contains(scalar) {
                    original.push(scalar.clone());
                }
            }
        }
    }
    let order = parent_patch
        .get(&format!("{SET_ELEMENT_ORDER}{name}"))
        .and_then(Value::as_array);
    Ok(match order {
        Some(order) => reorder(original, order, &server_order, merge_key),
        None => original,
    })
}

/// Upstream's `normalizeElementOrder`, simplified: the elements `order` names come in its
/// order; the others (only the server had them) keep their relative order, each after the
/// named element that preceded it on the server (at the front if none did).
fn reorder(items: Vec<Value>, order: &[Value], server: &[Value], merge_key: Option<&str>) -> Vec<Value> {
    let key_of = |v: &Value| -> Option<Value> { identity(v, merge_key).cloned() };
    let named: Vec<Value> = order.iter().filter_map(|o| identity(o, merge_key).cloned()).collect();
    let mut ordered: Vec<Value> = Vec::with_capacity(items.len());
    let mut rest: Vec<Value> = Vec::new();
    let mut remaining = items;
    for wanted in &named {
        if let Some(i) = remaining.iter().position(|item| key_of(item).as_ref() == Some(wanted)) {
            ordered.push(remaining.remove(i));
        }
    }
    rest.extend(remaining);
    for item in rest {
        // After the named element that preceded it on the server.
        let server_index = server.iter().position(|s| key_of(s) == key_of(&item));
        let anchor = server_index.and_then(|i| {
            server[..i]
                .iter()
                .rev()
                .find_map(|s| ordered.iter().position(|o| key_of(o) == key_of(s)))
        });
        match anchor {
            Some(i) => ordered.insert(i + 1, item),
            None => ordered.insert(0, item),
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD: &str = "io.k8s.api.core.v1.Pod";
    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

    fn patched(original: Value, patch: Value, ty: &str) -> Value {
        apply(&original, &patch, ty).unwrap()
    }

    #[test]
    fn facts_parse_and_name_the_built_in_kinds() {
        assert_eq!(type_of("apps", "v1", "Deployment"), Some(DEPLOYMENT));
        assert_eq!(type_of("", "v1", "Pod"), Some(POD));
        assert_eq!(type_of("example.com", "v1", "Widget"), None);
        let containers = field(Some("io.k8s.api.core.v1.PodSpec"), "containers").unwrap();
        assert_eq!(
            (containers.2.as_deref(), containers.3.as_deref()),
            (Some("merge"), Some("name"))
        );
    }

    #[test]
    fn maps_merge_and_nulls_delete() {
        let out = patched(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"b": null, "c": "3"}}}),
            POD,
        );
        assert_eq!(out, json!({"metadata": {"labels": {"a": "1", "c": "3"}}}));
    }

    #[test]
    fn merge_lists_merge_by_key_and_other_lists_are_replaced() {
        let original = json!({"spec": {"containers": [{"name": "a", "image": "x:1", "args": ["1"]},
                                                      {"name": "b", "image": "y:1"}],
                                       "tolerations": [{"key": "k1"}]}});
        let out = patched(
            original,
            json!({"spec": {"containers": [{"name": "b", "image": "y:2"}, {"name": "c", "image": "z"}],
                            "tolerations": [{"key": "k2"}]}}),
            POD,
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "x:1", "args": ["1"]}, {"name": "b", "image": "y:2"},
                   {"name": "c", "image": "z"}])
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "k2"}]));
    }

    #[test]
    fn patch_directives_delete_replace_and_merge() {
        let original = json!({"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"},
            {"name": "B", "value": "2"}]}]}});
        let out = patched(
            original.clone(),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "B", "$patch": "delete"}]}]}}),
            POD,
        );
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}])
        );
        let out = patched(
            original.clone(),
            json!({"spec": {"containers": [{"name": "n", "image": "y"}, {"$patch": "replace"}]}}),
            POD,
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "n", "image": "y"}]));
        let err = apply(
            &original,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "merge", "image": "z"}]}}),
            POD,
        );
        assert_eq!(err, Err(PatchError::MergeDirectiveInList));
        let out = patched(
            original.clone(),
            json!({"spec": {"$patch": "replace", "containers": []}}),
            POD,
        );
        assert_eq!(out["spec"], json!({"containers": []}));
        let out = patched(
            json!({"metadata": {"labels": {"a": "1"}}}),
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
            POD,
        );
        assert_eq!(out["metadata"]["labels"], json!({}));
        let err = apply(&original, &json!({"spec": {"$patch": "merge"}}), POD).unwrap_err();
        assert_eq!(err.to_string(), "unknown patch type: merge in map: map[$patch:merge]");
    }

    #[test]
    fn merge_keys_are_required_in_merged_lists() {
        let err = apply(
            &json!({"spec": {"containers": [{"name": "a"}]}}),
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            POD,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "map: map[image:x] does not contain declared merge key: name"
        );
    }

    #[test]
    fn set_element_order_orders_merged_lists() {
        let original = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let out = patched(
            original.clone(),
            json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
                            "containers": [{"name": "a", "image": "new"}]}}),
            POD,
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a", "image": "new"}, {"name": "b"}])
        );
        // Server-only elements stay after the element that preceded them.
        let out = patched(
            original,
            json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}]}}),
            POD,
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}, {"name": "b"}])
        );
    }

    #[test]
    fn primitive_lists_merge_as_sets_and_delete_by_value() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = patched(original.clone(), json!({"metadata": {"finalizers": ["b", "c"]}}), POD);
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = patched(
            original,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            POD,
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn retain_keys_clear_what_the_patch_does_not_keep() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = patched(
            original.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            DEPLOYMENT,
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let err = apply(
            &original,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
            DEPLOYMENT,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("doesn't contain the key rollingUpdate"),
            "{err}"
        );
    }

    #[test]
    fn kubectl_apply_patches_as_recorded() {
        // What kubectl 1.32 sends after the manifest changed an image and dropped env B.
        let original = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "app", "image": "nginx:1.26", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "terminationMessagePath": "/dev/termination-log"}]}}}});
        let patch = json!({"spec":{"replicas":3,"template":{"spec":{"$setElementOrder/containers":[{"name":"app"}],
            "containers":[{"$setElementOrder/env":[{"name":"A"}],"env":[{"$patch":"delete","name":"B"}],
            "image":"nginx:1.27","name":"app"}]}}}});
        let out = patched(original, patch, DEPLOYMENT);
        assert_eq!(
            out,
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "app", "image": "nginx:1.27", "env": [{"name": "A", "value": "1"}],
                 "terminationMessagePath": "/dev/termination-log"}]}}}})
        );
    }

    #[test]
    fn typed_maps_merge_their_values() {
        // ConfigMap data is a plain map; a Secret's too.
        let out = patched(
            json!({"data": {"a": "1", "b": "2"}}),
            json!({"data": {"a": null, "c": "3"}}),
            "io.k8s.api.core.v1.ConfigMap",
        );
        assert_eq!(out, json!({"data": {"b": "2", "c": "3"}}));
    }
}
