//! Entry points for the coverage-guided fuzz targets in `fuzz/` (cargo fuzz, libFuzzer) and
//! for the test that replays their corpora in every test run. Each takes arbitrary bytes,
//! runs them through what a request body, query or selector passes in the server, and must
//! never panic; errors are the expected answer to garbage.

use rkube_api::selector::{FieldSelector, LabelSelector};
use rkube_api::{ResourceInfo, validation};
use serde_json::{Value, json};

use crate::filter::Filter;
use crate::query::{FieldValidation, Query};
use crate::rest::{DeleteOptions, PatchBody, decode_body, decode_typed};

/// A fuzz target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_body", request_body),
    ("patch", patch),
    ("selectors", selectors),
    ("request_line", request_line),
    ("protobuf", protobuf),
    ("strategic_patch", strategic_patch),
];

/// A protobuf create body (kubectl 1.32's `k8s\0` envelope), then as a create of its kind.
pub fn protobuf(data: &[u8]) {
    let Ok(object) = decode_body(Some("application/vnd.kubernetes.protobuf"), data) else {
        return;
    };
    let info = claimed_kind(&object);
    let mut warnings = Vec::new();
    if let Ok(decoded) = decode_typed(info, object, FieldValidation::Warn, &mut warnings) {
        drop(validation::validate(info, &decoded));
    }
}

/// A strategic merge patch of a Deployment (merge keys, retainKeys, primitive lists).
pub fn strategic_patch(data: &[u8]) {
    let Ok(patch) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(ty) = rkube_api::strategic::type_of("apps", "v1", "Deployment") else {
        return;
    };
    let target = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "finalizers": ["x", "y"], "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"volumes": [{"name": "v", "hostPath": {"path": "/x"}}],
                                       "containers": [{"name": "web", "image": "nginx:1.27",
                                                       "env": [{"name": "A", "value": "1"}, {"name": "B"}]},
                                                      {"name": "b", "image": "busybox"}]}}}
    });
    drop(rkube_api::strategic::apply(&target, &patch, ty));
}

/// The kind a body claims, as the server looks it up (pods when it names none it serves).
fn claimed_kind(object: &Value) -> &'static ResourceInfo {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    rkube_api::resources()
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
        .or_else(|| rkube_api::find("", "v1", "pods"))
        .unwrap_or(&rkube_api::resources()[0])
}

/// A create body: decoded as JSON or YAML (the first byte picks), checked against its
/// kind's type, defaulted, validated, validated again as an update of itself and printed;
/// and the same bytes as a delete's options.
pub fn request_body(data: &[u8]) {
    let Some((&format, body)) = data.split_first() else {
        return;
    };
    let content_type = if format % 2 == 0 {
        "application/json"
    } else {
        "application/yaml"
    };
    drop(DeleteOptions::from(body, &Query::default()));
    let Ok(object) = decode_body(Some(content_type), body) else {
        return;
    };
    let info = claimed_kind(&object);
    let mut warnings = Vec::new();
    if let Ok(decoded) = decode_typed(info, object, FieldValidation::Warn, &mut warnings) {
        drop(validation::validate(info, &decoded));
        drop(validation::validate_update(info, &decoded, &decoded));
        drop(rkube_api::printers::cells(info, &decoded, &|_| String::new()));
    }
}

/// A patch body (merge, JSON or strategic merge patch: the first byte picks) applied to a
/// deployment.
pub fn patch(data: &[u8]) {
    let Some((&format, body)) = data.split_first() else {
        return;
    };
    let content_type = match format % 3 {
        0 => "application/merge-patch+json",
        1 => "application/json-patch+json",
        _ => "application/strategic-merge-patch+json",
    };
    let deployment = rkube_api::strategic::type_of("apps", "v1", "Deployment");
    let Ok(patch) = PatchBody::decode(Some(content_type), body, deployment) else {
        return;
    };
    let mut target = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
    });
    if patch.apply(&mut target).is_ok() {
        request_body(&[&[0u8][..], &serde_json::to_vec(&target).unwrap_or_default()].concat());
    }
}

/// Label and field selectors (one line each) parsed and matched against a pod.
pub fn selectors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (labels, fields) = text.split_once('\n').unwrap_or((&text, ""));
    let pod = json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web", "tier": "front"}},
                     "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
    if let Ok(selector) = LabelSelector::parse(labels) {
        std::hint::black_box(selector.matches(&crate::object::labels(&pod)));
    }
    if let Ok(selector) = FieldSelector::parse(fields) {
        std::hint::black_box(selector.matches(|f| crate::object::field_text(&pod, f)));
    }
    let query = Query {
        label_selector: labels.to_string(),
        field_selector: fields.to_string(),
        ..Query::default()
    };
    if let Some(info) = rkube_api::find("", "v1", "pods")
        && let Ok(filter) = Filter::from_query(info, &query)
    {
        std::hint::black_box(filter.matches(&pod));
    }
}

/// A request path and query (split at the first `?`), as the router and query parser see them.
pub fn request_line(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    std::hint::black_box(crate::path::parse(path));
    if let Ok(query) = Query::parse(Some(query)) {
        drop(query.watch_from());
    }
}
