//! Request dispatch. Kubernetes paths are irregular (`/api/v1/...`, `/apis/<g>/<v>/...`,
//! health and version endpoints), so they are matched by hand rather than by a router.

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::version::Info;

use crate::State;
use crate::authn::Connection;
use crate::discovery;
use crate::path::{ResourcePath, Target, parse};
use crate::response::{ApiError, Body, full, json, text};
use crate::rest;
use crate::transport::RequestBody;

/// The Kubernetes version served: kubectl's dispatcher picks `kubectl.1.<minor>` from it.
pub const KUBERNETES_MINOR: &str = "33";

pub(crate) async fn handle(state: &State, connection: &Connection, request: Request<RequestBody>) -> Response<Body> {
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let (verb, resource) = verb_and_resource(&method, &path, request.uri().query());
    let response = dispatch(state, connection, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    let code = response.status().as_u16();
    // A watch's latency is its lifetime; upstream leaves watches out of these series too.
    if verb != "WATCH" {
        state.metrics.observe_request(verb, &resource, code, started);
    }
    tracing::debug!(%method, path, status = code, elapsed = ?started.elapsed(), "request");
    response
}

async fn dispatch(
    state: &State,
    connection: &Connection,
    request: Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    let identity = state
        .authenticator
        .authenticate(connection, request.headers())
        .ok_or_else(ApiError::unauthorized)?;
    if !crate::service_accounts::still_exists(state, &identity).await {
        return Err(ApiError::unauthorized());
    }
    tracing::trace!(user = identity.user, "authenticated");
    let path = request.uri().path().trim_end_matches('/');
    let verbose = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    let accept = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if request.method() == Method::GET
        && let Some(response) = discovery_document(path, accept.as_deref(), request.headers())
    {
        return response;
    }
    if let Target::Resource(resource) = parse(path) {
        // The borrow of the path ends here: the handler re-reads what it needs.
        let owned = OwnedTarget::from(&resource);
        let mut request = request;
        // Review APIs answer about the requester.
        request.extensions_mut().insert(identity);
        return rest::handle(state, request, owned.borrow()).await;
    }
    match (request.method(), path) {
        (&Method::GET, "/version") => Ok(json(StatusCode::OK, &version())),
        // No schemas are published yet: an empty v2 document is what kubectl accepts as
        // "validate nothing client-side" (v3 404 and v2 404 would make create fail).
        (&Method::GET, "/openapi/v2") => Ok(octet_stream_empty()),
        (&Method::GET, _) if path == "/openapi/v3" || path.starts_with("/openapi/v3/") => {
            let openapi = crate::openapi::built(&state.openapi).await?;
            openapi
                .serve(path, request.uri().query(), request.headers())
                .ok_or_else(|| ApiError::not_found_path(path))
        }
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, state.metrics.render());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            Ok(response)
        }
        (&Method::GET, "/healthz" | "/livez") => Ok(health(&[("ping", Ok(()))], path, verbose)),
        (&Method::GET, "/readyz") => {
            let store = state
                .store
                .current_revision()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            Ok(health(&[("ping", Ok(())), ("datastore", store)], path, verbose))
        }
        (&Method::GET, _) => Err(ApiError::not_found_path(request.uri().path())),
        (method, _) => Err(ApiError::method_not_allowed(method)),
    }
}

/// Discovery documents for GET on an API root or group-version, if the path names one.
fn discovery_document(
    path: &str,
    accept: Option<&str>,
    headers: &http::HeaderMap,
) -> Option<Result<Response<Body>, ApiError>> {
    let aggregated = discovery::wants_aggregated(accept);
    let document = match parse(path) {
        Target::CoreRoot if aggregated => return Some(Ok(aggregated_response(discovery::aggregated_core()))),
        Target::GroupsRoot if aggregated => return Some(Ok(aggregated_response(discovery::aggregated_groups()))),
        Target::CoreRoot => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            discovery::api_versions(&host)
        }
        Target::GroupsRoot => discovery::api_group_list(),
        Target::Group(group) => match discovery::api_group(group) {
            Some(doc) => doc,
            None => return Some(Err(ApiError::not_found_path(path))),
        },
        Target::GroupVersion(group, version) => match discovery::api_resource_list(group, version) {
            Some(doc) => doc,
            None => return Some(Err(ApiError::not_found_path(path))),
        },
        Target::Unknown if path.starts_with("/api/") || path.starts_with("/apis/") => {
            return Some(Err(ApiError::not_found_path(path)));
        }
        Target::Resource(_) | Target::Unknown => return None,
    };
    Some(Ok(json(StatusCode::OK, &document)))
}

