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

#[cfg(test)]
mod tests {
    use super::*;

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
