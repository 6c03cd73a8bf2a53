//! Deterministic mutation tests: seed inputs mutated by a fixed-seed generator must never
//! panic the decoders, selectors, defaulting, validation or printers; they answer with
//! values or errors. (The coverage-guided fuzz targets live in fuzz/, run by scripts/fuzz;
//! their corpora are replayed by crates/apiserver/tests/fuzz_corpus.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rkube_api::selector::{FieldSelector, LabelSelector, label_selector_text};
use rkube_api::{defaults, printers, resources, typed, validation};
use serde_json::{Value, json};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SPECIAL: &[&str] = &[
    "", "=", "!=", "==", ",", "(", ")", " in ", " notin ", "!", "/", "\0", "é", "🙂", "\"", "\\", "{", "}", "[", "]",
    ":", "-1", "1e309", "null",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut text = seed.to_string();
    for _ in 0..=rng.below(4) {
        let mut at = rng.below(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        match rng.below(4) {
            0 => text.insert_str(at, SPECIAL[rng.below(SPECIAL.len())]),
            1 => text.truncate(at),
            2 => {
                let copy = text[at..].to_string();
                text.push_str(&copy);
            }
            _ => {
                let mut end = (at + rng.below(4)).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(at..end.max(at), "");
            }
        }
    }
    text
}

#[test]
fn selectors_never_panic() {
    let seeds = [
        "app=web",
        "tier in (a,b),!legacy",
        "a!=b,c",
        "example.com/x notin (1, 2)",
        "metadata.name=x,status.phase!=Failed",
    ];
    let labels = [("app", "web"), ("tier", "a")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut rng = Rng(0x5eed_0001);
    for i in 0..20_000 {
        let input = mutate(&mut rng, seeds[i % seeds.len()]);
        if let Ok(selector) = LabelSelector::parse(&input) {
            selector.matches(&labels);
        }
        if let Ok(selector) = FieldSelector::parse(&input) {
            selector.matches(|_| Some("x".to_string()));
        }
    }
}

fn mutate_json(rng: &mut Rng, value: &Value, depth: usize) -> Value {
    let replacement = || {
        [
            json!(null),
            json!(-1),
            json!("x"),
            json!([]),
            json!({}),
            json!(1.5),
            json!(true),
            json!("10.43.0.1"),
            json!(i64::MAX),
        ]
    };
    match value {
        Value::Object(map) if depth < 8 => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                match rng.below(10) {
                    0 => {}
                    1 => {
                        let choices = replacement();
                        out.insert(k.clone(), choices[rng.below(choices.len())].clone());
                    }
                    2 => {
                        out.insert(format!("{k}x"), v.clone());
                    }
                    _ => {
                        out.insert(k.clone(), mutate_json(rng, v, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) if depth < 8 => {
            let mut out: Vec<Value> = items.iter().map(|v| mutate_json(rng, v, depth + 1)).collect();
            if rng.below(4) == 0 {
                out.extend(items.iter().cloned());
            }
            Value::Array(out)
        }
        other => {
            if rng.below(6) == 0 {
                let choices = replacement();
                choices[rng.below(choices.len())].clone()
            } else {
                other.clone()
            }
        }
    }
}

#[test]
fn object_pipeline_never_panics() {
    let seeds = [
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80}],
                        "readinessProbe": {"httpGet": {"port": 80}}}], "volumes": [{"name": "v", "secret": {"secretName": "s"}}]},
               "status": {"containerStatuses": [{"name": "c", "ready": true, "restartCount": 1}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080, "name": "http"}]}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "uid": "u"},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}},
               "status": {"startTime": "2026-11-23T12:00:00Z", "completionTime": "2026-11-23T12:01:00Z"}}),
    ];
    let mut rng = Rng(0x5eed_0002);
    for i in 0..4_000 {
        let mut object = mutate_json(&mut rng, &seeds[i % seeds.len()], 0);
        for info in resources()
            .iter()
            .filter(|r| matches!(r.kind, "Pod" | "Deployment" | "Service" | "Job" | "ConfigMap"))
        {
            if let Ok(mut decoded) = typed::roundtrip(info, &object) {
                typed::unknown_fields(&object, &decoded);
                defaults::apply(info, &mut decoded);
                validation::validate(info, &decoded);
                validation::validate_update(info, &object, &decoded);
                printers::cells(info, &decoded, &|_| "1s".into());
            }
            printers::cells(info, &object, &|_| "1s".into());
            defaults::apply(info, &mut object);
        }
        if let Some(selector) = object.pointer("/spec/selector") {
            drop(LabelSelector::parse(&label_selector_text(selector)));
        }
        defaults::job_selector(&mut object);
    }
}

