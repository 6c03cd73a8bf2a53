//! Validation of objects as upstream's `Validate*` functions do it, for the mistakes users
//! make most. Each problem is a [`FieldError`] whose text is upstream's.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::ResourceInfo;
use crate::selector::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `Invalid value: <value>: <detail>`
    Invalid(String, String),
    /// `Required value[: <detail>]`
    Required(String),
    /// `Duplicate value: <value>`
    Duplicate(String),
    /// `Forbidden: <detail>`
    Forbidden(String),
    /// `Unsupported value: <value>: supported values: <list>`
    NotSupported(String, Vec<&'static str>),
    /// `Invalid value: <detail>`, for a value upstream leaves out (a whole struct).
    InvalidOmitted(String),
    /// `Too many: <count>: must have at most <limit> items`
    TooMany(usize, usize),
    /// `Too long: must have at most <limit> bytes` (upstream leaves the value out)
    TooLong(usize),
    /// `Too long: may not be longer than <limit>` (upstream's `TooLongMaxLength`)
    TooLongThan(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: Problem,
}

impl FieldError {
    fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }

    /// Upstream's reason word and the rest of the message.
    pub fn reason_and_detail(&self) -> (String, String) {
        match &self.problem {
            Problem::Invalid(value, detail) => (format!("Invalid value: {value}"), detail.clone()),
            Problem::Required(detail) => ("Required value".into(), detail.clone()),
            Problem::Duplicate(value) => (format!("Duplicate value: {value}"), String::new()),
            Problem::Forbidden(detail) => ("Forbidden".into(), detail.clone()),
            Problem::InvalidOmitted(detail) => ("Invalid value".into(), detail.clone()),
            Problem::TooMany(count, limit) => {
                (format!("Too many: {count}"), format!("must have at most {limit} items"))
            }
            Problem::TooLong(limit) => ("Too long".into(), format!("must have at most {limit} bytes")),
            Problem::TooLongThan(limit) => ("Too long".into(), format!("may not be longer than {limit}")),
            Problem::NotSupported(value, supported) => {
                let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                (
                    format!("Unsupported value: {value}"),
                    format!("supported values: {}", list.join(", ")),
                )
            }
        }
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Go's `%#v` of a string map, which upstream prints for labels.
fn go_map(map: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", parts.join(", "))
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn qualified_name_ok(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix
                    .split('.')
                    .all(|l| crate::names::validate_name(crate::names::NameRule::Label, l).is_empty())
                && name_part_ok(name)
        }
        None => name_part_ok(key),
    }
}

fn label_value_ok(value: &str) -> bool {
    value.is_empty() || name_part_ok(value)
}

fn dns_label_ok(s: &str) -> bool {
    crate::names::validate_name(crate::names::NameRule::Label, s).is_empty()
}

fn metadata(object: &Value, errors: &mut Vec<FieldError>) {
    for (key, value) in string_map(object.pointer("/metadata/labels")) {
        if !qualified_name_ok(&key) {
            errors.push(FieldError::new(
                "metadata.labels",
                Problem::Invalid(quoted(&key), QUALIFIED_NAME_MSG.into()),
            ));
        }
        if !label_value_ok(&value) {
            errors.push(FieldError::new(
                "metadata.labels",
                Problem::Invalid(quoted(&value), LABEL_VALUE_MSG.into()),
            ));
        }
    }
    if let Some(annotations) = object.pointer("/metadata/annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (key, value) in annotations {
            total += key.len() + value.as_str().map_or(0, str::len);
            if !qualified_name_ok(key) {
                errors.push(FieldError::new(
                    "metadata.annotations",
                    Problem::Invalid(quoted(key), QUALIFIED_NAME_MSG.into()),
                ));
            }
        }
        if total > 256 * 1024 {
            errors.push(FieldError::new("metadata.annotations", Problem::TooLong(256 * 1024)));
        }
    }
}

fn containers(spec: &Value, path: &str, list: &str, required: bool, errors: &mut Vec<FieldError>) {
    let items = spec.get(list).and_then(Value::as_array);
    if required && items.is_none_or(Vec::is_empty) {
        errors.push(FieldError::new(
            format!("{path}.{list}"),
            Problem::Required(String::new()),
        ));
        return;
    }
    let mut seen = Vec::new();
    for (i, c) in items.into_iter().flatten().enumerate() {
        let here = format!("{path}.{list}[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            errors.push(FieldError::new(
                format!("{here}.name"),
                Problem::Required(String::new()),
            ));
        } else if !dns_label_ok(name) {
            errors.push(FieldError::new(
                format!("{here}.name"),
                Problem::Invalid(quoted(name), DNS_LABEL_MSG.into()),
            ));
        } else if seen.contains(&name) {
            errors.push(FieldError::new(
                format!("{here}.name"),
                Problem::Duplicate(quoted(name)),
            ));
        }
        seen.push(name);
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|i| i.trim().is_empty())
        {
            errors.push(FieldError::new(
                format!("{here}.image"),
                Problem::Required(String::new()),
            ));
        }
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        for (resource, request) in requests.into_iter().flatten() {
            let limit = limits.and_then(|l| l.get(resource)).and_then(Value::as_str);
            let request = request.as_str().unwrap_or_default();
            let exceeds = match (crate::quantity::parse(request), limit.and_then(crate::quantity::parse)) {
                (Some(request), Some(limit)) => request > limit,
                _ => false,
            };
            if exceeds {
                errors.push(FieldError::new(
                    format!("{here}.resources.requests"),
                    Problem::Invalid(
                        quoted(request),
                        format!(
                            "must be less than or equal to {resource} limit of {}",
                            limit.unwrap_or_default()
                        ),
                    ),
                ));
            }
        }
        for (j, port) in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let number = port.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&number) {
                errors.push(FieldError::new(
                    format!("{here}.ports[{j}].containerPort"),
                    Problem::Invalid(number.to_string(), "must be between 1 and 65535, inclusive".into()),
                ));
            }
            if let Some(protocol) = port.get("protocol").and_then(Value::as_str)
                && !matches!(protocol, "TCP" | "UDP" | "SCTP")
            {
                errors.push(FieldError::new(
                    format!("{here}.ports[{j}].protocol"),
                    Problem::NotSupported(quoted(protocol), vec!["SCTP", "TCP", "UDP"]),
                ));
            }
        }
    }
}