fn aggregated_response(document: serde_json::Value) -> Response<Body> {
    let mut response = json(StatusCode::OK, &document);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
    );
    response
}

fn octet_stream_empty() -> Response<Body> {
    let mut response = Response::new(full(bytes::Bytes::new()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A resource path detached from the request, so the request can move into the handler.
struct OwnedTarget {
    info: &'static rkube_api::ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl OwnedTarget {
    fn from(path: &ResourcePath<'_>) -> Self {
        Self {
            info: path.info,
            namespace: path.namespace.map(str::to_string),
            name: path.name.map(str::to_string),
            subresource: path.subresource.map(str::to_string),
        }
    }

    fn borrow(&self) -> ResourcePath<'_> {
        ResourcePath {
            info: self.info,
            namespace: self.namespace.as_deref(),
            name: self.name.as_deref(),
            subresource: self.subresource.as_deref(),
        }
    }
}

/// Upstream's verb label (GET, LIST, WATCH, POST, ...) and the resource, for metrics.
fn verb_and_resource(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let (named, resource) = match parse(path) {
        Target::Resource(r) => (
            r.name.is_some(),
            match r.subresource {
                Some(sub) => format!("{}/{sub}", r.info.plural),
                None => r.info.plural.to_string(),
            },
        ),
        _ => (true, String::new()),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match (method.as_str(), named, watch) {
        ("GET", _, true) => "WATCH",
        ("GET", true, _) => "GET",
        ("GET", false, _) => "LIST",
        ("POST", ..) => "POST",
        ("PUT", ..) => "PUT",
        ("PATCH", ..) => "PATCH",
        ("DELETE", true, _) => "DELETE",
        ("DELETE", false, _) => "DELETECOLLECTION",
        _ => "OTHER",
    };
    (verb, resource)
}

fn version() -> Info {
    Info {
        major: "1".into(),
        minor: KUBERNETES_MINOR.into(),
        git_version: format!("v1.{KUBERNETES_MINOR}.0+rkube-{}", env!("CARGO_PKG_VERSION")),
        git_commit: String::new(),
        git_tree_state: "clean".into(),
        build_date: String::new(),
        go_version: "rust".into(),
        compiler: "rustc".into(),
        platform: format!("{}/{}", std::env::consts::OS, go_arch()),
        ..Default::default()
    }
}

/// Architecture names as Go spells them, which clients print.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `ok`, or upstream's verbose listing; 500 naming the failed checks otherwise.
fn health(checks: &[(&str, Result<(), String>)], path: &str, verbose: bool) -> Response<Body> {
    let failed: Vec<_> = checks.iter().filter(|(_, r)| r.is_err()).collect();
    let endpoint = path.trim_start_matches('/');
    if failed.is_empty() && !verbose {
        return text(StatusCode::OK, "ok");
    }
    let mut body = String::new();
    for (name, result) in checks {
        match result {
            Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
            Err(_) => body.push_str(&format!("[-]{name} failed: reason withheld\n")),
        }
    }
    if failed.is_empty() {
        body.push_str(&format!("{endpoint} check passed\n"));
        text(StatusCode::OK, body)
    } else {
        for (name, result) in &failed {
            if let Err(err) = result {
                tracing::warn!(check = name, %err, "{endpoint} check failed");
            }
        }
        body.push_str(&format!("{endpoint} check failed\n"));
        text(StatusCode::INTERNAL_SERVER_ERROR, body)
    }
}
