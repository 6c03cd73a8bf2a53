//! The REST verbs over the store, the same for every resource in the catalogue: objects
//! are JSON; metadata rules (uid, names, timestamps, generation, resourceVersion,
//! finalizers, deletion) are upstream's. Per-kind defaulting and validation plug in later.

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use rkube_api::managed;
use rkube_api::names::{name_rule, validate_name};
use rkube_api::{ResourceInfo, convert, defaults, find, typed, validation};
use rkube_store::{ContinueToken, RangeRequest, StoreError};
use serde_json::{Value, json};

use crate::admission;
use crate::filter::Filter;
use crate::object::{
    self, bad_request, check_name_matches, conflict, from_store, general_store_error, invalid, meta_str, metadata,
    metadata_mut, not_found, store_error, to_store,
};
use crate::path::ResourcePath;
use crate::query::{FieldValidation, Query};
use crate::response::{ApiError, Body, json as json_response};
use crate::transport::{InProcess, RequestBody};
use crate::{State, cache};
use crate::{pods, services, table, watch};

/// Largest request body accepted (upstream's limit).
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub(crate) async fn handle(
    state: &State,
    request: http::Request<RequestBody>,
    path: ResourcePath<'_>,
) -> Result<Response<Body>, ApiError> {
    let deprecation = convert::deprecation(path.info);
    // Streams (exec, attach, port-forward are POSTs) write nothing and last for minutes.
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !matches!(path.subresource, Some("exec" | "attach" | "portforward" | "proxy"));
    let response = match state.store.write_intents().filter(|_| writes) {
        // Declared, so that the store's group commit waits for this write too.
        Some(intents) => intents.during(handle_resource(state, request, path)).await?,
        None => handle_resource(state, request, path).await?,
    };
    Ok(match deprecation {
        Some(warning) => with_warnings(response, &[warning]),
        None => response,
    })
}

async fn handle_resource(
    state: &State,
    request: http::Request<RequestBody>,
    path: ResourcePath<'_>,
) -> Result<Response<Body>, ApiError> {
    let mut query = Query::parse(request.uri().query())?;
    let explicit_manager = query.field_manager.is_some();
    if query.field_manager.is_none() {
        // Upstream names writers without a fieldManager after their user agent.
        let agent = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        let prefix: String = agent.split('/').next().unwrap_or(agent).chars().take(128).collect();
        query.field_manager = Some(prefix);
    }
    let info = path.info;
    if info.namespaced() != path.namespace.is_some() && path.name.is_some() {
        return Err(ApiError::not_found_path(request.uri().path()));
    }
    let view = table::View::of(request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let in_process = request.extensions().get::<InProcess>().is_some();
    let method = request.method().clone();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    if rkube_api::catalogue::is_review(info) {
        if method != Method::POST || path.name.is_some() || path.subresource.is_some() {
            return Err(ApiError::method_not_allowed(&method));
        }
        let identity = request
            .extensions()
            .get::<rkube_pki::Identity>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)?;
        let body = read_body(request).await?;
        let object = decode_body(content_type.as_deref(), &body)?;
        let answered = crate::reviews::answer(state, &identity, info, object)?;
        return Ok(json_response(StatusCode::CREATED, &answered));
    }
    match (path.subresource, path.name) {
        (None | Some("status"), _) => {}
        (Some(sub @ ("binding" | "eviction" | "log" | "exec" | "attach" | "portforward")), Some(name))
            if (info.group, info.plural) == ("", "pods") =>
        {
            let ns = path.namespace.unwrap_or_default();
            let body = read_body_if_any(request, &method).await?;
            return pods::handle(state, (info, ns, name), sub, &method, &body, &query).await;
        }
        (Some("scale"), Some(name)) if info.subresource("scale").is_some() => {
            let body = read_body_if_any(request, &method).await?;
            return scale(
                state,
                (info, path.namespace, name),
                &method,
                content_type.as_deref(),
                &body,
                &query,
            )
            .await;
        }
        (Some("token"), Some(name)) if (info.group, info.plural) == ("", "serviceaccounts") => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(&method));
            }
            let body = read_body(request).await?;
            let object = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                decode_body(content_type.as_deref(), &body)?
            };
            let ns = path.namespace.unwrap_or_default();
            let issued = crate::service_accounts::request_token(state, ns, name, object).await?;
            return Ok(json_response(StatusCode::CREATED, &issued));
        }
        (Some("finalize"), Some(name)) if (info.group, info.plural) == ("", "namespaces") => {
            if method != Method::PUT {
                return Err(ApiError::method_not_allowed(&method));
            }
            let body = read_body(request).await?;
            let object = decode_body(content_type.as_deref(), &body)?;
            let finalized = finalize_namespace(state, name, &object, query.dry_run).await?;
            return Ok(respond(StatusCode::OK, info, finalized, &query, false));
        }
        (Some(_), _) => return Err(ApiError::not_found_path(request.uri().path())),
    }
    let status_only = path.subresource == Some("status");
    if status_only && !info.has_status() {
        return Err(ApiError::not_found_path(request.uri().path()));
    }
    let ns = path.namespace;
    // Objects are handled as their storage version stores them, and shown in the request's.
    let storage = rkube_api::storage_of(info);
    match (&method, path.name) {
        (&Method::GET, None) if query.watch => watch::serve(state, info, ns, &query, view, in_process).await,
        (&Method::GET, None) => list(state, info, ns, &query, view).await,
        (&Method::GET, Some(name)) => {
            let object = get(state, storage, ns, name).await?;
            Ok(match view {
                table::View::Metadata => json_response(StatusCode::OK, &table::partial(&object)),
                _ => respond(StatusCode::OK, info, object, &query, view == table::View::Table),
            })
        }
        (&Method::POST, None) if ns.is_some() || !info.namespaced() => {
            let body = read_body(request).await?;
            let object = decode_body(content_type.as_deref(), &body)?;
            let mut warnings = Vec::new();
            let mut write = Write::new(&query, &mut warnings);
            let object = body_to_storage(info, object, &mut write)?;
            let (code, written) = create(state, storage, ns, object, write).await?;
            Ok(with_warnings(respond_written(code, info, written, &query), &warnings))
        }
        (&Method::PUT, Some(name)) => {
            let body = read_body(request).await?;
            let object = decode_body(content_type.as_deref(), &body)?;
            let mut warnings = Vec::new();
            let mut write = Write::new(&query, &mut warnings);
            let object = body_to_storage(info, object, &mut write)?;
            let written = update(state, (storage, ns, name), object, status_only, write).await?;
            Ok(with_warnings(
                respond_written(StatusCode::OK, info, written, &query),
                &warnings,
            ))
        }
        (&Method::PATCH, Some(name)) if content_type.as_deref() == Some(APPLY_PATCH) => {
            if !explicit_manager {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let body = read_body(request).await?;
            let mut warnings = Vec::new();
            let write = Write::new(&query, &mut warnings);
            let (code, written) =
                server_side_apply(state, (info, ns, name), &body, status_only, query.force, write).await?;
            Ok(with_warnings(respond_written(code, info, written, &query), &warnings))
        }
        (&Method::PATCH, Some(name)) => {
            let body = read_body(request).await?;
            let mut warnings = Vec::new();
            let write = Write::new(&query, &mut warnings);
            let written = patch(
                state,
                (info, ns, name),
                content_type.as_deref(),
                &body,
                status_only,
                write,
            )
            .await?;
            Ok(with_warnings(
                respond_written(StatusCode::OK, info, written, &query),
                &warnings,
            ))
        }
        (&Method::DELETE, Some(name)) if !status_only => {
            let body = read_body(request).await?;
            let options = DeleteOptions::from(&body, &query)?;
            delete(state, info, ns, name, &options).await
        }
        (&Method::DELETE, None) if info.verbs.contains(&"deletecollection") => {
            let body = read_body(request).await?;
            let options = DeleteOptions::from(&body, &query)?;
            delete_collection(state, info, ns, &query, &options).await
        }
        (method, _) => Err(ApiError::method_not_allowed(method)),
    }
}