#[test]
fn timestamps_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..20_000 {
        let input = mutate(&mut rng, "2026-11-23T12:00:00Z");
        if let Some(seconds) = printers::epoch_seconds(&input) {
            printers::human_duration(seconds);
        }
    }
    printers::human_duration(i64::MIN);
    printers::human_duration(i64::MAX);
}

/// `typed::normalize` makes in place what the reference round trip makes: the same object,
/// the same unknown fields in the same order, the same errors.
#[test]
fn normalizing_in_place_equals_the_round_trip() {
    let seeds = [
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "labels": {"app": "web"}, "creationTimestamp": "2026-11-23T12:00:00+00:00",
                            "managedFields": [{"manager": "m", "operation": "Update", "time": "2026-11-23T12:00:00Z",
                                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:x": {}}}}]},
               "spec": {"containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                        "readinessProbe": {"httpGet": {"port": "http"}}}],
                        "volumes": [{"name": "v", "secret": {"secretName": "s", "defaultMode": 420}}],
                        "nodeSelector": {"zone": "dmz"}, "tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 300}]},
               "status": {"phase": "Running", "startTime": "2026-11-23T12:00:00.5Z",
                          "containerStatuses": [{"name": "c", "ready": true, "restartCount": 1, "image": "i", "imageID": "",
                                                 "state": {"running": {"startedAt": "2026-11-23T12:00:01Z"}}}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "annotations": {"a": "b"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]},
                        "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080, "name": "http", "targetPort": 8080}]}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "uid": "u"},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}},
               "status": {"startTime": "2026-11-23T12:00:00Z", "completionTime": "2026-11-23T12:01:00Z"}}),
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
               "involvedObject": {"kind": "Pod", "name": "p", "uid": "u"}, "reason": "Scheduled", "message": "m",
               "count": 1, "firstTimestamp": "2026-11-23T12:00:00Z", "eventTime": "2026-11-23T12:00:00.123456Z",
               "source": {"component": "c"}, "type": "Normal"}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}, "binaryData": {"b": "AAEC"}}),
    ];
    let kinds = ["Pod", "Deployment", "Service", "Job", "ConfigMap", "Event"];
    let mut rng = Rng(0x5eed_0003);
    let mut compared = 0;
    for i in 0..3_000 {
        let object = if i < seeds.len() {
            seeds[i].clone()
        } else {
            mutate_json(&mut rng, &seeds[i % seeds.len()], 0)
        };
        for info in resources()
            .iter()
            .filter(|r| kinds.contains(&r.kind) && typed::is_typed(r))
        {
            let reference = typed::roundtrip(info, &object).map(|decoded| {
                let unknown = typed::unknown_fields(&object, &decoded);
                (decoded, unknown)
            });
            let mut normalized = object.clone();
            let result = typed::normalize(info, &mut normalized).map(|unknown| (normalized, unknown));
            assert_eq!(result, reference, "{} {object}", info.kind);
            compared += usize::from(reference.is_ok());
        }
    }
    // The mutations leave enough objects decodable for the comparison to mean something.
    assert!(compared > 1_000, "{compared}");
}