/// A pod spec at `path`; `restart` lists the restart policies allowed there.
fn pod_spec(spec: Option<&Value>, path: &str, restart: &[&'static str], errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errors.push(FieldError::new(path, Problem::Required(String::new())));
        return;
    };
    containers(spec, path, "containers", true, errors);
    containers(spec, path, "initContainers", false, errors);
    match spec.get("restartPolicy").and_then(Value::as_str) {
        Some(policy) if !restart.contains(&policy) => errors.push(FieldError::new(
            format!("{path}.restartPolicy"),
            Problem::NotSupported(quoted(policy), restart.to_vec()),
        )),
        None if restart.len() == 2 => errors.push(FieldError::new(
            format!("{path}.restartPolicy"),
            Problem::Required(format!(
                "valid values: {}",
                restart.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
            )),
        )),
        _ => {}
    }
    if let Some(dns) = spec.get("dnsPolicy").and_then(Value::as_str)
        && !matches!(dns, "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None")
    {
        errors.push(FieldError::new(
            format!("{path}.dnsPolicy"),
            Problem::NotSupported(
                quoted(dns),
                vec!["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
            ),
        ));
    }
}

/// A workload's selector must exist and select its template's labels.
fn selector_and_template(object: &Value, restart: &[&'static str], errors: &mut Vec<FieldError>) {
    let selector = object.pointer("/spec/selector");
    let labels = string_map(object.pointer("/spec/template/metadata/labels"));
    match selector {
        None | Some(Value::Null) => errors.push(FieldError::new("spec.selector", Problem::Required(String::new()))),
        Some(selector) => {
            let empty = selector
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && selector
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            if empty {
                errors.push(FieldError::new(
                    "spec.selector",
                    Problem::Invalid("v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}".into(), "empty selector is invalid for deployment".into()),
                ));
            } else if !selector_matches(selector, &labels) {
                errors.push(FieldError::new(
                    "spec.template.metadata.labels",
                    Problem::Invalid(go_map(&labels), "`selector` does not match template `labels`".into()),
                ));
            }
        }
    }
    if let Some(replicas) = object.pointer("/spec/replicas").and_then(Value::as_i64) {
        non_negative("spec.replicas", replicas, errors);
    }
    pod_spec(
        object.pointer("/spec/template/spec"),
        "spec.template.spec",
        restart,
        errors,
    );
}

fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    LabelSelector::parse(&crate::selector::label_selector_text(selector)).is_ok_and(|s| s.matches(labels))
}

fn service(object: &Value, errors: &mut Vec<FieldError>) {
    let kind = object
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        errors.push(FieldError::new(
            "spec.type",
            Problem::NotSupported(
                quoted(kind),
                vec!["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ),
        ));
    }
    let headless = object.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    let ports = object.pointer("/spec/ports").and_then(Value::as_array);
    if kind != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        errors.push(FieldError::new("spec.ports", Problem::Required(String::new())));
    }
    if kind == "ExternalName"
        && object
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        errors.push(FieldError::new("spec.externalName", Problem::Required(String::new())));
    }
    let several = ports.is_some_and(|p| p.len() > 1);
    let mut names = Vec::new();
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].port"),
                Problem::Invalid(number.to_string(), "must be between 1 and 65535, inclusive".into()),
            ));
        }
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
        if several && name.is_empty() {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                Problem::Required(String::new()),
            ));
        } else if !name.is_empty() && names.contains(&name) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                Problem::Duplicate(quoted(name)),
            ));
        }
        names.push(name);
    }
}

/// Problems with `object` as a new (or replacing) object of `info`'s kind.
pub fn validate(info: &ResourceInfo, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    metadata(object, &mut errors);
    const ALWAYS: &[&str] = &["Always"];
    // (Workloads with a selector check theirs with the selector.)
    if (info.group, info.kind) == ("", "ReplicationController")
        && let Some(replicas) = object.pointer("/spec/replicas").and_then(Value::as_i64)
    {
        non_negative("spec.replicas", replicas, &mut errors);
    }
    match (info.group, info.kind) {
        ("", "Pod") => pod_spec(
            object.get("spec"),
            "spec",
            &["Always", "OnFailure", "Never"],
            &mut errors,
        ),
        ("", "Service") => service(object, &mut errors),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            selector_and_template(object, ALWAYS, &mut errors)
        }
        ("batch", "Job") => job_spec(object.get("spec"), "spec", &mut errors),
        ("batch", "CronJob") => job_spec(
            object.pointer("/spec/jobTemplate/spec"),
            "spec.jobTemplate.spec",
            &mut errors,
        ),
        _ => {}
    }
    errors
}

/// A Job's spec (or a CronJob's Job template's) at `path`, in upstream's order: the
/// policies, then the pod template.
fn job_spec(spec: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(spec) = spec {
        job_counts(spec, path, errors);
    }
    pod_failure_policy(spec, path, errors);
    if let Some(spec) = spec {
        success_policy(spec, path, errors);
        replacement_policy(spec, path, errors);
    }
    let template = spec.and_then(|s| s.pointer("/template/spec"));
    pod_spec(
        template,
        &format!("{path}.template.spec"),
        &["OnFailure", "Never"],
        errors,
    );
    pod_failure_policy_restart(spec, path, errors);
}

