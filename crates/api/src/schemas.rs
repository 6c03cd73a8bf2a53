//! Upstream's OpenAPI v3 component schemas of every built-in type (v1.33), as
//! `/openapi/v3` publishes them: kubectl reads them for `explain` and to compute apply
//! patches. Kept in `facts/openapi-schemas.json` (see `facts/generate-openapi.py`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

static SCHEMAS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../facts/openapi-schemas.json")).unwrap_or_else(|err| {
        // The file is part of the source tree; a test checks that it parses.
        tracing::error!(%err, "the OpenAPI schemas do not parse");
        Map::new()
    })
});

const REF_PREFIX: &str = "#/components/schemas/";

/// Every schema, by name.
pub fn all() -> &'static Map<String, Value> {
    &SCHEMAS
}

fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref"
                    && let Some(name) = inner.as_str().and_then(|r| r.strip_prefix(REF_PREFIX))
                {
                    out.push(name.to_string());
                } else {
                    references(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, out)),
        _ => {}
    }
}

/// The schemas named, with every schema they reference, directly or not.
pub fn closure<'a>(roots: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Value> {
    let mut found: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending: Vec<String> = roots.into_iter().map(str::to_string).collect();
    while let Some(name) = pending.pop() {
        if found.contains_key(&name) {
            continue;
        }
        let Some(schema) = SCHEMAS.get(&name) else { continue };
        references(schema, &mut pending);
        found.insert(name, schema.clone());
    }
    found
}

/// The schema name of a kind (its `x-kubernetes-group-version-kind`), and of its list.
pub fn names_of(group: &str, version: &str, kind: &str) -> Vec<&'static str> {
    [kind.to_string(), format!("{kind}List")]
        .iter()
        .filter_map(|k| crate::strategic::type_of(group, version, k))
        .collect()
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    serde_json::json!([{"group": group, "version": version, "kind": kind}])
}

/// Replaces every reference to `from` with one to `to` inside `value`.
fn retarget(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key == "$ref" && inner.as_str() == Some(&format!("{REF_PREFIX}{from}")) {
                    *inner = Value::String(format!("{REF_PREFIX}{to}"));
                } else {
                    retarget(inner, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| retarget(item, from, to)),
        _ => {}
    }
}

/// Schemas for a legacy version's kind (removed upstream, so not published there): the
/// current kind's schema and list under the legacy names, with the legacy
/// group-version-kind; an Ingress's backends take their v1beta1 shape (`serviceName`,
/// `servicePort`, `spec.backend`).
pub fn legacy(group: &str, version: &str, kind: &str, current: (&str, &str)) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Some(current_name) = crate::strategic::type_of(current.0, current.1, kind) else {
        return out;
    };
    let prefix = current_name.rsplit_once('.').map_or("", |(p, _)| p);
    // Upstream named them by the group's first word: io.k8s.api.networking.v1beta1.Ingress.
    let legacy_prefix = format!("io.k8s.api.{}.{version}", group.split('.').next().unwrap_or(group));
    let mut renamed: Vec<(String, String)> = vec![
        (current_name.to_string(), format!("{legacy_prefix}.{kind}")),
        (format!("{current_name}List"), format!("{legacy_prefix}.{kind}List")),
    ];
    if kind == "Ingress" {
        for part in [
            "IngressSpec",
            "IngressRule",
            "HTTPIngressRuleValue",
            "HTTPIngressPath",
            "IngressBackend",
        ] {
            renamed.push((format!("{prefix}.{part}"), format!("{legacy_prefix}.{part}")));
        }
    }
    for (from, to) in &renamed {
        let Some(mut schema) = SCHEMAS.get(from).cloned() else {
            continue;
        };
        for (inner_from, inner_to) in &renamed {
            retarget(&mut schema, inner_from, inner_to);
        }
        if let Some(map) = schema.as_object_mut() {
            if map.contains_key("x-kubernetes-group-version-kind") {
                let list = if to.ends_with("List") {
                    format!("{kind}List")
                } else {
                    kind.to_string()
                };
                map.insert("x-kubernetes-group-version-kind".into(), gvk(group, version, &list));
            }
            if to.ends_with(".IngressSpec")
                && let Some(properties) = map.get_mut("properties").and_then(Value::as_object_mut)
                && let Some(backend) = properties.remove("defaultBackend")
            {
                properties.insert("backend".into(), backend);
            }
            if to.ends_with(".IngressBackend")
                && let Some(properties) = map.get_mut("properties").and_then(Value::as_object_mut)
            {
                properties.remove("service");
                properties.insert(
                    "serviceName".into(),
                    serde_json::json!({"description": "serviceName specifies the name of the referenced service.", "type": "string"}),
                );
                properties.insert(
                    "servicePort".into(),
                    serde_json::json!({"description": "servicePort Specifies the port of the referenced service.",
                        "allOf": [{"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.util.intstr.IntOrString")}]}),
                );
            }
        }
        out.insert(to.clone(), schema);
    }
    // And every type those refer to.
    let mut referenced = Vec::new();
    for schema in out.values() {
        references(schema, &mut referenced);
    }
    for (name, schema) in closure(referenced.iter().map(String::as_str)) {
        out.entry(name).or_insert(schema);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_kinds_get_schemas_under_their_own_names() {
        let deployment = legacy("extensions", "v1beta1", "Deployment", ("apps", "v1"));
        let schema = &deployment["io.k8s.api.extensions.v1beta1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0],
            serde_json::json!({"group": "extensions", "version": "v1beta1", "kind": "Deployment"})
        );
        assert!(deployment.contains_key("io.k8s.api.core.v1.PodSpec"));
        let ingress = legacy("networking.k8s.io", "v1beta1", "Ingress", ("networking.k8s.io", "v1"));
        let backend = &ingress["io.k8s.api.networking.v1beta1.IngressBackend"]["properties"];
        assert!(backend.get("serviceName").is_some() && backend.get("service").is_none());
        let spec = &ingress["io.k8s.api.networking.v1beta1.IngressSpec"]["properties"];
        assert!(spec.get("backend").is_some());
    }

    #[test]
    fn a_kind_brings_every_type_it_uses() {
        let names = names_of("apps", "v1", "Deployment");
        assert_eq!(
            names,
            ["io.k8s.api.apps.v1.Deployment", "io.k8s.api.apps.v1.DeploymentList"]
        );
        let schemas = closure(names.iter().copied());
        for used in [
            "io.k8s.api.core.v1.PodSpec",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
        ] {
            assert!(schemas.contains_key(used), "{used}");
        }
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(
            containers["items"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Container"
        );
    }
}