/// Decodes a create or update body: JSON (also when no type is given) or YAML.
pub(crate) fn decode_body(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match content_type {
        None | Some("application/json" | "") => serde_json::from_slice(body)
            .map_err(|e| bad_request(format!("couldn't get version/kind; json parse error: {e}")))?,
        Some("application/yaml") => {
            let text = std::str::from_utf8(body).map_err(|_| bad_request("the YAML body is not UTF-8"))?;
            serde_saphyr::from_str(text)
                .map_err(|e| bad_request(format!("couldn't get version/kind; yaml parse error: {e}")))?
        }
        Some("application/vnd.kubernetes.protobuf") => {
            rkube_api::protobuf::decode(body).map_err(|e| bad_request(e.to_string()))?
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
                ),
            ));
        }
    };
    if !value.is_object() {
        return Err(bad_request(
            "couldn't get version/kind; json parse error: the body is not a JSON object",
        ));
    }
    Ok(value)
}

/// Checks an object against its type: type errors are 400; unknown fields are dropped and
/// rejected, warned about or ignored as `fieldValidation` asks.
pub(crate) fn decode_typed(
    info: &ResourceInfo,
    object: Value,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let mut decoded = object;
    let unknown = typed::normalize(info, &mut decoded).map_err(|e| bad_request(e.to_string()))?;
    finish_decoding(info, decoded, unknown, validation, warnings)
}

/// [`decode_typed`] for a change of `before`, a stored object (decoded when it was
/// stored): the top-level members the change left equal to `before`'s are set aside while
/// the rest is decoded, as decoding them again would change nothing and find nothing. A
/// status patch decodes the status alone, not the spec and metadata around it. Anything
/// the partial decode does not accept (a field the type requires among those set aside,
/// an error) is decided by the whole decode, so the answer is always the same.
pub(crate) fn decode_changed(
    info: &ResourceInfo,
    object: Value,
    before: &Value,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let (mut members, stored) = match (object, before.as_object()) {
        (Value::Object(members), Some(stored)) => (members, stored),
        (object, _) => return decode_typed(info, object, validation, warnings),
    };
    let unchanged: Vec<String> = members
        .iter()
        .filter(|(name, value)| !matches!(name.as_str(), "apiVersion" | "kind") && stored.get(*name) == Some(value))
        .map(|(name, _)| name.clone())
        .collect();
    let set_aside: Vec<(String, Value)> = unchanged
        .into_iter()
        .filter_map(|name| members.remove(&name).map(|value| (name, value)))
        .collect();
    let mut decoded = Value::Object(members);
    let partial = typed::normalize(info, &mut decoded);
    if let Value::Object(members) = &mut decoded {
        members.extend(set_aside);
    }
    match partial {
        Ok(unknown) => finish_decoding(info, decoded, unknown, validation, warnings),
        Err(_) => decode_typed(info, decoded, validation, warnings),
    }
}

fn finish_decoding(
    info: &ResourceInfo,
    mut decoded: Value,
    unknown: Vec<String>,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    // Go's decoding cannot tell an empty plain field from an absent one, so such a field
    // is left out before defaulting (`dnsPolicy: ""` is defaulted like no dnsPolicy).
    typed::omit_empty(info, &mut decoded);
    defaults::apply(info, &mut decoded);
    if unknown.is_empty() {
        return Ok(decoded);
    }
    let described: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    match validation {
        FieldValidation::Strict => Err(bad_request(format!("strict decoding error: {}", described.join(", ")))),
        FieldValidation::Warn => {
            warnings.extend(described);
            Ok(decoded)
        }
        FieldValidation::Ignore => Ok(decoded),
    }
}

async fn read_body_if_any(request: http::Request<RequestBody>, method: &Method) -> Result<Bytes, ApiError> {
    if method == Method::GET {
        return Ok(Bytes::new());
    }
    read_body(request).await
}

/// A merge, JSON or strategic merge patch body (apply patches come with issue 4).
pub(crate) enum PatchBody {
    Merge(Value),
    Json(json_patch::Patch),
    /// With the type whose merge keys and strategies govern it.
    Strategic(Value, &'static str),
}

impl PatchBody {
    /// `strategic_type` is the patched object's type when strategic merge applies to it
    /// (built-in kinds); other kinds answer a strategic patch with 415, as upstream.
    pub(crate) fn decode(
        content_type: Option<&str>,
        body: &[u8],
        strategic_type: Option<&'static str>,
    ) -> Result<Self, ApiError> {
        let decode_error = |e: serde_json::Error| bad_request(format!("error decoding patch: {e}"));
        match (content_type, strategic_type) {
            (Some("application/merge-patch+json"), _) => {
                Ok(Self::Merge(serde_json::from_slice(body).map_err(decode_error)?))
            }
            (Some("application/json-patch+json"), _) => {
                Ok(Self::Json(serde_json::from_slice(body).map_err(decode_error)?))
            }
            (Some("application/strategic-merge-patch+json"), Some(ty)) => {
                let patch: Value = serde_json::from_slice(body).map_err(decode_error)?;
                if !patch.is_object() {
                    return Err(bad_request(
                        "error decoding patch: a strategic merge patch must be a JSON object",
                    ));
                }
                Ok(Self::Strategic(patch, ty))
            }
            (other, ty) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({}) - accepted media types include: application/json-patch+json, application/merge-patch+json{}",
                    other.unwrap_or_default(),
                    if ty.is_some() {
                        ", application/strategic-merge-patch+json"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    pub(crate) fn apply(&self, target: &mut Value) -> Result<(), ApiError> {
        match self {
            Self::Merge(patch) => {
                json_patch::merge(target, patch);
                Ok(())
            }
            Self::Json(patch) => json_patch::patch(target, patch).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the json patch does not apply: {e}"),
                )
            }),
            Self::Strategic(patch, ty) => {
                *target = rkube_api::strategic::apply(target, patch, ty).map_err(|err| match err {
                    rkube_api::strategic::PatchError::Invalid(message) if message.contains("$retainKeys") => {
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
                    }
                    other => bad_request(other.to_string()),
                })?;
                Ok(())
            }
        }
    }
}

/// The type whose patch facts govern strategic merge patches of this resource's objects
/// (legacy versions share their current version's).
pub(crate) fn strategic_type(info: &'static ResourceInfo) -> Option<&'static str> {
    rkube_api::strategic::type_of(info.group, info.version, info.kind).or_else(|| {
        let storage = rkube_api::storage_of(info);
        rkube_api::strategic::type_of(storage.group, storage.version, storage.kind)
    })
}

/// The `autoscaling/v1` Scale of an object with replicas.
fn scale_of(object: &Value) -> Value {
    let selector = object.pointer("/spec/selector");
    let labels = selector.and_then(|s| s.get("matchLabels")).or(selector);
    let mut parts: Vec<String> = labels
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    parts.sort();
    let meta = metadata(object).cloned().unwrap_or_default();
    let pick = |field: &str| meta.get(field).cloned().unwrap_or(Value::Null);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": pick("name"), "namespace": pick("namespace"), "uid": pick("uid"),
            "resourceVersion": pick("resourceVersion"), "creationTimestamp": pick("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": parts.join(","),
        },
    })
}

/// GET, PUT and PATCH on `.../scale`: reads and sets `spec.replicas` through a Scale.
async fn scale(
    state: &State,
    (info, ns, name): (&ResourceInfo, Option<&str>, &str),
    method: &Method,
    content_type: Option<&str>,
    body: &[u8],
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    loop {
        let (current, revision) = read_with_revision(state, info, ns, name, false).await?;
        let current_scale = scale_of(&current);
        let requested = match *method {
            Method::GET => return Ok(json_response(StatusCode::OK, &current_scale)),
            Method::PUT => decode_body(content_type, body)?,
            Method::PATCH => {
                let mut patched = current_scale.clone();
                let scale_type = rkube_api::strategic::type_of("autoscaling", "v1", "Scale");
                PatchBody::decode(content_type, body, scale_type)?.apply(&mut patched)?;
                patched
            }
            ref other => return Err(ApiError::method_not_allowed(other)),
        };
        let replicas = match requested.pointer("/spec/replicas") {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0 && r <= i64::from(i32::MAX)) => {
                n.as_i64().unwrap_or(0)
            }
            Some(other) => {
                return Err(invalid(
                    info,
                    name,
                    vec![(
                        "spec.replicas".into(),
                        format!("Invalid value: {other}"),
                        "must be greater than or equal to 0".into(),
                    )],
                ));
            }
            None => 0,
        };
        // A resourceVersion in the Scale is a precondition on the object.
        let pinned = meta_str(&requested, "resourceVersion").filter(|rv| !rv.is_empty());
        let expected = match pinned {
            Some(rv) => rv.parse::<i64>().map_err(|_| conflict(info, name))?,
            None => revision,
        };
        if expected != revision {
            return Err(conflict(info, name));
        }
        let mut new = current.clone();
        new["spec"]["replicas"] = json!(replicas);
        let mode = WriteMode {
            scope: managed::Scope::Scale,
            dry_run: query.dry_run,
            manager: query.field_manager.clone(),
        };
        match write_update(state, (info, ns, name), &current, new, expected, mode).await {
            Ok(updated) => return Ok(json_response(StatusCode::OK, &scale_of(&updated.object))),
            Err(err) if err.reason == "Conflict" && pinned.is_none() => continue,
            Err(err) => return Err(err),
        }
    }
}

