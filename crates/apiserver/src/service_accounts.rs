//! TokenRequest (`kubectl create token`): a signed, expiring token for a service account;
//! and the check that a service-account token's account still exists with the uid it was
//! issued for (upstream's legacy check of bound tokens), made on every request carrying one.

use rkube_api::find;
use rkube_pki::Identity;
use serde_json::{Value, json};

use crate::State;
use crate::authn::ISSUER;
use crate::object::{bad_request, invalid_kind, meta_str};
use crate::response::ApiError;
use crate::rest::get_object;

/// Upstream's default and shortest token lifetimes.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

/// Whether a service-account identity's account is still there, the same one.
pub(crate) async fn still_exists(state: &State, identity: &Identity) -> bool {
    let Some(rest) = identity.user.strip_prefix("system:serviceaccount:") else {
        return true;
    };
    let Some((namespace, name)) = rest.split_once(':') else {
        return false;
    };
    let Some(info) = find("", "v1", "serviceaccounts") else {
        return false;
    };
    match get_object(state, info, Some(namespace), name).await {
        Ok(account) => meta_str(&account, "uid") == Some(identity.uid.as_str()),
        Err(_) => false,
    }
}

/// Issues a token for `namespace/name` as the TokenRequest `request` asks (201).
pub(crate) async fn request_token(
    state: &State,
    namespace: &str,
    name: &str,
    mut request: Value,
) -> Result<Value, ApiError> {
    let kind = request.get("kind").and_then(Value::as_str).unwrap_or("TokenRequest");
    if kind != "TokenRequest" {
        return Err(bad_request(format!(
            "the object provided is unrecognized (must be of type TokenRequest): kind {kind:?}"
        )));
    }
    let info = find("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("no service accounts"))?;
    let account = get_object(state, info, Some(namespace), name).await?;
    let uid = meta_str(&account, "uid").unwrap_or_default().to_string();
    let expiration = request
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION);
    let refuse = |detail: &str| {
        invalid_kind(
            "authentication.k8s.io",
            "TokenRequest",
            "",
            vec![(
                "spec.expirationSeconds".into(),
                format!("Invalid value: {expiration}"),
                detail.into(),
            )],
        )
    };
    if expiration < MIN_EXPIRATION {
        return Err(refuse("may not specify a duration less than 10 minutes"));
    }
    if expiration > MAX_EXPIRATION {
        return Err(refuse("may not specify a duration larger than 2^32 seconds"));
    }
    let mut audiences: Vec<String> = request
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    if audiences.is_empty() {
        audiences.push(ISSUER.into());
    }
    let (token, expires) = state
        .authenticator
        .issue((namespace, name, &uid), &audiences, expiration)
        .map_err(|err| ApiError::internal(err.to_string()))?;
    let expires_at = k8s_openapi::jiff::Timestamp::from_second(expires)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": null});
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(expiration);
    request["status"] = json!({"token": token, "expirationTimestamp": expires_at});
    Ok(request)
}
