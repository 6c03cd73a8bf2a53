//! What Go's JSON encoding leaves out: upstream decodes every object into its Go struct
//! and encodes it again, so a non-pointer field tagged `omitempty` that holds its zero
//! value (`paused: false`, `minReadySeconds: 0`, `hostname: ""`, `args: []`,
//! `nodeSelector: {}`) is not stored, while a pointer field keeps an explicit zero
//! (`replicas: 0`, `storageClassName: ""`). Kept per type in `facts/omitempty-facts.json`
//! (see `facts/generate-omitempty.py`, which reads upstream's Go types).

use std::sync::LazyLock;

use foldhash::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// One field: its flags ([`OMIT`], [`ALWAYS`]), the type it leads to with its shape
/// (`o` object, `l` list of, `m` map of), and its declared default (`+default=`).
#[derive(Debug, Deserialize)]
struct Field(u8, Option<String>, Option<String>, #[serde(default)] Option<Value>);

/// Left out when empty.
const OMIT: u8 = 1;
/// Written even when empty: not omitempty, or a plain struct.
const ALWAYS: u8 = 2;

// Every write walks its object through these maps: foldhash, as their content is fixed
// (requests only look names up, so no request can make them collide).
type Facts = HashMap<String, HashMap<String, Field>>;

static FACTS: LazyLock<Facts> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../facts/omitempty-facts.json")).unwrap_or_else(|err| {
        // The file is part of the source tree; a test checks that it parses.
        tracing::error!(%err, "the omitempty facts do not parse");
        HashMap::default()
    })
});

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
    }
}

/// Leaves out the empty `omitempty` fields of `object`, an object of type `ty`, and of
/// everything in it.
pub fn omit_empty(ty: &str, object: &mut Value) {
    if let Some(fields) = FACTS.get(ty)
        && let Some(map) = object.as_object_mut()
    {
        omit_in(fields, map);
    }
}

/// [`omit_empty`] for this object's own fields only (its nested objects are done on
/// their own, as the protobuf decoder builds them).
pub fn omit_empty_here(ty: &str, object: &mut Map<String, Value>) {
    if let Some(fields) = FACTS.get(ty) {
        object.retain(|name, value| !(fields.get(name).is_some_and(|f| f.0 & OMIT != 0) && is_empty(value)));
    }
}

/// Whether Go writes the field `field` of type `ty` even in the type's zero value (it is
/// not omitempty, or a plain struct): such a field is always there in upstream's view of
/// an object. False when unknown.
pub fn always_written(ty: &str, field: &str) -> bool {
    FACTS
        .get(ty)
        .and_then(|fields| fields.get(field))
        .is_some_and(|f| f.0 & ALWAYS != 0)
}

/// The default upstream's Go type declares for `field` of type `ty` (`+default=`), which
/// server-side apply keys a list item by where the item lacks that key field.
pub fn default_of(ty: &str, field: &str) -> Option<&'static Value> {
    FACTS.get(ty)?.get(field)?.3.as_ref()
}