async fn read_body(request: http::Request<RequestBody>) -> Result<Bytes, ApiError> {
    request.into_body().read(MAX_BODY_BYTES).await
}

/// How a client asked a write to be done.
pub(crate) struct Write<'a> {
    pub dry_run: bool,
    pub validation: FieldValidation,
    pub warnings: &'a mut Vec<String>,
    /// The field manager the write is recorded for (`None`: the server's own writes).
    pub manager: Option<String>,
    /// A server-side apply creating the object: its managedFields are already made.
    pub applied: bool,
}

impl<'a> Write<'a> {
    /// The server's own writes: strict, for real.
    fn system(warnings: &'a mut Vec<String>) -> Self {
        Self {
            dry_run: false,
            validation: FieldValidation::Strict,
            warnings,
            manager: None,
            applied: false,
        }
    }

    /// How this request writes through the main resource or its status, recorded for its
    /// field manager.
    fn mode(&self, status_only: bool) -> WriteMode {
        WriteMode {
            scope: scope_of(status_only),
            dry_run: self.dry_run,
            manager: self.manager.clone(),
        }
    }

    fn new(query: &Query, warnings: &'a mut Vec<String>) -> Self {
        Self {
            dry_run: query.dry_run,
            validation: query.field_validation,
            manager: query.field_manager.clone(),
            applied: false,
            warnings,
        }
    }
}

/// Adds `Warning: 299 - "..."` headers, one per warning, as upstream sends them.
fn with_warnings(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            response.headers_mut().append(http::header::WARNING, value);
        }
    }
    response
}

/// A stored object as the response to a request of `info`'s version: converted, or as a
/// Table row (printed from the stored object, as upstream prints the internal one).
fn respond(code: StatusCode, info: &'static ResourceInfo, object: Value, query: &Query, table: bool) -> Response<Body> {
    if table {
        let resource_version = meta_str(&object, "resourceVersion").unwrap_or_default().to_string();
        return json_response(
            code,
            &table::table(
                rkube_api::storage_of(info),
                std::slice::from_ref(&object),
                &resource_version,
                None,
                query,
                true,
            ),
        );
    }
    json_response(code, &convert::from_storage(info, object))
}

/// An object as a write left it, with its stored encoding and revision when the write
/// stored it (dry runs and no-op writes store nothing).
pub(crate) struct Written {
    pub(crate) object: Value,
    stored: Option<StoredAt>,
}

/// What a write stored: the bytes, where their metadata starts, and the revision.
struct StoredAt {
    bytes: Bytes,
    metadata_at: usize,
    revision: i64,
}

impl Written {
    fn unstored(object: Value) -> Self {
        Self { object, stored: None }
    }
}

/// [`respond`] with a written object: its stored bytes with the revision spliced in when
/// the request's version is the stored one, rather than the tree encoded a second time.
fn respond_written(code: StatusCode, info: &'static ResourceInfo, written: Written, query: &Query) -> Response<Body> {
    if info.stored_as.is_none()
        && let Some(stored) = &written.stored
        && let Some(body) = cache::with_revision(&stored.bytes, stored.metadata_at, stored.revision)
    {
        return crate::response::raw_json(code, Bytes::from(body));
    }
    respond(code, info, written.object, query, false)
}

/// A body written to a version served by conversion, as its storage version stores it. It
/// is checked against the request's own type first, so type errors and unknown fields are
/// named as the client wrote them.
fn body_to_storage(info: &ResourceInfo, object: Value, write: &mut Write<'_>) -> Result<Value, ApiError> {
    if info.stored_as.is_none() {
        return Ok(object);
    }
    let mut object = object;
    check_kind(info, &mut object)?;
    if !rkube_api::typed::is_typed(info) {
        // A legacy version: converted first, then checked as the version it is stored as.
        return Ok(convert::to_storage(info, object));
    }
    let decoded = decode_typed(info, object, write.validation, write.warnings)?;
    Ok(convert::to_storage(info, decoded))
}

/// The body's kind and apiVersion must be the resource's; missing ones are taken from the
/// URL, as upstream's decoder defaults them.
fn check_kind(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if (!kind.is_empty() && kind != info.kind) || (!api_version.is_empty() && api_version != info.api_version()) {
        return Err(bad_request(format!(
            "the object provided is unrecognized (must be of type {}): kind {kind:?}, apiVersion {api_version:?} (expected {:?})",
            info.kind,
            info.api_version()
        )));
    }
    object["kind"] = json!(info.kind);
    object["apiVersion"] = json!(info.api_version());
    Ok(())
}

/// Namespaced objects name the request's namespace (or none, which is filled in).
fn check_namespace(info: &ResourceInfo, object: &mut Value, ns: Option<&str>) -> Result<(), ApiError> {
    let meta = metadata_mut(object).ok_or_else(|| bad_request("metadata must be an object"))?;
    match (info.namespaced(), ns) {
        (true, Some(ns)) => match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != ns => Err(bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            _ => {
                meta.insert("namespace".into(), json!(ns));
                Ok(())
            }
        },
        _ => {
            meta.remove("namespace");
            Ok(())
        }
    }
}

async fn get(state: &State, info: &ResourceInfo, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
    let (_, kv) = state
        .store
        .get(&info.key(ns, name))
        .await
        .map_err(|e| store_error(e, info, name))?;
    from_store(&kv.ok_or_else(|| not_found(info, name))?)
}

fn namespaces() -> &'static ResourceInfo {
    // The catalogue always serves namespaces; a missing entry is a build-time mistake the
    // catalogue's own tests catch.
    find("", "v1", "namespaces").unwrap_or(&rkube_api::resources()[0])
}

/// The object as the watch cache holds it, else as the store does. The cache may be
/// behind: callers either compare-and-swap against its revision (a stale copy then fails
/// with a conflict and is read again from the store) or only need what upstream reads
/// from an informer.
async fn get_cached(state: &State, info: &ResourceInfo, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
    match state.cache.object(info, &info.key(ns, name)) {
        Some(cached) => cached.value(),
        None => get(state, info, ns, name).await,
    }
}

/// New objects need a namespace that exists and is not being deleted (upstream's
/// NamespaceLifecycle admission reads its informer; so does this, through the cache).
async fn check_namespace_open(state: &State, ns: &str) -> Result<(), ApiError> {
    let namespace = get_cached(state, namespaces(), None, ns).await?;
    let terminating = namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        || meta_str(&namespace, "deletionTimestamp").is_some();
    if terminating {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("unable to create new content in namespace {ns} because it is being terminated"),
        ));
    }
    Ok(())
}

/// `PUT namespaces/<name>/finalize`: only `spec.finalizers` changes; a namespace being
/// deleted with no finalizer of either kind left is gone.
async fn finalize_namespace(state: &State, name: &str, body: &Value, dry_run: bool) -> Result<Value, ApiError> {
    let info = namespaces();
    check_name_matches(body, name)?;
    let (mut current, revision) = read_with_revision(state, info, None, name, false).await?;
    let finalizers = body.pointer("/spec/finalizers").cloned().unwrap_or_else(|| json!([]));
    if !finalizers.is_array() || finalizers.as_array().is_some_and(|f| f.iter().any(|v| !v.is_string())) {
        return Err(bad_request("spec.finalizers must be a list of strings"));
    }
    current["spec"]["finalizers"] = finalizers.clone();
    if dry_run {
        return Ok(current);
    }
    let deleting = meta_str(&current, "deletionTimestamp").is_some();
    let no_finalizers = metadata(&current)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
        && finalizers.as_array().is_none_or(Vec::is_empty);
    let key = info.key(None, name);
    if deleting && no_finalizers {
        state
            .store
            .delete(&key, Some(revision))
            .await
            .map_err(|e| store_error(e, info, name))?;
        return Ok(current);
    }
    let new_revision = state
        .store
        .update(&key, to_store(&current)?.into(), revision)
        .await
        .map_err(|e| store_error(e, info, name))?;
    object::set_resource_version(&mut current, new_revision);
    Ok(current)
}

