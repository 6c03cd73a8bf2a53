//! The review APIs, answered at creation and never stored: SelfSubjectReview (`kubectl auth
//! whoami`), TokenReview, SelfSubjectAccessReview (`kubectl auth can-i`),
//! SelfSubjectRulesReview (`kubectl auth can-i --list`) and SubjectAccessReview.
//!
//! Decisions come from [`authorize`], the server's authorizer. Until RBAC arrives it is
//! upstream's `AlwaysAllow` for authenticated users (every request the server serves is
//! already authenticated), and it denies anonymous subjects.

use http::StatusCode;
use rkube_api::ResourceInfo;
use rkube_pki::Identity;
use serde_json::{Value, json};

use crate::State;
use crate::object::bad_request;
use crate::response::ApiError;

const ANONYMOUS: &str = "system:anonymous";
const UNAUTHENTICATED: &str = "system:unauthenticated";

/// The authorizer's answer for a subject: (allowed, reason).
pub(crate) fn authorize(user: &str, groups: &[String]) -> (bool, String) {
    if user.is_empty() || user == ANONYMOUS || groups.iter().any(|g| g == UNAUTHENTICATED) {
        return (false, String::new());
    }
    (true, String::new())
}

fn user_info(identity: &Identity) -> Value {
    let mut groups = identity.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    let mut info = json!({"username": identity.user, "groups": groups});
    if !identity.uid.is_empty() {
        info["uid"] = json!(identity.uid);
    }
    info
}

fn required<'a>(object: &'a Value, pointer: &str, field: &str) -> Result<&'a Value, ApiError> {
    object.pointer(pointer).filter(|v| !v.is_null()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{field}: Required value"),
        )
    })
}

/// Answers a review `object` of `info`'s kind sent by `identity`: the object back with its
/// status, as upstream (201 Created).
pub(crate) fn answer(
    state: &State,
    identity: &Identity,
    info: &ResourceInfo,
    mut object: Value,
) -> Result<Value, ApiError> {
    if object
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != info.kind)
    {
        return Err(bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            object.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
            info.api_version()
        )));
    }
    let status = match info.kind {
        "SelfSubjectReview" => json!({"userInfo": user_info(identity)}),
        "TokenReview" => {
            let token = required(&object, "/spec/token", "spec.token")?
                .as_str()
                .unwrap_or_default();
            match state.authenticator.authenticate_token(token) {
                Some(subject) => json!({"authenticated": true, "user": user_info(&subject), "audiences": []}),
                None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
            }
        }
        "SelfSubjectAccessReview" => {
            let spec = object.get("spec").cloned().unwrap_or_default();
            if spec.get("resourceAttributes").is_none() && spec.get("nonResourceAttributes").is_none() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{}.{} \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                        info.kind, info.group
                    ),
                ));
            }
            let (allowed, reason) = authorize(&identity.user, &identity.groups);
            decision(allowed, &reason)
        }
        "SubjectAccessReview" => {
            let spec = object.get("spec").cloned().unwrap_or_default();
            let user = spec.get("user").and_then(Value::as_str).unwrap_or_default();
            let groups: Vec<String> = spec
                .get("groups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect();
            if user.is_empty() && groups.is_empty() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{}.{} \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified",
                        info.kind, info.group
                    ),
                ));
            }
            let (allowed, reason) = authorize(if user.is_empty() { "-" } else { user }, &groups);
            decision(allowed, &reason)
        }
        "SelfSubjectRulesReview" => {
            required(&object, "/spec/namespace", "spec.namespace")?;
            let (allowed, _) = authorize(&identity.user, &identity.groups);
            if allowed {
                json!({
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    "incomplete": false,
                })
            } else {
                json!({"resourceRules": [], "nonResourceRules": [], "incomplete": false})
            }
        }
        other => return Err(bad_request(format!("{other} is not a review"))),
    };
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(info.api_version()));
        map.insert("kind".into(), json!(info.kind));
        map.entry("metadata").or_insert_with(|| json!({}));
        map.insert("status".into(), status);
    }
    Ok(object)
}

fn decision(allowed: bool, reason: &str) -> Value {
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_subjects_are_denied() {
        assert!(authorize("alice", &[]).0);
        assert!(!authorize(ANONYMOUS, &[]).0);
        assert!(!authorize("bob", &[UNAUTHENTICATED.to_string()]).0);
    }
}