/// Upstream's limits for Indexed Jobs.
const MAX_PARALLELISM_INDEXED: i64 = 100_000;
const MAX_FAILED_INDEXES: i64 = 100_000;
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
const PARALLELISM_HIGH_COMPLETIONS: i64 = 10_000;
const MAX_FAILED_INDEXES_HIGH_COMPLETIONS: i64 = 10_000;

/// The counts of a Job spec and what Indexed completion asks of them (upstream's
/// `validateJobSpec` up to the policies).
fn job_counts(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let number = |field: &str| spec.get(field).and_then(Value::as_i64);
    let invalid = |field: &str, value: i64, detail: String| {
        FieldError::new(format!("{path}.{field}"), Problem::Invalid(value.to_string(), detail))
    };
    for field in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if let Some(value) = number(field) {
            non_negative(&format!("{path}.{field}"), value, errors);
        }
        if field == "maxFailedIndexes" && number(field).is_some() && number("backoffLimitPerIndex").is_none() {
            errors.push(FieldError::new(
                format!("{path}.backoffLimitPerIndex"),
                Problem::Required("when maxFailedIndexes is specified".into()),
            ));
        }
    }
    if let Some(managed_by) = spec.get("managedBy").and_then(Value::as_str) {
        domain_prefixed_path(managed_by, &format!("{path}.managedBy"), errors);
        if managed_by.len() > 63 {
            errors.push(FieldError::new(format!("{path}.managedBy"), Problem::TooLongThan(63)));
        }
    }
    let mode = spec.get("completionMode").and_then(Value::as_str);
    match mode {
        Some("Indexed") => {
            let completions = number("completions");
            if completions.is_none() {
                errors.push(FieldError::new(
                    format!("{path}.completions"),
                    Problem::Required("when completion mode is Indexed".into()),
                ));
            }
            if let Some(parallelism) = number("parallelism").filter(|p| *p > MAX_PARALLELISM_INDEXED) {
                errors.push(invalid(
                    "parallelism",
                    parallelism,
                    format!("must be less than or equal to {MAX_PARALLELISM_INDEXED} when completion mode is Indexed"),
                ));
            }
            let max_failed = number("maxFailedIndexes");
            if let (Some(completions), Some(max)) = (completions, max_failed)
                && max > completions
            {
                errors.push(invalid(
                    "maxFailedIndexes",
                    max,
                    "must be less than or equal to completions".into(),
                ));
            }
            if let Some(max) = max_failed.filter(|m| *m > MAX_FAILED_INDEXES) {
                errors.push(invalid(
                    "maxFailedIndexes",
                    max,
                    format!("must be less than or equal to {MAX_FAILED_INDEXES}"),
                ));
            }
            let high = completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT);
            if high && number("backoffLimitPerIndex").is_some() {
                if max_failed.is_none() {
                    errors.push(FieldError::new(
                        format!("{path}.maxFailedIndexes"),
                        Problem::Required(format!(
                            "must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"
                        )),
                    ));
                }
                let suffix = format!(
                    "when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
                );
                if let Some(parallelism) = number("parallelism").filter(|p| *p > PARALLELISM_HIGH_COMPLETIONS) {
                    errors.push(invalid(
                        "parallelism",
                        parallelism,
                        format!("must be less than or equal to {PARALLELISM_HIGH_COMPLETIONS} {suffix}"),
                    ));
                }
                if let Some(max) = max_failed.filter(|m| *m > MAX_FAILED_INDEXES_HIGH_COMPLETIONS) {
                    errors.push(invalid(
                        "maxFailedIndexes",
                        max,
                        format!("must be less than or equal to {MAX_FAILED_INDEXES_HIGH_COMPLETIONS} {suffix}"),
                    ));
                }
            }
        }
        Some("NonIndexed") | None => {
            for field in ["backoffLimitPerIndex", "maxFailedIndexes"] {
                if let Some(value) = number(field) {
                    errors.push(invalid(field, value, "requires indexed completion mode".into()));
                }
            }
        }
        Some(other) => errors.push(FieldError::new(
            format!("{path}.completionMode"),
            Problem::NotSupported(quoted(other), vec!["NonIndexed", "Indexed"]),
        )),
    }
}