/// Defaults every kind gets from its registry strategy today.
fn default_kind(info: &ResourceInfo, object: &mut Value) {
    if (info.group, info.plural) == ("", "namespaces") {
        if object.pointer("/spec/finalizers").is_none() {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        object["status"] = json!({"phase": "Active"});
    }
}

pub(crate) async fn create(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    object: Value,
    write: Write<'_>,
) -> Result<(StatusCode, Written), ApiError> {
    let mut object = object;
    check_kind(info, &mut object)?;
    let mut object = decode_typed(info, object, write.validation, write.warnings)?;
    check_namespace(info, &mut object, ns)?;
    let dry_run = write.dry_run;
    let meta = metadata_mut(&mut object).ok_or_else(|| bad_request("metadata must be an object"))?;
    // Admission names the object as requested: before a generated name exists, by its
    // generateName prefix, as upstream's do.
    let requested_name = ["name", "generateName"]
        .iter()
        .find_map(|f| meta.get(*f).and_then(Value::as_str).filter(|n| !n.is_empty()))
        .unwrap_or_default()
        .to_string();
    let name = match meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => match meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(prefix) => format!("{prefix}{}", object::random_suffix()),
            None => {
                return Err(invalid(
                    info,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value".into(),
                        "name or generateName is required".into(),
                    )],
                ));
            }
        },
    };
    let mut causes: Vec<(String, String, String)> = validate_name(name_rule(info), &name)
        .into_iter()
        .map(|p| ("metadata.name".to_string(), format!("Invalid value: {name:?}"), p))
        .collect();
    causes.extend(validation::validate(info, &object).into_iter().map(|p| {
        let (reason, detail) = p.reason_and_detail();
        (p.field, reason, detail)
    }));
    if !causes.is_empty() {
        return Err(invalid(info, &name, causes));
    }
    if let Some(ns) = ns.filter(|_| info.namespaced()) {
        check_namespace_open(state, ns).await?;
    }
    if (info.group, info.kind) == ("", "Pod") {
        admission::admit_pod(state, &mut object, &requested_name).await?;
    }
    if (info.group, info.kind) == ("", "PersistentVolumeClaim") {
        admission::admit_claim(state, &mut object).await?;
    }
    let meta = metadata_mut(&mut object).ok_or_else(|| bad_request("metadata must be an object"))?;
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(object::new_uid()));
    meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(field);
    }
    if object.get("spec").is_some()
        && let Some(meta) = metadata_mut(&mut object)
    {
        meta.insert("generation".into(), json!(1));
    }
    default_kind(info, &mut object);
    if (info.group, info.kind) == ("batch", "Job") {
        defaults::job_selector(&mut object);
    }
    if let Some(manager) = write.manager.as_deref() {
        if let Some(meta) = metadata_mut(&mut object) {
            // A create starts the record afresh (an applied one brings its own).
            if !write.applied {
                meta.remove("managedFields");
            }
        }
        if !write.applied {
            record(info, None, &mut object, manager, managed::Scope::Main);
        }
    }
    if dry_run {
        return Ok((StatusCode::CREATED, Written::unstored(object)));
    }
    let claimed = if is_service(info) {
        services::allocate(state, info, (ns.unwrap_or_default(), &name), &mut object, None).await?
    } else {
        Vec::new()
    };
    let (stored, metadata_at) = object::to_store_marked(&object)?;
    let stored = Bytes::from(stored);
    let created = state.store.create(&info.key(ns, &name), stored.clone()).await;
    let revision = match created {
        Ok(revision) => revision,
        Err(err) => {
            services::release(state, claimed).await;
            return Err(store_error(err, info, &name));
        }
    };
    object::set_resource_version(&mut object, revision);
    let stored = metadata_at.map(|metadata_at| StoredAt {
        bytes: stored,
        metadata_at,
        revision,
    });
    Ok((StatusCode::CREATED, Written { object, stored }))
}

/// Whether two objects agree on everything the generation counts (all but metadata and
/// status), compared in place: the objects are large and nearly every write is a status one.
fn same_spec(a: &Value, b: &Value) -> bool {
    fn spec(map: &serde_json::Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
        map.iter()
            .filter(|(key, _)| !matches!(key.as_str(), "metadata" | "status"))
    }
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => spec(a).eq(spec(b)),
        _ => a == b,
    }
}

/// How a write goes: through the status subresource or the main resource, for real or
/// as a dry run.
#[derive(Debug, Clone)]
struct WriteMode {
    /// The main resource, or its status or scale subresource.
    scope: managed::Scope,
    dry_run: bool,
    /// Who the change is recorded for in managedFields (`None`: nobody, it is the server's).
    manager: Option<String>,
}

/// The published schema that types an object of `info`'s kind for field management.
fn managed_schema(info: &ResourceInfo) -> managed::Schema<'static> {
    let all = rkube_api::schemas::all();
    match rkube_api::strategic::type_of(info.group, info.version, info.kind) {
        Some(name) => managed::Schema::named(all, name),
        None => managed::untyped(all),
    }
}

/// The part of the object a request on the main resource or its status touches.
fn scope_of(status_only: bool) -> managed::Scope {
    if status_only {
        managed::Scope::Status
    } else {
        managed::Scope::Main
    }
}

/// Who writes an object of `info`'s kind: (manager, apiVersion, time), and through which
/// part of it.
fn managed_writer<'a>(
    info: &ResourceInfo,
    (manager, api_version, time): (&'a str, &'a str, &'a str),
    scope: managed::Scope,
) -> managed::Writer<'a> {
    managed::Writer {
        manager,
        api_version,
        time,
        scope,
        has_status: info.has_status(),
    }
}

/// Records a write in the object's managedFields.
fn record(info: &ResourceInfo, old: Option<&Value>, new: &mut Value, manager: &str, scope: managed::Scope) {
    let time = object::now_rfc3339();
    let api_version = info.api_version();
    let writer = managed_writer(info, (manager, &api_version, &time), scope);
    managed::record_update(old, new, &writer, managed_schema(info));
}

/// Makes `new` equal to `current` but for the members named in `except`, which stay (or
/// stay absent) as in `new`. Compared member by member: the usual status write, which
/// changed nothing else, copies nothing.
fn keep_stored_except(new: &mut Value, current: &Value, except: &[&str]) {
    let excepted = |key: &str| except.contains(&key);
    if let (Some(mine), Some(stored)) = (new.as_object_mut(), current.as_object()) {
        mine.retain(|key, _| excepted(key) || stored.contains_key(key));
        for (key, value) in stored.iter().filter(|(key, _)| !excepted(key)) {
            match mine.get_mut(key) {
                Some(own) if own == value => {}
                Some(own) => *own = value.clone(),
                None => drop(mine.insert(key.clone(), value.clone())),
            }
        }
        return;
    }
    let kept: Vec<(String, Value)> = match new.as_object_mut() {
        Some(mine) => except
            .iter()
            .filter_map(|key| Some(((*key).to_string(), mine.remove(*key)?)))
            .collect(),
        None => Vec::new(),
    };
    *new = current.clone();
    if let Some(map) = new.as_object_mut() {
        for key in except {
            map.remove(*key);
        }
        map.extend(kept);
    }
}