fn omit_in(fields: &HashMap<String, Field>, map: &mut Map<String, Value>) {
    map.retain(|name, value| {
        let Some(Field(omit, child, shape, _)) = fields.get(name) else {
            return true;
        };
        if omit & OMIT != 0 && is_empty(value) {
            return false;
        }
        if let Some(inner) = child.as_deref().and_then(|c| FACTS.get(c)) {
            match (shape.as_deref(), value) {
                (Some("o"), Value::Object(object)) => omit_in(inner, object),
                (Some("l"), Value::Array(items)) => {
                    for item in items.iter_mut().filter_map(Value::as_object_mut) {
                        omit_in(inner, item);
                    }
                }
                (Some("m"), Value::Object(entries)) => {
                    for entry in entries.values_mut().filter_map(Value::as_object_mut) {
                        omit_in(inner, entry);
                    }
                }
                _ => {}
            }
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

    #[test]
    fn facts_parse_and_cover_the_workloads() {
        assert!(FACTS.len() > 100, "{}", FACTS.len());
        assert!(FACTS.contains_key(DEPLOYMENT));
        assert!(FACTS.contains_key("io.k8s.api.core.v1.Container"));
    }

    #[test]
    fn zero_values_of_plain_fields_go_and_pointers_stay() {
        let mut deploy = json!({
            "metadata": {"name": "web", "generation": 0, "labels": {}, "annotations": {"a": ""}},
            "spec": {
                "replicas": 0, "paused": false, "minReadySeconds": 0, "revisionHistoryLimit": 0,
                "strategy": {},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "hostNetwork": false, "hostname": "", "nodeSelector": {}, "tolerations": [],
                    "securityContext": {}, "automountServiceAccountToken": false,
                    "containers": [{"name": "c", "image": "nginx", "stdin": false, "tty": false,
                                    "args": [], "resources": {},
                                    "ports": [{"containerPort": 80, "hostPort": 0, "name": ""}]}],
                    "volumes": [{"name": "v", "emptyDir": {"medium": ""}}],
                }},
            },
            "status": {"replicas": 0, "conditions": []},
        });
        omit_empty(DEPLOYMENT, &mut deploy);
        assert_eq!(
            deploy,
            json!({
                // A map's own entries are not fields: an empty annotation stays.
                "metadata": {"name": "web", "annotations": {"a": ""}},
                "spec": {
                    "replicas": 0, "revisionHistoryLimit": 0, "strategy": {},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                        "securityContext": {}, "automountServiceAccountToken": false,
                        "containers": [{"name": "c", "image": "nginx", "resources": {},
                                        "ports": [{"containerPort": 80}]}],
                        "volumes": [{"name": "v", "emptyDir": {}}],
                    }},
                },
                "status": {},
            })
        );
    }

    #[test]
    fn explicit_empty_pointers_stay() {
        let mut claim = json!({"spec": {"storageClassName": "", "volumeName": ""}});
        omit_empty("io.k8s.api.core.v1.PersistentVolumeClaim", &mut claim);
        assert_eq!(claim, json!({"spec": {"storageClassName": ""}}));
        let mut service = json!({"spec": {"ports": [{"port": 80, "nodePort": 0}],
                                         "allocateLoadBalancerNodePorts": false,
                                         "publishNotReadyAddresses": false}});
        omit_empty("io.k8s.api.core.v1.Service", &mut service);
        assert_eq!(
            service,
            json!({"spec": {"ports": [{"port": 80}], "allocateLoadBalancerNodePorts": false}})
        );
    }

    #[test]
    fn plain_structs_and_fields_without_omitempty_are_always_written() {
        let spec = "io.k8s.api.apps.v1.DeploymentSpec";
        assert!(always_written(DEPLOYMENT, "metadata"));
        assert!(always_written(DEPLOYMENT, "spec"));
        assert!(always_written(spec, "strategy"), "a plain struct");
        assert!(always_written(spec, "template"));
        assert!(!always_written(spec, "replicas"), "a pointer");
        assert!(!always_written(spec, "paused"), "omitempty");
        assert!(!always_written(
            "io.k8s.api.apps.v1.DeploymentStrategy",
            "rollingUpdate"
        ));
        assert!(
            always_written("io.k8s.api.core.v1.PodSpec", "containers"),
            "no omitempty"
        );
        assert!(!always_written("io.k8s.api.core.v1.Container", "ports"));
        assert!(!always_written(
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "labels"
        ));
        assert!(!always_written("example.com.v1.Widget", "spec"));
        assert_eq!(
            default_of("io.k8s.api.core.v1.ServicePort", "protocol"),
            Some(&json!("TCP"))
        );
        assert_eq!(default_of("io.k8s.api.core.v1.ServicePort", "port"), None);
    }

    #[test]
    fn unknown_types_are_left_alone() {
        let mut object = json!({"spec": {"paused": false}});
        omit_empty("example.com.v1.Widget", &mut object);
        assert_eq!(object, json!({"spec": {"paused": false}}));
    }
}