/// Upstream's `validateSuccessPolicy`: only for Indexed Jobs; 1 to 20 rules, each with
/// indexes (within completions, in increasing order) or a count (at most completions, and
/// at most the indexes it names).
fn success_policy(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(policy) = spec.get("successPolicy").filter(|p| !p.is_null()) else {
        return;
    };
    let policy_path = format!("{path}.successPolicy");
    if spec.get("completionMode").and_then(Value::as_str) != Some("Indexed") {
        errors.push(FieldError::new(
            &policy_path,
            // Upstream prints the Go struct; its JSON says the same.
            Problem::Invalid(policy.to_string(), "requires indexed completion mode".into()),
        ));
        return;
    }
    let completions = spec.get("completions").and_then(Value::as_i64).unwrap_or(0);
    let rules_path = format!("{policy_path}.rules");
    let rules = list_at(policy, "rules");
    if rules.is_empty() {
        errors.push(FieldError::new(
            &rules_path,
            Problem::Required("at least one rules must be specified when the successPolicy is specified".into()),
        ));
    }
    if rules.len() > 20 {
        errors.push(FieldError::new(&rules_path, Problem::TooMany(rules.len(), 20)));
    }
    for (i, rule) in rules.iter().enumerate() {
        let rule_path = format!("{rules_path}[{i}]");
        let indexes = rule.get("succeededIndexes").and_then(Value::as_str);
        let count = rule.get("succeededCount").and_then(Value::as_i64);
        if indexes.is_none() && count.is_none() {
            errors.push(FieldError::new(
                &rule_path,
                Problem::Required("at least one of succeededCount or succeededIndexes must be specified".into()),
            ));
        }
        let mut total = 0;
        if let Some(indexes) = indexes {
            let indexes_path = format!("{rule_path}.succeededIndexes");
            if indexes.len() > 65536 {
                errors.push(FieldError::new(&indexes_path, Problem::TooLong(65536)));
            }
            match index_intervals(indexes, completions) {
                Ok(intervals) => total = intervals.iter().map(|(first, last)| last - first + 1).sum(),
                Err(err) => errors.push(FieldError::new(
                    &indexes_path,
                    Problem::Invalid(quoted(indexes), format!("error parsing succeededIndexes: {err}")),
                )),
            }
        }
        if let Some(count) = count {
            let count_path = format!("{rule_path}.succeededCount");
            non_negative(&count_path, count, errors);
            if count > completions {
                errors.push(FieldError::new(
                    &count_path,
                    Problem::Invalid(
                        count.to_string(),
                        format!("must be less than or equal to {completions} (the number of specified completions)"),
                    ),
                ));
            }
            if indexes.is_some() && count > total {
                errors.push(FieldError::new(
                    &count_path,
                    Problem::Invalid(
                        count.to_string(),
                        format!("must be less than or equal to {total} (the number of indexes in the specified succeededIndexes field)"),
                    ),
                ));
            }
        }
    }
}

/// Upstream's `validateIndexesFormat`: `"1,3-5"` as intervals within `completions`, each
/// after the one before.
pub fn index_intervals(text: &str, completions: i64) -> Result<Vec<(i64, i64)>, String> {
    let mut intervals: Vec<(i64, i64)> = Vec::new();
    if text.is_empty() {
        return Ok(intervals);
    }
    let index = |part: &str| -> Result<i64, String> {
        let value: i64 = part
            .parse()
            .map_err(|_| format!("cannot convert string to integer for index: {part:?}"))?;
        if value >= completions {
            return Err(format!("too large index: {part:?}"));
        }
        Ok(value)
    };
    for fragment in text.split(',') {
        let parts: Vec<&str> = fragment.split('-').collect();
        if parts.len() > 2 {
            return Err(format!(
                "the fragment {fragment:?} violates the requirement that an index interval can have at most two parts separated by '-'"
            ));
        }
        let first = index(parts[0])?;
        let last = match parts.get(1) {
            Some(part) => {
                let last = index(part)?;
                if first >= last {
                    return Err(format!("non-increasing order, previous: {first}, current: {last}"));
                }
                last
            }
            None => first,
        };
        if let Some((_, previous)) = intervals.last()
            && *previous >= first
        {
            return Err(format!("non-increasing order, previous: {previous}, current: {first}"));
        }
        intervals.push((first, last));
    }
    Ok(intervals)
}

/// Upstream's `IsDomainPrefixedPath` (`acme.io/foo`): a DNS subdomain, `/`, a path of
/// URL path characters.
fn domain_prefixed_path(text: &str, path: &str, errors: &mut Vec<FieldError>) {
    if text.is_empty() {
        errors.push(FieldError::new(path, Problem::Required(String::new())));
        return;
    }
    let Some((host, rest)) = text.split_once('/').filter(|(h, r)| !h.is_empty() && !r.is_empty()) else {
        errors.push(FieldError::new(
            path,
            Problem::Invalid(
                quoted(text),
                "must be a domain-prefixed path (such as \"acme.io/foo\")".into(),
            ),
        ));
        return;
    };
    for problem in crate::names::validate_name(crate::names::NameRule::Subdomain, host) {
        errors.push(FieldError::new(path, Problem::Invalid(quoted(host), problem)));
    }
    let path_char = |c: char| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c);
    if !rest.chars().all(path_char) {
        errors.push(FieldError::new(
            path,
            Problem::Invalid(
                quoted(rest),
                "Invalid path (regex used for validation is '[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+')".into(),
            ),
        ));
    }
}

/// Upstream's `validatePodReplacementPolicy`: only Failed with a pod failure policy.
fn replacement_policy(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(replacement) = spec.get("podReplacementPolicy").and_then(Value::as_str) else {
        return;
    };
    let supported: &[&'static str] = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        &["Failed"]
    } else {
        &["Failed", "TerminatingOrFailed"]
    };
    if !supported.contains(&replacement) {
        errors.push(FieldError::new(
            format!("{path}.podReplacementPolicy"),
            Problem::NotSupported(quoted(replacement), supported.to_vec()),
        ));
    }
}

const POD_FAILURE_POLICY_ACTIONS: &[&str] = &["Count", "FailIndex", "FailJob", "Ignore"];