/// Writes `new` over `current` (which was read at `expected`): carries over what clients
/// may not change, applies the status rules, bumps generation on spec changes, skips
/// no-op writes, and completes deletions whose finalizers are gone.
async fn write_update(
    state: &State,
    (info, ns, name): (&ResourceInfo, Option<&str>, &str),
    current: &Value,
    mut new: Value,
    expected: i64,
    mode: WriteMode,
) -> Result<Written, ApiError> {
    let WriteMode {
        scope,
        dry_run,
        manager,
    } = mode;
    let status_only = scope == managed::Scope::Status;
    if status_only {
        // The status, labels and annotations as sent, the rest as stored.
        keep_stored_except(&mut new, current, &["status", "metadata"]);
        match (current.get("metadata"), new.as_object_mut()) {
            (Some(stored), Some(map)) => {
                let meta = map.entry("metadata").or_insert(Value::Null);
                keep_stored_except(meta, stored, &["labels", "annotations"]);
            }
            (None, Some(map)) => drop(map.remove("metadata")),
            (_, None) => {}
        }
    } else if info.has_status() {
        match current.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    if (info.group, info.kind) == ("", "Pod") {
        admission::keep_priority(current, &mut new);
    }
    // A namespace's content finalizers change only through `finalize`, as upstream's.
    if (info.group, info.plural) == ("", "namespaces") && !status_only {
        match current.pointer("/spec/finalizers") {
            Some(finalizers) => new["spec"]["finalizers"] = finalizers.clone(),
            None => {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
            }
        }
    }
    let current_meta = metadata(current);
    let meta = metadata_mut(&mut new).ok_or_else(|| bad_request("metadata must be an object"))?;
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match current_meta.and_then(|m| m.get(field)) {
            Some(value) => meta.insert(field.into(), value.clone()),
            None => meta.remove(field),
        };
    }
    meta.insert("name".into(), json!(name));
    meta.insert("resourceVersion".into(), json!(expected.to_string()));
    if !same_spec(&new, current) {
        let generation = current_meta
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if let Some(meta) = metadata_mut(&mut new) {
            meta.insert("generation".into(), json!(generation + 1));
        }
    }
    if new == *current {
        return Ok(Written::unstored(new));
    }
    if let Some(manager) = manager.as_deref() {
        record(info, Some(current), &mut new, manager, scope);
    }
    let mut problems = validation::validate(info, &new);
    problems.extend(validation::validate_update(info, current, &new));
    object::check(info, name, problems)?;
    let finalizers_empty = metadata(&new)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let deleting = meta_str(&new, "deletionTimestamp").is_some();
    if dry_run {
        return Ok(Written::unstored(new));
    }
    let key = info.key(ns, name);
    // A namespace also waits for its content to be gone (`spec.finalizers`).
    let content_gone = (info.group, info.plural) != ("", "namespaces")
        || new
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    if deleting && finalizers_empty && content_gone {
        state
            .store
            .delete(&key, Some(expected))
            .await
            .map_err(|e| store_error(e, info, name))?;
        if is_service(info) {
            services::release(state, services::keys_of(current)).await;
        }
        return Ok(Written::unstored(new));
    }
    let claimed = if is_service(info) {
        services::allocate(state, info, (ns.unwrap_or_default(), name), &mut new, Some(current)).await?
    } else {
        Vec::new()
    };
    let (stored, metadata_at) = object::to_store_marked(&new)?;
    let stored = Bytes::from(stored);
    let updated = state.store.update(&key, stored.clone(), expected).await;
    let revision = match updated {
        Ok(revision) => revision,
        Err(err) => {
            services::release(state, claimed).await;
            return Err(store_error(err, info, name));
        }
    };
    if is_service(info) {
        let kept = services::keys_of(&new);
        services::release(
            state,
            services::keys_of(current).into_iter().filter(|k| !kept.contains(k)),
        )
        .await;
    }
    object::set_resource_version(&mut new, revision);
    let stored = metadata_at.map(|metadata_at| StoredAt {
        bytes: stored,
        metadata_at,
        revision,
    });
    Ok(Written { object: new, stored })
}

/// The revision an update must compare against: the body's resourceVersion, or (when it
/// has none) the current one, as upstream allows unconditional updates.
fn expected_revision(info: &ResourceInfo, name: &str, object: &Value, current: i64) -> Result<i64, ApiError> {
    match meta_str(object, "resourceVersion").filter(|rv| !rv.is_empty()) {
        None => Ok(current),
        Some(rv) => rv.parse::<i64>().map_err(|_| {
            invalid(
                info,
                name,
                vec![(
                    "metadata.resourceVersion".into(),
                    format!("Invalid value: {rv:?}"),
                    "must be a number".into(),
                )],
            )
        }),
    }
}

/// One object and the revision it was read at: from the watch cache when `from_cache`
/// ([`get_cached`]: only for compare-and-swap writes, which a stale copy fails), else from
/// the store.
pub(crate) async fn read_with_revision(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    from_cache: bool,
) -> Result<(Value, i64), ApiError> {
    let object = if from_cache {
        get_cached(state, info, ns, name).await?
    } else {
        get(state, info, ns, name).await?
    };
    let revision = revision_of(&object);
    Ok((object, revision))
}

/// The revision an object read from the store or the cache was written at.
fn revision_of(object: &Value) -> i64 {
    meta_str(object, "resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

async fn update(
    state: &State,
    (info, ns, name): (&ResourceInfo, Option<&str>, &str),
    object: Value,
    status_only: bool,
    write: Write<'_>,
) -> Result<Written, ApiError> {
    let mut object = object;
    check_kind(info, &mut object)?;
    let mut object = decode_typed(info, object, write.validation, write.warnings)?;
    check_namespace(info, &mut object, ns)?;
    check_name_matches(&object, name)?;
    let (current, revision) = read_with_revision(state, info, ns, name, false).await?;
    let expected = expected_revision(info, name, &object, revision)?;
    if expected != revision {
        return Err(conflict(info, name));
    }
    write_update(
        state,
        (info, ns, name),
        &current,
        object,
        expected,
        write.mode(status_only),
    )
    .await
}

async fn patch(
    state: &State,
    (info, ns, name): (&'static ResourceInfo, Option<&str>, &str),
    content_type: Option<&str>,
    body: &[u8],
    status_only: bool,
    write: Write<'_>,
) -> Result<Written, ApiError> {
    let dry_run = write.dry_run;
    let patch = PatchBody::decode(content_type, body, strategic_type(info))?;
    // The patch applies to the object as the request's version shows it.
    let view = info;
    let info = rkube_api::storage_of(view);
    // Conflicts without a resourceVersion precondition are retried until the write lands,
    // as upstream's GuaranteedUpdate retries (each conflict is another writer's success).
    // The first attempt starts from the watch cache's copy, as upstream's GuaranteedUpdate
    // starts from the cacher's: the write is a compare-and-swap on its revision, so a
    // stale copy costs a conflict and a read from the store, never a lost update.
    let mut from_cache = !dry_run;
    loop {
        let cached = std::mem::take(&mut from_cache);
        let mut warnings = Vec::new();
        let mut pinned = false;
        let outcome = async {
            let (current, revision) = read_with_revision(state, info, ns, name, cached).await?;
            // The stored version needs no conversion (one deep copy fewer per patch).
            let shown = if std::ptr::eq(view, info) {
                std::borrow::Cow::Borrowed(&current)
            } else {
                std::borrow::Cow::Owned(convert::from_storage(view, current.clone()))
            };
            let mut patched = shown.as_ref().clone();
            patch.apply(&mut patched)?;
            if !patched.is_object() || patched.get("kind") != shown.get("kind") {
                return Err(bad_request("a patch may not change the object's kind"));
            }
            // Decoded against the copy the patch started from, when no conversion stands
            // between it and what was stored.
            let patched = if std::ptr::eq(view, info) {
                decode_changed(view, patched, &current, write.validation, &mut warnings)?
            } else {
                decode_typed(view, patched, write.validation, &mut warnings)?
            };
            let patched = convert::to_storage(view, patched);
            // A resourceVersion the patch sets is a precondition; otherwise retry on conflicts.
            pinned = meta_str(&patched, "resourceVersion") != meta_str(&current, "resourceVersion");
            let expected = expected_revision(info, name, &patched, revision)?;
            if pinned && expected != revision {
                return Err(conflict(info, name));
            }
            let mode = write.mode(status_only);
            write_update(state, (info, ns, name), &current, patched, expected, mode).await
        }
        .await;
        match outcome {
            // The cache's copy may have been stale: whatever failed is decided on the store's.
            Err(_) if cached => continue,
            Err(err) if err.reason == "Conflict" && !pinned => continue,
            result => {
                write.warnings.extend(warnings);
                return result;
            }
        }
    }
}

const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// 409 for fields other managers own, worded as upstream's.
fn apply_conflicts(conflicts: &[managed::Conflict]) -> ApiError {
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    for c in conflicts {
        match groups
            .iter_mut()
            .find(|(m, v, _)| *m == c.manager && *v == c.api_version)
        {
            Some(group) => group.2.push(c.field.clone()),
            None => groups.push((c.manager.clone(), c.api_version.clone(), vec![c.field.clone()])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(manager, version, fields)| match fields.as_slice() {
            [one] => format!("conflict with \"{manager}\" using {version}: {one}"),
            many => format!(
                "conflicts with \"{manager}\" using {version}:\n{}",
                many.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n")
            ),
        })
        .collect();
    let count = conflicts.len();
    let message = format!(
        "Apply failed with {count} conflict{}: {}",
        if count == 1 { "" } else { "s" },
        parts.join("\n")
    );
    let causes = conflicts
        .iter()
        .map(|c| k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
            field: Some(c.field.clone()),
            message: Some(format!("conflict with \"{}\" using {}", c.manager, c.api_version)),
            reason: Some("FieldManagerConflict".into()),
        })
        .collect();
    ApiError {
        details: Some(Box::new(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
                causes: Some(causes),
                ..Default::default()
            },
        )),
        ..ApiError::new(StatusCode::CONFLICT, "Conflict", message)
    }
}

/// Server-side apply: the manager's configuration merged into the object (created if
/// missing), with its managed fields; 409 when it would change fields others own, unless
/// forced.
async fn server_side_apply(
    state: &State,
    (view, ns, name): (&'static ResourceInfo, Option<&str>, &str),
    body: &[u8],
    status_only: bool,
    force: bool,
    write: Write<'_>,
) -> Result<(StatusCode, Written), ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad_request("the apply patch is not UTF-8"))?;
    let mut applied: Value =
        serde_saphyr::from_str(text).map_err(|e| bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(bad_request("the apply patch must be an object"));
    }
    check_kind(view, &mut applied)?;
    match applied.pointer("/metadata/name").and_then(Value::as_str) {
        Some(given) if given != name => {
            return Err(bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        _ => {
            if let Some(meta) = metadata_mut(&mut applied) {
                meta.insert("name".into(), json!(name));
            }
        }
    }
    let manager = write.manager.clone().unwrap_or_default();
    let info = rkube_api::storage_of(view);
    let schema = managed_schema(info);
    let api_version = view.api_version();
    loop {
        let time = object::now_rfc3339();
        let writer = managed_writer(info, (&manager, &api_version, &time), scope_of(status_only));
        let current = match read_with_revision(state, info, ns, name, false).await {
            Ok(found) => Some(found),
            Err(err) if err.code == StatusCode::NOT_FOUND => None,
            Err(err) => return Err(err),
        };
        let Some((current, revision)) = current else {
            // Create-on-apply.
            let applied_storage = convert::to_storage(view, applied.clone());
            let merged = managed::apply(None, &applied_storage, &writer, force, schema)
                .map_err(|conflicts| apply_conflicts(&conflicts))?;
            let create_write = Write { applied: true, ..write };
            return create(state, info, ns, merged, create_write).await;
        };
        let shown = convert::from_storage(view, current.clone());
        let applied_view = applied.clone();
        let shown_storage = convert::to_storage(view, shown);
        let applied_storage = convert::to_storage(view, applied_view);
        let merged = managed::apply(Some(&shown_storage), &applied_storage, &writer, force, schema)
            .map_err(|conflicts| apply_conflicts(&conflicts))?;
        let mut warnings = Vec::new();
        let merged = decode_typed(info, merged, write.validation, &mut warnings)?;
        let expected = revision;
        let mode = WriteMode {
            scope: scope_of(status_only),
            dry_run: write.dry_run,
            // The apply made the managed fields already.
            manager: None,
        };
        match write_update(state, (info, ns, name), &current, merged, expected, mode).await {
            Err(err) if err.reason == "Conflict" && err.details.is_none() => continue,
            result => {
                write.warnings.extend(warnings);
                return result.map(|object| (StatusCode::OK, object));
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct DeleteOptions {
    propagation: Option<String>,
    grace_period: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub(crate) fn from(body: &[u8], query: &Query) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Self::from_value(None, query);
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid DeleteOptions: {e}")))?;
        Self::from_value(Some(&value), query)
    }

    /// Options from a DeleteOptions object (if any) and the query.
    pub(crate) fn from_value(value: Option<&Value>, query: &Query) -> Result<Self, ApiError> {
        let mut options = Self {
            propagation: query.propagation_policy.clone(),
            grace_period: query.grace_period_seconds,
            dry_run: query.dry_run,
            ..Self::default()
        };
        let Some(value) = value.filter(|v| v.is_object()) else {
            return Ok(options);
        };
        if let Some(p) = value.get("propagationPolicy").and_then(Value::as_str) {
            options.propagation = Some(p.to_string());
        }
        if let Some(g) = value.get("gracePeriodSeconds").and_then(Value::as_i64) {
            options.grace_period = Some(g);
        }
        options.uid = value
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        options.resource_version = value
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(dry) = value.get("dryRun").and_then(Value::as_array) {
            options.dry_run |= dry.iter().any(|d| d == "All");
        }
        match options.propagation.as_deref() {
            None | Some("Background" | "Foreground" | "Orphan") => Ok(options),
            Some(other) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            )),
        }
    }
}

fn success_status(info: &ResourceInfo, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": info.plural, "uid": uid});
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// Deletes one object; answers the object while something (finalizers, a node, the
/// namespace controller) still has to finish it, or a Success Status once it is gone.
async fn delete_one(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    let (current, revision) = read_with_revision(state, info, ns, name, false).await?;
    let uid = meta_str(&current, "uid").unwrap_or_default().to_string();
    if let Some(want) = options.uid.as_deref().filter(|u| *u != uid) {
        return Err(ApiError {
            reason: "Conflict",
            ..conflict(info, name)
        }
        .with_message(format!(
            "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
        )));
    }
    if let Some(want) = options
        .resource_version
        .as_deref()
        .filter(|rv| *rv != revision.to_string())
    {
        return Err(conflict(info, name).with_message(format!(
            "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {revision}"
        )));
    }
    let mut marked = current.clone();
    let meta = metadata_mut(&mut marked).ok_or_else(|| ApiError::internal("stored object without metadata"))?;
    let mut finalizers: Vec<Value> = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let add = match options.propagation.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    if let Some(finalizer) = add
        && !finalizers.iter().any(|f| f == finalizer)
    {
        finalizers.push(json!(finalizer));
    }
    let is_namespace = (info.group, info.plural) == ("", "namespaces");
    // A pod on a node is finished by that node, unless the grace period is zero or the
    // pod has finished already (upstream's `CheckGracefulDelete`).
    let pod_on_node = (info.group, info.plural) == ("", "pods")
        && current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && !matches!(
            current.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
        && options.grace_period != Some(0);
    if finalizers.is_empty() && !is_namespace && !pod_on_node {
        if !options.dry_run {
            state
                .store
                .delete(&info.key(ns, name), Some(revision))
                .await
                .map_err(|e| store_error(e, info, name))?;
            if is_service(info) {
                services::release(state, services::keys_of(&current)).await;
            }
        }
        return Ok((StatusCode::OK, success_status(info, name, &uid)));
    }
    if meta.get("deletionTimestamp").is_none() {
        meta.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
        let grace = if pod_on_node {
            options
                .grace_period
                .or_else(|| {
                    current
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
        } else {
            0
        };
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    if is_namespace {
        marked["status"] = json!({"phase": "Terminating"});
    }
    if options.dry_run {
        return Ok((StatusCode::OK, marked));
    }
    let new_revision = state
        .store
        .update(&info.key(ns, name), to_store(&marked)?.into(), revision)
        .await
        .map_err(|e| store_error(e, info, name))?;
    object::set_resource_version(&mut marked, new_revision);
    Ok((StatusCode::OK, marked))
}

async fn delete(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Response<Body>, ApiError> {
    let storage = rkube_api::storage_of(info);
    let (code, body) = delete_one(state, storage, ns, name, options).await?;
    // The object itself (deletion pending) in the request's version; a Status as it is.
    let body = if body.get("kind").and_then(Value::as_str) == Some(storage.kind) {
        convert::from_storage(info, body)
    } else {
        body
    };
    Ok(json_response(code, &body))
}

/// Objects read from the store, page by page, at one revision (what the cache cannot serve).
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

pub(crate) async fn list_page(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    query: &Query,
    filter: &Filter,
    revision: Option<i64>,
) -> Result<Page, ApiError> {
    let mut request = RangeRequest::prefix(info.key_prefix(ns));
    request.continue_token = query.continue_token.clone();
    request.revision = revision;
    let mut items = Vec::new();
    loop {
        // Filtering may drop keys: keep reading pages until the limit is met.
        request.limit = query.limit.map(|l| l - items.len());
        let page = state.store.range(request.clone()).await.map_err(|e| match e {
            StoreError::Compacted { .. } if query.continue_token.is_some() => continue_expired(),
            other => general_store_error(other),
        })?;
        for kv in &page.kvs {
            let object = from_store(kv)?;
            if filter.matches(&object) {
                items.push(object);
            }
        }
        let full = query.limit.is_some_and(|l| items.len() >= l);
        match page.continue_token {
            Some(token) if !full => {
                request.continue_token = Some(token);
                request.revision = None;
            }
            token => {
                return Ok(Page {
                    items,
                    revision: page.revision,
                    continue_token: token,
                });
            }
        }
    }
}

fn continue_expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
    )
}

/// Which state a list reads, by upstream's resourceVersion rules.
#[derive(Debug, PartialEq, Eq)]
enum ListRead {
    /// The newest state (resourceVersion unset): a consistent read.
    Newest,
    /// Whatever the cache holds (resourceVersion "0").
    Any,
    /// At least as new as this revision.
    NotOlderThan(i64),
    /// Exactly this revision.
    Exact(i64),
    /// The next page of an earlier list.
    Continue(String),
}

fn list_read(query: &Query) -> Result<ListRead, ApiError> {
    let rv = query.resource_version.as_deref();
    let mut causes = Vec::new();
    let forbidden = |why: &str| {
        (
            "resourceVersionMatch".to_string(),
            "Forbidden".to_string(),
            why.to_string(),
        )
    };
    if let Some(matching) = query.resource_version_match.as_deref() {
        if rv.is_none() {
            causes.push(forbidden(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if query.continue_token.is_some() {
            causes.push(forbidden("resourceVersionMatch is forbidden when continue is provided"));
        }
        if !matches!(matching, "Exact" | "NotOlderThan") {
            causes.push((
                "resourceVersionMatch".to_string(),
                format!("Unsupported value: {matching:?}"),
                r#"supported values: "Exact", "NotOlderThan", """#.to_string(),
            ));
        }
        if matching == "Exact" && rv == Some("0") {
            causes.push(forbidden(
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if query.send_initial_events.is_some() {
        causes.push((
            "sendInitialEvents".to_string(),
            "Forbidden".to_string(),
            "sendInitialEvents is forbidden for list".to_string(),
        ));
    }
    if !causes.is_empty() {
        return Err(object::invalid_kind("meta.k8s.io", "ListOptions", "", causes));
    }
    if let Some(token) = &query.continue_token {
        if rv.is_some_and(|rv| rv != "0") {
            return Err(bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        return Ok(ListRead::Continue(token.clone()));
    }
    let Some(rv) = rv else { return Ok(ListRead::Newest) };
    if rv == "0" {
        return Ok(ListRead::Any);
    }
    let revision = query.watch_from()?.unwrap_or_default();
    Ok(match query.resource_version_match.as_deref() {
        Some("Exact") => ListRead::Exact(revision),
        Some(_) => ListRead::NotOlderThan(revision),
        // Without a match rule, a paged list of a given revision reads exactly that one.
        None if query.limit.is_some() => ListRead::Exact(revision),
        None => ListRead::NotOlderThan(revision),
    })
}

/// A list served from the watch cache, or `None` when only the store can serve it.
async fn list_from_cache(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    query: &Query,
    filter: &Filter,
    read: ListRead,
) -> Result<Option<cache::Page>, ApiError> {
    let cache = &state.cache;
    let page = |at: Option<i64>, after: Option<String>| cache.page(info, ns, filter, query.limit, at, after);
    match read {
        ListRead::Newest if cache.wait_for_current().await? => page(None, None),
        ListRead::Newest => Ok(None),
        ListRead::Any => page(None, None),
        ListRead::NotOlderThan(revision) if cache.wait_for(revision).await => page(None, None),
        ListRead::NotOlderThan(revision) => {
            let current = state.store.current_revision().await.map_err(general_store_error)?;
            if revision > current {
                return Err(general_store_error(StoreError::FutureRevision {
                    requested: revision,
                    current,
                }));
            }
            Ok(None)
        }
        ListRead::Exact(revision) => page(Some(revision), None),
        ListRead::Continue(token) => {
            let token = ContinueToken::decode(&token, &info.key_prefix(ns)).map_err(general_store_error)?;
            page(Some(token.revision), Some(token.last_key))
        }
    }
}

async fn list(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    query: &Query,
    view: table::View,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_query(info, query)?;
    let read = list_read(query)?;
    let exact = match read {
        ListRead::Exact(revision) => Some(revision),
        _ => None,
    };
    let page = match list_from_cache(state, info, ns, query, &filter, read).await? {
        Some(page) => page,
        None => {
            let page = list_page(state, info, ns, query, &filter, exact).await?;
            let items = page
                .items
                .iter()
                .map(|object| cache::Cached::new(info, object).map(std::sync::Arc::new))
                .collect::<Result<_, _>>()?;
            cache::Page {
                items,
                revision: page.revision,
                continue_token: page.continue_token,
                remaining: None,
            }
        }
    };
    let revision = page.revision.to_string();
    if view == table::View::Table {
        let items = page.items.iter().map(|o| o.value()).collect::<Result<Vec<_>, _>>()?;
        return Ok(json_response(
            StatusCode::OK,
            &table::table(
                rkube_api::storage_of(info),
                &items,
                &revision,
                page.continue_token.as_deref(),
                query,
                true,
            ),
        ));
    }
    // Items as stored, their metadata alone, or (versions served by conversion) converted
    // and encoded anew.
    let encoding_error = |e: serde_json::Error| ApiError::internal(format!("encoding an object: {e}"));
    let items: Vec<Bytes> = if view == table::View::Metadata {
        page.items
            .iter()
            .map(|o| table::partial_json(&o.json).map(Bytes::from).map_err(encoding_error))
            .collect::<Result<_, ApiError>>()?
    } else if info.stored_as.is_some() {
        page.items
            .iter()
            .map(|o| {
                let shown = convert::from_storage(info, o.value()?);
                serde_json::to_vec(&shown).map(Bytes::from).map_err(encoding_error)
            })
            .collect::<Result<_, ApiError>>()?
    } else {
        page.items.iter().map(|o| o.json.clone()).collect()
    };
    let mut metadata = json!({"resourceVersion": revision});
    if let Some(token) = page.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    let head = match view {
        table::View::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
        }),
        _ => json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": metadata,
        }),
    };
    Ok(crate::response::raw_json(
        StatusCode::OK,
        splice_items(&head, items.iter().map(|o| &o[..]))?,
    ))
}

/// A list object whose items are spliced in as already encoded, rather than encoded again.
fn splice_items<'a>(head: &Value, items: impl Iterator<Item = &'a [u8]> + Clone) -> Result<Bytes, ApiError> {
    let mut body = serde_json::to_vec(head).map_err(|e| ApiError::internal(format!("encoding a list: {e}")))?;
    // Reopen the head object to append the items.
    body.pop();
    body.reserve(items.clone().map(|i| i.len() + 1).sum::<usize>() + 12);
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok(Bytes::from(body))
}

async fn delete_collection(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    query: &Query,
    options: &DeleteOptions,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_query(info, query)?;
    let (view, info) = (info, rkube_api::storage_of(info));
    let unpaged = Query {
        limit: None,
        continue_token: None,
        ..Query::default()
    };
    let page = list_page(state, info, ns, &unpaged, &filter, None).await?;
    let mut deleted = Vec::new();
    for object in page.items {
        let name = meta_str(&object, "name").unwrap_or_default().to_string();
        let object_ns = meta_str(&object, "namespace").map(str::to_string);
        match delete_one(state, info, object_ns.as_deref(), &name, options).await {
            Ok(_) => deleted.push(convert::from_storage(view, object)),
            // Deleted by someone else meanwhile: the collection is still gone.
            Err(err) if err.reason == "NotFound" => {}
            Err(err) => return Err(err),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", view.kind),
            "apiVersion": view.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": deleted,
        }),
    ))
}

fn is_service(info: &ResourceInfo) -> bool {
    (info.group, info.plural) == ("", "services")
}

/// The `kubernetes` service (the first service address, port 443) and its endpoints, which
/// point at this API server; the endpoints follow the server's address at every start.
pub(crate) async fn ensure_kubernetes_service(state: &State, advertise: std::net::SocketAddr) -> Result<(), ApiError> {
    let service_info = find("", "v1", "services").unwrap_or(namespaces());
    let endpoints_info = find("", "v1", "endpoints").unwrap_or(namespaces());
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": state.services.first().to_string(),
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.port()}]}
    });
    let mut warnings = Vec::new();
    // Looked up first: creating it again would fail on its address (allocated already)
    // before it could fail on its name, at every restart and on every further API server.
    let exists = match get(state, service_info, Some("default"), "kubernetes").await {
        Ok(_) => true,
        Err(err) if err.reason == "NotFound" => false,
        Err(err) => return Err(err),
    };
    if !exists {
        match create(
            state,
            service_info,
            Some("default"),
            service,
            Write::system(&mut warnings),
        )
        .await
        {
            Ok(_) => tracing::info!(ip = %state.services.first(), "created the kubernetes service"),
            // Another API server created it meanwhile.
            Err(_) if get(state, service_info, Some("default"), "kubernetes").await.is_ok() => {}
            Err(err) => return Err(err),
        }
    }
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": advertise.ip().to_string()}],
                     "ports": [{"name": "https", "port": advertise.port(), "protocol": "TCP"}]}]
    });
    match create(
        state,
        endpoints_info,
        Some("default"),
        endpoints.clone(),
        Write::system(&mut warnings),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(err) if err.reason == "AlreadyExists" => {
            let mut patch_warnings = Vec::new();
            let body = serde_json::to_vec(&json!({"subsets": endpoints["subsets"]})).unwrap_or_default();
            patch(
                state,
                (endpoints_info, Some("default"), "kubernetes"),
                Some("application/merge-patch+json"),
                &body,
                false,
                Write::system(&mut patch_warnings),
            )
            .await
            .map(|_| ())
        }
        Err(err) => Err(err),
    }
}

/// One object, with its resourceVersion.
pub(crate) async fn get_object(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    get(state, info, ns, name).await
}

/// Writes `object` if it is still at `expected`; for the server's own edits (bindings),
/// which bypass the client update rules.
pub(crate) async fn store_update(
    state: &State,
    (info, ns, name): (&ResourceInfo, Option<&str>, &str),
    object: &Value,
    expected: i64,
) -> Result<i64, ApiError> {
    state
        .store
        .update(&info.key(ns, name), to_store(object)?.into(), expected)
        .await
        .map_err(|e| store_error(e, info, name))
}

/// Every object of a resource (in a namespace).
pub(crate) async fn list_all(state: &State, info: &ResourceInfo, ns: Option<&str>) -> Result<Vec<Value>, ApiError> {
    Ok(
        list_page(state, info, ns, &Query::default(), &Filter::everything(), None)
            .await?
            .items,
    )
}

/// Deletes one object as `DELETE` does.
pub(crate) async fn delete_object(
    state: &State,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    delete_one(state, info, ns, name, options).await.map(|(_, body)| body)
}

/// The two system PriorityClasses upstream creates at start.
async fn ensure_system_priority_classes(state: &State) -> Result<(), ApiError> {
    let Some(info) = find("scheduling.k8s.io", "v1", "priorityclasses") else {
        return Ok(());
    };
    for (name, value, description) in [
        (
            "system-node-critical",
            2_000_001_000,
            "Used for system critical pods that must not be moved from their current node.",
        ),
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ] {
        let object = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                            "metadata": {"name": name}, "value": value, "description": description});
        match create(state, info, None, object, Write::system(&mut Vec::new())).await {
            Ok(_) => tracing::info!(priority_class = name, "created priority class"),
            Err(err) if err.reason == "AlreadyExists" => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The namespaces every cluster has from its first start (and the system priority classes).
pub(crate) async fn ensure_system_namespaces(state: &State) -> Result<(), ApiError> {
    ensure_system_priority_classes(state).await?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match create(state, namespaces(), None, object, Write::system(&mut Vec::new())).await {
            Ok(_) => tracing::info!(namespace = name, "created namespace"),
            Err(err) if err.reason == "AlreadyExists" => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding a change against the stored object answers exactly as decoding it whole:
    /// the same object, the same warnings, the same errors.
    #[test]
    fn decoding_a_change_equals_decoding_the_whole_object() {
        let info = |group, plural| rkube_api::catalogue::find(group, "v1", plural).unwrap();
        let decode = |info: &ResourceInfo, object: Value| {
            let mut warnings = Vec::new();
            decode_typed(info, object, FieldValidation::Warn, &mut warnings).unwrap()
        };
        let pod = decode(
            info("", "pods"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
                   "spec": {"containers": [{"name": "c", "image": "nginx",
                                            "resources": {"requests": {"cpu": "100m"}}}]},
                   "status": {"phase": "Pending"}}),
        );
        let event = decode(
            info("", "events"),
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
                   "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Created", "message": "one"}),
        );
        let changed = |before: &Value, pointer: &str, value: Value| {
            let mut object = before.clone();
            match object.pointer_mut(pointer) {
                Some(slot) => *slot = value,
                None => {
                    let (parent, member) = pointer.rsplit_once('/').unwrap();
                    object.pointer_mut(parent).unwrap()[member] = value;
                }
            }
            object
        };
        let cases = [
            (info("", "pods"), &pod, changed(&pod, "/status/phase", json!("Running"))),
            (info("", "pods"), &pod, changed(&pod, "/status/bogus", json!(1))),
            (info("", "pods"), &pod, changed(&pod, "/status/phase", json!(5))),
            (info("", "pods"), &pod, changed(&pod, "/status", Value::Null)),
            (info("", "pods"), &pod, changed(&pod, "/spec/containers", json!("x"))),
            (info("", "pods"), &pod, changed(&pod, "/spec/bogus", json!({"a": 1}))),
            (
                info("", "pods"),
                &pod,
                changed(&pod, "/metadata/labels/app", json!("db")),
            ),
            (info("", "pods"), &pod, changed(&pod, "/metadata/bogus", json!(1))),
            (
                info("", "pods"),
                &pod,
                changed(&pod, "/spec/containers/0/resources/requests/cpu", json!("1x")),
            ),
            (
                info("", "pods"),
                &pod,
                changed(&pod, "/spec/containers/0/resources/requests/cpu", json!("0.1")),
            ),
            (info("", "pods"), &pod, changed(&pod, "/extra", json!(true))),
            (info("", "pods"), &pod, pod.clone()),
            (info("", "pods"), &pod, json!([1])),
            // A member the type requires is among those unchanged.
            (info("", "events"), &event, changed(&event, "/message", json!("two"))),
            (info("", "events"), &event, changed(&event, "/count", json!("x"))),
        ];
        for (info, before, object) in cases {
            for validation in [FieldValidation::Strict, FieldValidation::Warn, FieldValidation::Ignore] {
                let (mut whole_warnings, mut changed_warnings) = (Vec::new(), Vec::new());
                let whole = decode_typed(info, object.clone(), validation, &mut whole_warnings);
                let change = decode_changed(info, object.clone(), before, validation, &mut changed_warnings);
                let answer = |r: Result<Value, ApiError>| r.map_err(|e| (e.code, e.message));
                assert_eq!(answer(change), answer(whole), "{object}");
                assert_eq!(changed_warnings, whole_warnings, "{object}");
            }
        }
    }

    #[test]
    fn a_status_write_keeps_all_but_the_status_labels_and_annotations_as_stored() {
        let stored = json!({"spec": {"a": 1}, "status": {"phase": "Pending"}, "extra": true,
                            "metadata": {"name": "p", "labels": {"x": "1"}, "annotations": {"k": "v"}, "uid": "u"}});
        let mut sent = json!({"spec": {"a": 2}, "status": {"phase": "Running"}, "bogus": 1,
                              "metadata": {"name": "q", "labels": {"x": "2"}}});
        keep_stored_except(&mut sent, &stored, &["status", "metadata"]);
        keep_stored_except(&mut sent["metadata"], &stored["metadata"], &["labels", "annotations"]);
        assert_eq!(
            sent,
            json!({"spec": {"a": 1}, "status": {"phase": "Running"}, "extra": true,
                   "metadata": {"name": "p", "labels": {"x": "2"}, "uid": "u"}})
        );
        // Not an object: the stored one, without the members named.
        let mut odd = json!(7);
        keep_stored_except(&mut odd, &stored["metadata"], &["labels", "annotations"]);
        assert_eq!(odd, json!({"name": "p", "uid": "u"}));
    }

    #[test]
    fn strategic_patches_need_the_kinds_facts() {
        let patch = br#"{"spec":{"replicas":2}}"#;
        let deployment = rkube_api::strategic::type_of("apps", "v1", "Deployment");
        assert!(PatchBody::decode(Some("application/strategic-merge-patch+json"), patch, deployment).is_ok());
        // A kind without merge keys (a custom resource) answers 415, as upstream.
        let err = match PatchBody::decode(Some("application/strategic-merge-patch+json"), patch, None) {
            Err(err) => err,
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(err.code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(err.message.contains("application/merge-patch+json"), "{}", err.message);
        assert!(
            err.message
                .ends_with("accepted media types include: application/json-patch+json, application/merge-patch+json"),
            "{}",
            err.message
        );
    }
}