/// Upstream's `validatePodFailurePolicy` for a Job spec at `path`: only with restartPolicy
/// Never; at most 20 rules, each with an action and exactly one of `onExitCodes` (a
/// template's container, In or NotIn, 1 to 255 ordered unique codes, no 0 for In) and
/// `onPodConditions` (at most 20 patterns of a condition type and status).
fn pod_failure_policy(spec: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let Some(policy) = spec.get("podFailurePolicy").filter(|p| !p.is_null()) else {
        return;
    };
    let containers: HashSet<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| {
            spec.pointer(&format!("/template/spec/{list}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let rules_path = format!("{path}.podFailurePolicy.rules");
    let rules = list_at(policy, "rules");
    if rules.len() > 20 {
        errors.push(FieldError::new(&rules_path, Problem::TooMany(rules.len(), 20)));
    }
    for (i, rule) in rules.iter().enumerate() {
        let rule_path = format!("{rules_path}[{i}]");
        match rule.get("action").and_then(Value::as_str).unwrap_or_default() {
            "" => errors.push(FieldError::new(
                format!("{rule_path}.action"),
                Problem::Required(format!("valid values: {}", go_list(POD_FAILURE_POLICY_ACTIONS))),
            )),
            "FailIndex" if spec.get("backoffLimitPerIndex").is_none_or(Value::is_null) => {
                errors.push(FieldError::new(
                    format!("{rule_path}.action"),
                    Problem::Invalid(
                        quoted("FailIndex"),
                        "requires the backoffLimitPerIndex to be set".into(),
                    ),
                ));
            }
            action if !POD_FAILURE_POLICY_ACTIONS.contains(&action) => errors.push(FieldError::new(
                format!("{rule_path}.action"),
                Problem::NotSupported(quoted(action), POD_FAILURE_POLICY_ACTIONS.to_vec()),
            )),
            _ => {}
        }
        let on_exit_codes = rule.get("onExitCodes").filter(|c| !c.is_null());
        let on_conditions = rule
            .get("onPodConditions")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        if let Some(codes) = on_exit_codes {
            exit_codes_requirement(codes, &format!("{rule_path}.onExitCodes"), &containers, errors);
        }
        if let Some(patterns) = on_conditions {
            let patterns_path = format!("{rule_path}.onPodConditions");
            if patterns.len() > 20 {
                errors.push(FieldError::new(&patterns_path, Problem::TooMany(patterns.len(), 20)));
            }
            for (j, pattern) in patterns.iter().enumerate() {
                let kind = pattern.get("type").and_then(Value::as_str).unwrap_or_default();
                if !qualified_name_ok(kind) {
                    errors.push(FieldError::new(
                        format!("{patterns_path}[{j}].type"),
                        Problem::Invalid(quoted(kind), QUALIFIED_NAME_MSG.into()),
                    ));
                }
                let status = pattern.get("status").and_then(Value::as_str).unwrap_or_default();
                if !["True", "False", "Unknown"].contains(&status) {
                    errors.push(FieldError::new(
                        format!("{patterns_path}[{j}].status"),
                        Problem::NotSupported(quoted(status), vec!["False", "True", "Unknown"]),
                    ));
                }
            }
        }
        match (on_exit_codes, on_conditions) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                &rule_path,
                Problem::InvalidOmitted("specifying both OnExitCodes and OnPodConditions is not supported".into()),
            )),
            (None, None) => errors.push(FieldError::new(
                &rule_path,
                Problem::InvalidOmitted("specifying one of OnExitCodes and OnPodConditions is required".into()),
            )),
            _ => {}
        }
    }
}

/// Upstream checks a pod failure policy's restart policy after the template's own checks.
fn pod_failure_policy_restart(spec: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec.filter(|s| s.get("podFailurePolicy").is_some_and(|p| !p.is_null())) else {
        return;
    };
    // (Other restart policies than OnFailure and Never have their error already.)
    if spec.pointer("/template/spec/restartPolicy").and_then(Value::as_str) == Some("OnFailure") {
        errors.push(FieldError::new(
            format!("{path}.template.spec.restartPolicy"),
            Problem::Invalid(
                quoted("OnFailure"),
                "only \"Never\" is supported when podFailurePolicy is specified".into(),
            ),
        ));
    }
}

fn exit_codes_requirement(codes: &Value, path: &str, containers: &HashSet<&str>, errors: &mut Vec<FieldError>) {
    let operator = codes.get("operator").and_then(Value::as_str).unwrap_or_default();
    if operator.is_empty() {
        errors.push(FieldError::new(
            format!("{path}.operator"),
            Problem::Required(format!("valid values: {}", go_list(&["In", "NotIn"]))),
        ));
    } else if !["In", "NotIn"].contains(&operator) {
        errors.push(FieldError::new(
            format!("{path}.operator"),
            Problem::NotSupported(quoted(operator), vec!["In", "NotIn"]),
        ));
    }
    if let Some(name) = codes.get("containerName").and_then(Value::as_str)
        && !containers.contains(name)
    {
        errors.push(FieldError::new(
            format!("{path}.containerName"),
            Problem::Invalid(
                quoted(name),
                "must be one of the container or initContainer names in the pod template".into(),
            ),
        ));
    }
    let values: Vec<i64> = codes
        .get("values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect();
    let values_path = format!("{path}.values");
    let listed = || {
        format!(
            "[]int32{{{}}}",
            values.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        )
    };
    if values.is_empty() {
        errors.push(FieldError::new(
            &values_path,
            Problem::Invalid(listed(), "at least one value is required".into()),
        ));
    } else if values.len() > 255 {
        errors.push(FieldError::new(&values_path, Problem::TooMany(values.len(), 255)));
    }
    let mut seen = HashSet::new();
    for (j, value) in values.iter().enumerate() {
        if operator == "In" && *value == 0 {
            errors.push(FieldError::new(
                format!("{values_path}[{j}]"),
                Problem::Invalid("0".into(), "must not be 0 for the In operator".into()),
            ));
        }
        if !seen.insert(value) {
            errors.push(FieldError::new(
                format!("{values_path}[{j}]"),
                Problem::Duplicate(value.to_string()),
            ));
        }
    }
    if values.windows(2).any(|pair| pair[0] > pair[1]) {
        errors.push(FieldError::new(
            &values_path,
            Problem::Invalid(listed(), "must be ordered".into()),
        ));
    }
}

/// Upstream's `ValidateJobSpecUpdate`: what a Job may not change once made. Completions
/// change only for an Indexed Job, together with parallelism (elastic Indexed Jobs).
fn job_update(old: &Value, new: &Value, errors: &mut Vec<FieldError>) {
    let at = |object: &Value, field: &str| object.get("spec").and_then(|s| s.get(field)).cloned();
    let immutable = |field: &str, errors: &mut Vec<FieldError>| {
        let value = at(new, field);
        if at(old, field) != value {
            errors.push(FieldError::new(
                format!("spec.{field}"),
                Problem::Invalid(
                    value.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
                    "field is immutable".into(),
                ),
            ));
        }
    };
    let indexed = at(new, "completionMode").as_ref().and_then(Value::as_str) == Some("Indexed");
    let completions = at(new, "completions");
    if !indexed {
        immutable("completions", errors);
    } else if at(old, "completions") != completions
        && let Some(count) = completions.filter(|c| !c.is_null())
        && Some(&count) != at(new, "parallelism").as_ref()
    {
        errors.push(FieldError::new(
            "spec.completions",
            Problem::Invalid(
                count.to_string(),
                "can only be modified in tandem with spec.parallelism".into(),
            ),
        ));
    }
    for field in [
        "selector",
        "template",
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
        "successPolicy",
    ] {
        immutable(field, errors);
    }
}

/// The list at `key`, empty when there is none.
fn list_at<'v>(object: &'v Value, key: &str) -> &'v [Value] {
    object
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Upstream's `ValidateNonnegativeField`.
fn non_negative(path: &str, value: i64, errors: &mut Vec<FieldError>) {
    if value < 0 {
        errors.push(FieldError::new(
            path,
            Problem::Invalid(value.to_string(), "must be greater than or equal to 0".into()),
        ));
    }
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Problems with changing `old` into `new` that `validate` cannot see: immutable fields.
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let changed = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
    match (info.group, info.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") if changed("/spec/selector") => {
            errors.push(FieldError::new(
                "spec.selector",
                Problem::Invalid(
                    new.pointer("/spec/selector").map(Value::to_string).unwrap_or_default(),
                    "field is immutable".into(),
                ),
            ));
        }
        ("batch", "Job") => job_update(old, new, &mut errors),
        ("", "Pod") => {
            // Only images, activeDeadlineSeconds and added tolerations may change.
            let strip = |pod: &Value| {
                let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("image");
                        }
                    }
                }
                if let Some(s) = spec.as_object_mut() {
                    for field in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "nodeName",
                    ] {
                        s.remove(field);
                    }
                }
                spec
            };
            if strip(old) != strip(new) {
                errors.push(FieldError::new(
                    "spec",
                    Problem::Forbidden("pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into()),
                ));
            }
        }
        _ => {}
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find;
    use serde_json::json;

    fn texts(errors: &[FieldError]) -> Vec<String> {
        errors
            .iter()
            .map(|e| {
                let (reason, detail) = e.reason_and_detail();
                if detail.is_empty() {
                    format!("{}: {reason}", e.field)
                } else {
                    format!("{}: {reason}: {detail}", e.field)
                }
            })
            .collect()
    }

    #[test]
    fn requests_within_limits_and_replicas_not_negative() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Always", "containers": [
            {"name": "a", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "64Mi"},
                                                      "limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(
            texts(&validate(find("", "v1", "pods").unwrap(), &pod)),
            vec![
                r#"spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1"#
            ]
        );
        let controller = json!({"metadata": {"name": "d"}, "spec": {"replicas": -1}});
        assert_eq!(
            texts(&validate(
                find("", "v1", "replicationcontrollers").unwrap(),
                &controller
            )),
            vec!["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]
        );
    }

    #[test]
    fn pods() {
        let pods = find("", "v1", "pods").unwrap();
        let ok = json!({"metadata": {"labels": {"app": "web", "example.com/tier": "front"}},
                        "spec": {"restartPolicy": "Always", "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}});
        assert!(validate(pods, &ok).is_empty(), "{:?}", validate(pods, &ok));
        let bad = json!({"metadata": {"labels": {"bad key!": "x", "app": "bad value!"}},
                         "spec": {"restartPolicy": "Sometimes",
                                  "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 70000}]},
                                                 {"name": "web", "image": ""}, {"name": "Bad_Name", "image": "x"}]}});
        let got = texts(&validate(pods, &bad));
        for expected in [
            "metadata.labels: Invalid value: \"bad key!\": name part must consist of",
            "metadata.labels: Invalid value: \"bad value!\": a valid label must be an empty string",
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[1].name: Duplicate value: \"web\"",
            "spec.containers[1].image: Required value",
            "spec.containers[2].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(expected)),
                "{expected}\nnot in {got:#?}"
            );
        }
        let none = texts(&validate(pods, &json!({"spec": {}})));
        assert_eq!(none, vec!["spec.containers: Required value"]);
    }

    #[test]
    fn workloads() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let make = |selector: Value, labels: Value| {
            json!({"spec": {"selector": selector, "template": {"metadata": {"labels": labels},
                   "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "x"}]}}}})
        };
        assert!(
            validate(
                deploy,
                &make(json!({"matchLabels": {"app": "web"}}), json!({"app": "web", "x": "y"}))
            )
            .is_empty()
        );
        let got = texts(&validate(
            deploy,
            &make(json!({"matchLabels": {"app": "web"}}), json!({"app": "db"})),
        ));
        assert_eq!(
            got,
            vec![
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"db\"}: `selector` does not match template `labels`"
            ]
        );
        let got = texts(&validate(
            deploy,
            &json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "x"}]}}}}),
        ));
        assert_eq!(got, vec!["spec.selector: Required value"]);
        let never = make(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}),
            json!({"app": "web"}),
        );
        let mut never = never;
        never["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(
            texts(&validate(deploy, &never)),
            vec!["spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""]
        );

        let job = find("batch", "v1", "jobs").unwrap();
        let got = texts(&validate(
            job,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        ));
        assert_eq!(
            got,
            vec!["spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""]
        );

        let old = make(json!({"matchLabels": {"app": "web"}}), json!({"app": "web"}));
        let new = make(json!({"matchLabels": {"app": "other"}}), json!({"app": "other"}));
        assert_eq!(validate_update(deploy, &old, &new)[0].field, "spec.selector");
        assert!(validate_update(deploy, &old, &old).is_empty());
    }

    #[test]
    fn pod_failure_policies_as_upstream_words_them() {
        let job = find("batch", "v1", "jobs").unwrap();
        let with_rules = |restart: &str, rules: Value| {
            json!({"spec": {"podFailurePolicy": {"rules": rules}, "template": {"spec": {"restartPolicy": restart,
                "initContainers": [{"name": "setup", "image": "x"}], "containers": [{"name": "main", "image": "x"}]}}}})
        };
        let good = json!([
            {"action": "FailJob", "onExitCodes": {"containerName": "setup", "operator": "In", "values": [1, 42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        ]);
        assert_eq!(
            texts(&validate(job, &with_rules("Never", good.clone()))),
            Vec::<String>::new()
        );
        assert_eq!(
            texts(&validate(job, &with_rules("OnFailure", good))),
            [
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"
            ]
        );
        let bad = json!([
            {"action": "FailJob", "onExitCodes": {"containerName": "xyz", "operator": "In", "values": [2, 0, 2]}},
            {"action": "Retry", "onPodConditions": [{"type": "DisruptionTarget", "status": "Maybe"}]},
            {"action": "Ignore"},
            {"action": "Count", "onExitCodes": {"operator": "Is", "values": []},
             "onPodConditions": [{"type": "Ready", "status": "True"}]},
            {"onExitCodes": {"operator": "In", "values": [1]}},
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [1]}},
        ]);
        assert_eq!(
            texts(&validate(job, &with_rules("Never", bad))),
            [
                "spec.podFailurePolicy.rules[0].onExitCodes.containerName: Invalid value: \"xyz\": must be one of the container or initContainer names in the pod template",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[1]: Invalid value: 0: must not be 0 for the In operator",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[2]: Duplicate value: 2",
                "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: []int32{2, 0, 2}: must be ordered",
                "spec.podFailurePolicy.rules[1].action: Unsupported value: \"Retry\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
                "spec.podFailurePolicy.rules[1].onPodConditions[0].status: Unsupported value: \"Maybe\": supported values: \"False\", \"True\", \"Unknown\"",
                "spec.podFailurePolicy.rules[2]: Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
                "spec.podFailurePolicy.rules[3].onExitCodes.operator: Unsupported value: \"Is\": supported values: \"In\", \"NotIn\"",
                "spec.podFailurePolicy.rules[3].onExitCodes.values: Invalid value: []int32{}: at least one value is required",
                "spec.podFailurePolicy.rules[3]: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported",
                "spec.podFailurePolicy.rules[4].action: Required value: valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]",
                "spec.podFailurePolicy.rules[5].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set",
            ]
        );
        let many: Vec<Value> = (1..=21)
            .map(|i| json!({"action": "Count", "onExitCodes": {"operator": "In", "values": [i]}}))
            .collect();
        assert_eq!(
            texts(&validate(job, &with_rules("Never", json!(many)))),
            ["spec.podFailurePolicy.rules: Too many: 21: must have at most 20 items"]
        );
        // A CronJob's Job template is held to the same rules.
        let cron = find("batch", "v1", "cronjobs").unwrap();
        let mut template = with_rules(
            "OnFailure",
            json!([{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}]),
        );
        let cron_job = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": template["spec"].take()}}});
        assert_eq!(
            texts(&validate(cron, &cron_job)),
            [
                "spec.jobTemplate.spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"
            ]
        );
        let mut replaced = with_rules("Never", json!([{"action": "Ignore", "onExitCodes": {"values": [1]}}]));
        replaced["spec"]["podReplacementPolicy"] = json!("TerminatingOrFailed");
        assert_eq!(
            texts(&validate(job, &replaced)),
            [
                "spec.podFailurePolicy.rules[0].onExitCodes.operator: Required value: valid values: [\"In\" \"NotIn\"]",
                "spec.podReplacementPolicy: Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\"",
            ]
        );
    }

    #[test]
    fn indexed_jobs_success_policies_and_limits_per_index() {
        let job = find("batch", "v1", "jobs").unwrap();
        let spec = |fields: Value| {
            let mut spec =
                json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}});
            for (key, value) in fields.as_object().unwrap() {
                spec[key] = value.clone();
            }
            json!({"spec": spec})
        };
        let good = spec(json!({"completionMode": "Indexed", "completions": 10, "parallelism": 3,
            "backoffLimitPerIndex": 1, "maxFailedIndexes": 5,
            "successPolicy": {"rules": [{"succeededIndexes": "0,2-5", "succeededCount": 3}, {"succeededCount": 10}]}}));
        assert_eq!(texts(&validate(job, &good)), Vec::<String>::new());
        let bad = spec(json!({"completionMode": "Indexed", "completions": 4, "parallelism": -1,
            "maxFailedIndexes": 5,
            "successPolicy": {"rules": [{"succeededIndexes": "0,2-1"}, {"succeededIndexes": "1-2", "succeededCount": 3},
                {}, {"succeededIndexes": "1-2-3"}, {"succeededIndexes": "x"}, {"succeededIndexes": "4"},
                {"succeededIndexes": "2,1"}, {"succeededCount": 5}]}}));
        assert_eq!(
            texts(&validate(job, &bad)),
            [
                "spec.parallelism: Invalid value: -1: must be greater than or equal to 0",
                "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
                "spec.maxFailedIndexes: Invalid value: 5: must be less than or equal to completions",
                "spec.successPolicy.rules[0].succeededIndexes: Invalid value: \"0,2-1\": error parsing succeededIndexes: non-increasing order, previous: 2, current: 1",
                "spec.successPolicy.rules[1].succeededCount: Invalid value: 3: must be less than or equal to 2 (the number of indexes in the specified succeededIndexes field)",
                "spec.successPolicy.rules[2]: Required value: at least one of succeededCount or succeededIndexes must be specified",
                "spec.successPolicy.rules[3].succeededIndexes: Invalid value: \"1-2-3\": error parsing succeededIndexes: the fragment \"1-2-3\" violates the requirement that an index interval can have at most two parts separated by '-'",
                "spec.successPolicy.rules[4].succeededIndexes: Invalid value: \"x\": error parsing succeededIndexes: cannot convert string to integer for index: \"x\"",
                "spec.successPolicy.rules[5].succeededIndexes: Invalid value: \"4\": error parsing succeededIndexes: too large index: \"4\"",
                "spec.successPolicy.rules[6].succeededIndexes: Invalid value: \"2,1\": error parsing succeededIndexes: non-increasing order, previous: 2, current: 1",
                "spec.successPolicy.rules[7].succeededCount: Invalid value: 5: must be less than or equal to 4 (the number of specified completions)",
            ]
        );
        let plain = spec(
            json!({"completions": 2, "backoffLimitPerIndex": 1, "podReplacementPolicy": "Sometimes",
            "successPolicy": {"rules": [{"succeededCount": 1}]}}),
        );
        assert_eq!(
            texts(&validate(job, &plain)),
            [
                "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
                "spec.successPolicy: Invalid value: {\"rules\":[{\"succeededCount\":1}]}: requires indexed completion mode",
                "spec.podReplacementPolicy: Unsupported value: \"Sometimes\": supported values: \"Failed\", \"TerminatingOrFailed\"",
            ]
        );
        assert_eq!(index_intervals("0,2-4,7", 8), Ok(vec![(0, 0), (2, 4), (7, 7)]));
        let managed = |by: &str| texts(&validate(job, &spec(json!({"completions": 1, "managedBy": by}))));
        assert!(managed("kueue.x-k8s.io/multikueue").is_empty());
        assert_eq!(
            managed("kueue"),
            ["spec.managedBy: Invalid value: \"kueue\": must be a domain-prefixed path (such as \"acme.io/foo\")"]
        );
        assert_eq!(
            managed(&format!("example.com/{}", "x".repeat(60))),
            ["spec.managedBy: Too long: may not be longer than 63"]
        );
    }

    #[test]
    fn jobs_keep_what_upstream_keeps() {
        let job = find("batch", "v1", "jobs").unwrap();
        let old = json!({"spec": {"completions": 3, "parallelism": 3, "completionMode": "NonIndexed", "suspend": true,
            "podFailurePolicy": {"rules": []}, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let mut new = old.clone();
        new["spec"]["suspend"] = json!(false);
        new["spec"]["parallelism"] = json!(5);
        assert!(
            validate_update(job, &old, &new).is_empty(),
            "suspend and parallelism change"
        );
        new["spec"]["completions"] = json!(5);
        new["spec"]["podFailurePolicy"] = Value::Null;
        assert_eq!(
            texts(&validate_update(job, &old, &new)),
            [
                "spec.completions: Invalid value: 5: field is immutable",
                "spec.podFailurePolicy: Invalid value: null: field is immutable",
            ]
        );
        // Elastic Indexed Jobs: completions move with parallelism.
        let mut old = old;
        old["spec"]["completionMode"] = json!("Indexed");
        old["spec"]["podFailurePolicy"] = Value::Null;
        let mut new = old.clone();
        new["spec"]["completions"] = json!(5);
        new["spec"]["parallelism"] = json!(5);
        assert!(validate_update(job, &old, &new).is_empty());
        new["spec"]["parallelism"] = json!(4);
        assert_eq!(
            texts(&validate_update(job, &old, &new)),
            ["spec.completions: Invalid value: 5: can only be modified in tandem with spec.parallelism"]
        );
    }

    #[test]
    fn pod_updates() {
        let pods = find("", "v1", "pods").unwrap();
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a:1"}]}});
        let image = json!({"spec": {"containers": [{"name": "c", "image": "a:2"}]}});
        let rename = json!({"spec": {"containers": [{"name": "d", "image": "a:1"}]}});
        assert!(validate_update(pods, &old, &image).is_empty());
        let got = validate_update(pods, &old, &rename);
        assert_eq!(got.len(), 1);
        assert!(texts(&got)[0].starts_with("spec: Forbidden: pod updates may not change fields other than"));
    }

    #[test]
    fn services() {
        let svc = find("", "v1", "services").unwrap();
        let got = texts(&validate(
            svc,
            &json!({"spec": {"type": "Bogus", "ports": [{"port": 80}, {"port": 0}]}}),
        ));
        assert!(got.contains(&"spec.type: Unsupported value: \"Bogus\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"".to_string()), "{got:?}");
        assert!(
            got.contains(&"spec.ports[0].name: Required value".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive".to_string()),
            "{got:?}"
        );
        assert_eq!(
            texts(&validate(svc, &json!({"spec": {}}))),
            vec!["spec.ports: Required value"]
        );
        assert!(validate(svc, &json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
