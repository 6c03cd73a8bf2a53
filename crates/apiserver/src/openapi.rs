//! OpenAPI v3: the root document and one document per group-version, listing every served
//! path and operation with upstream's operation ids, parameters and kind extensions.
//!
//! kubectl reads them to decide that the server validates fields itself: it looks for the
//! PATCH operation of the kind (`x-kubernetes-group-version-kind`) and its `fieldValidation`
//! query parameter. Each document carries upstream's complete component schemas of its
//! kinds (with every type they use, and the patch merge keys and strategies), which
//! `kubectl explain` prints and client-side apply computes patches with; a PATCH operation
//! offers only the patch types the server accepts. Legacy versions (removed upstream) get
//! their current kind's schemas under their own names and group-version-kind.
//!
//! Documents are built once from the catalogue; each is served at a URL carrying the hash
//! of its content, immutable there, with an ETag.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use rkube_api::{ResourceInfo, Subresource};
use serde_json::{Map, Value, json};

use crate::response::{ApiError, Body, full};

struct Document {
    body: Bytes,
    hash: String,
}

pub(crate) struct OpenApi {
    root: Bytes,
    /// By path below `/openapi/v3/`: `api/v1`, `apis/apps/v1`.
    documents: BTreeMap<String, Document>,
}

/// The documents, built once (off the async threads) by whoever asks first.
pub(crate) async fn built(cell: &tokio::sync::OnceCell<OpenApi>) -> Result<&OpenApi, ApiError> {
    cell.get_or_try_init(|| async {
        tokio::task::spawn_blocking(OpenApi::build)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    })
    .await
}

impl OpenApi {
    pub fn build() -> Result<Self, ApiError> {
        let mut documents = BTreeMap::new();
        for (group, version) in rkube_api::group_versions() {
            let resources = rkube_api::resources()
                .iter()
                .chain(rkube_api::reviews())
                .filter(|r| r.group == group && r.version == version);
            let document = group_version_document(resources);
            let body = serde_json::to_vec(&document).map_err(|e| ApiError::internal(e.to_string()))?;
            let digest = ring::digest::digest(&ring::digest::SHA512, &body);
            let hash = digest.as_ref().iter().fold(String::new(), |mut hex, byte| {
                let _ = write!(hex, "{byte:02X}");
                hex
            });
            let path = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            documents.insert(
                path,
                Document {
                    body: body.into(),
                    hash,
                },
            );
        }
        let paths: Map<String, Value> = documents
            .iter()
            .map(|(path, document)| {
                let url = format!("/openapi/v3/{path}?hash={}", document.hash);
                (path.clone(), json!({"serverRelativeURL": url}))
            })
            .collect();
        let root = serde_json::to_vec(&json!({"paths": paths})).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Self {
            root: root.into(),
            documents,
        })
    }

    /// Serves `/openapi/v3` and its documents; `None` for other paths.
    pub fn serve(&self, path: &str, query: Option<&str>, headers: &HeaderMap) -> Option<Response<Body>> {
        if path == "/openapi/v3" {
            return Some(respond(StatusCode::OK, self.root.clone(), None, "no-cache, private"));
        }
        let document = self.documents.get(path.strip_prefix("/openapi/v3/")?)?;
        let etag = format!("\"{}\"", document.hash);
        let wanted = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "hash")
                .map(|(_, v)| v.into_owned())
        });
        if headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        {
            return Some(respond(
                StatusCode::NOT_MODIFIED,
                Bytes::new(),
                Some(&etag),
                "no-cache, private",
            ));
        }
        Some(match wanted {
            Some(hash) if hash == document.hash => {
                respond(StatusCode::OK, document.body.clone(), Some(&etag), "public, immutable")
            }
            // An outdated hash: send the client to the current one, as upstream does.
            Some(_) => {
                let mut response = respond(StatusCode::MOVED_PERMANENTLY, Bytes::new(), None, "no-cache, private");
                let location = format!("{path}?hash={}", document.hash);
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            None => respond(StatusCode::OK, document.body.clone(), Some(&etag), "no-cache, private"),
        })
    }
}

fn respond(code: StatusCode, body: Bytes, etag: Option<&str>, cache_control: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// `AppsV1`, `CoreV1`, `RbacAuthorizationV1`: how upstream's operation ids name a
/// group-version.
fn group_version_id(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.trim_end_matches(".k8s.io")
    };
    let mut id: String = group.split(['.', '-']).map(capitalized).collect();
    id.push_str(&capitalized(version));
    id
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn query_parameter(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn path_parameter(name: &str, description: String) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn list_parameters() -> Vec<Value> {
    vec![
        query_parameter(
            "allowWatchBookmarks",
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
        ),
        query_parameter(
            "continue",
            "string",
            "The continue option should be set when retrieving more results from the server.",
        ),
        query_parameter(
            "fieldSelector",
            "string",
            "A selector to restrict the list of returned objects by their fields.",
        ),
        query_parameter(
            "labelSelector",
            "string",
            "A selector to restrict the list of returned objects by their labels.",
        ),
        query_parameter(
            "limit",
            "integer",
            "limit is a maximum number of responses to return for a list call.",
        ),
        query_parameter(
            "resourceVersion",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        query_parameter(
            "resourceVersionMatch",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
        ),
        query_parameter(
            "sendInitialEvents",
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
        ),
        query_parameter("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        query_parameter(
            "watch",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        ),
    ]
}

fn write_parameters(patch: bool) -> Vec<Value> {
    let mut parameters = vec![
        query_parameter(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_parameter(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_parameter(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default), Strict.",
        ),
    ];
    if patch {
        parameters.push(query_parameter(
            "force",
            "boolean",
            "Force is going to \"force\" Apply requests.",
        ));
    }
    parameters
}

fn delete_parameters() -> Vec<Value> {
    vec![
        query_parameter(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_parameter(
            "gracePeriodSeconds",
            "integer",
            "The duration in seconds before the object should be deleted.",
        ),
        query_parameter(
            "propagationPolicy",
            "string",
            "Whether and how garbage collection will be performed: Orphan, Background or Foreground.",
        ),
    ]
}

/// The request and response bodies: JSON objects (their schemas are not published yet).
fn object_content(types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
        .collect();
    Value::Object(content)
}

fn responses(codes: &[(&str, &str)]) -> Value {
    let responses: Map<String, Value> = codes
        .iter()
        .map(|(code, description)| {
            (
                code.to_string(),
                json!({"description": description, "content": object_content(&["application/json", "application/yaml"])}),
            )
        })
        .collect();
    Value::Object(responses)
}

struct Operations<'a> {
    info: &'a ResourceInfo,
    gv_id: String,
    tag: String,
}

impl Operations<'_> {
    fn operation(
        &self,
        id: String,
        action: &str,
        kind: (&str, &str, &str),
        parameters: Vec<Value>,
    ) -> Map<String, Value> {
        let mut op = Map::new();
        op.insert("tags".into(), json!([self.tag]));
        op.insert("operationId".into(), json!(id));
        if !parameters.is_empty() {
            op.insert("parameters".into(), Value::Array(parameters));
        }
        op.insert("x-kubernetes-action".into(), json!(action));
        op.insert(
            "x-kubernetes-group-version-kind".into(),
            json!({"group": kind.0, "version": kind.1, "kind": kind.2}),
        );
        op
    }

    /// A POST that creates (objects, bindings, evictions).
    fn create_operation(&self, id: String, kind: (&str, &str, &str)) -> Map<String, Value> {
        let mut op = self.operation(id, "post", kind, write_parameters(false));
        op.insert(
            "requestBody".into(),
            json!({"content": object_content(&["*/*"]), "required": true}),
        );
        op.insert(
            "responses".into(),
            responses(&[("200", "OK"), ("201", "Created"), ("202", "Accepted")]),
        );
        op
    }

    /// Operations on the collection, the object and its subresources.
    fn add_paths(&self, paths: &mut Map<String, Value>) {
        let info = self.info;
        let kind = (info.group, info.version, info.kind);
        let scope = if info.namespaced() { "Namespaced" } else { "" };
        let root = if info.group.is_empty() {
            format!("/api/{}", info.version)
        } else {
            format!("/apis/{}/{}", info.group, info.version)
        };
        let collection = if info.namespaced() {
            format!("{root}/namespaces/{{namespace}}/{}", info.plural)
        } else {
            format!("{root}/{}", info.plural)
        };
        let name = path_parameter("name", format!("name of the {}", info.kind));
        let namespace = path_parameter(
            "namespace",
            "object name and auth scope, such as for teams and projects".into(),
        );
        let pretty = query_parameter("pretty", "string", "If 'true', then the output is pretty printed.");
        let mut path_parameters = vec![pretty.clone()];
        if info.namespaced() {
            path_parameters.insert(0, namespace.clone());
        }
        let has = |verb: &str| info.verbs.contains(&verb);
        let id = |verb: &str, suffix: &str| format!("{verb}{}{scope}{}{suffix}", self.gv_id, info.kind);

        let mut ops = Map::new();
        if has("list") {
            let mut op = self.operation(id("list", ""), "list", kind, list_parameters());
            op.insert("responses".into(), responses(&[("200", "OK")]));
            ops.insert("get".into(), Value::Object(op));
        }
        if has("create") {
            ops.insert(
                "post".into(),
                Value::Object(self.create_operation(id("create", ""), kind)),
            );
        }
        if has("deletecollection") {
            let mut parameters = delete_parameters();
            parameters.extend(list_parameters());
            let op_id = format!("delete{}Collection{scope}{}", self.gv_id, info.kind);
            let mut op = self.operation(op_id, "deletecollection", kind, parameters);
            op.insert("responses".into(), responses(&[("200", "OK")]));
            ops.insert("delete".into(), Value::Object(op));
        }
        if !ops.is_empty() {
            ops.insert("parameters".into(), Value::Array(path_parameters.clone()));
            paths.insert(collection.clone(), Value::Object(ops));
        }

        let object_path = format!("{collection}/{{name}}");
        let mut object_parameters = vec![name.clone()];
        object_parameters.extend(path_parameters.clone());
        paths.insert(
            object_path.clone(),
            Value::Object(self.object_operations(&object_parameters, kind, &id, "", info.verbs)),
        );
        for sub in info.subresources {
            if let Some(ops) = self.subresource_operations(sub, &object_parameters, &id) {
                paths.insert(format!("{object_path}/{}", sub.name), Value::Object(ops));
            }
        }

        if info.namespaced() && has("list") {
            let mut op = self.operation(
                format!("list{}{}ForAllNamespaces", self.gv_id, info.kind),
                "list",
                kind,
                list_parameters(),
            );
            op.insert("responses".into(), responses(&[("200", "OK")]));
            let mut ops = Map::new();
            ops.insert("get".into(), Value::Object(op));
            ops.insert("parameters".into(), json!([pretty]));
            paths.insert(format!("{root}/{}", info.plural), Value::Object(ops));
        }
    }

    fn object_operations(
        &self,
        path_parameters: &[Value],
        kind: (&str, &str, &str),
        id: &dyn Fn(&str, &str) -> String,
        suffix: &str,
        verbs: &[&str],
    ) -> Map<String, Value> {
        let has = |verb: &str| verbs.contains(&verb);
        let mut ops = Map::new();
        if has("get") {
            let mut op = self.operation(id("read", suffix), "get", kind, Vec::new());
            op.insert("responses".into(), responses(&[("200", "OK")]));
            ops.insert("get".into(), Value::Object(op));
        }
        if has("update") {
            let mut op = self.operation(id("replace", suffix), "put", kind, write_parameters(false));
            op.insert(
                "requestBody".into(),
                json!({"content": object_content(&["*/*"]), "required": true}),
            );
            op.insert("responses".into(), responses(&[("200", "OK"), ("201", "Created")]));
            ops.insert("put".into(), Value::Object(op));
        }
        if has("patch") {
            let mut op = self.operation(id("patch", suffix), "patch", kind, write_parameters(true));
            // Only the patch types the server applies today.
            let mut types = vec!["application/json-patch+json", "application/merge-patch+json"];
            if rkube_api::strategic::type_of(kind.0, kind.1, kind.2).is_some() {
                types.push("application/strategic-merge-patch+json");
            }
            op.insert(
                "requestBody".into(),
                json!({"content": object_content(&types), "required": true}),
            );
            op.insert("responses".into(), responses(&[("200", "OK"), ("201", "Created")]));
            ops.insert("patch".into(), Value::Object(op));
        }
        if has("delete") && suffix.is_empty() {
            let mut op = self.operation(id("delete", suffix), "delete", kind, delete_parameters());
            op.insert("requestBody".into(), json!({"content": object_content(&["*/*"])}));
            op.insert("responses".into(), responses(&[("200", "OK"), ("202", "Accepted")]));
            ops.insert("delete".into(), Value::Object(op));
        }
        if !ops.is_empty() {
            ops.insert("parameters".into(), Value::Array(path_parameters.to_vec()));
        }
        ops
    }

    fn subresource_operations(
        &self,
        sub: &Subresource,
        path_parameters: &[Value],
        id: &dyn Fn(&str, &str) -> String,
    ) -> Option<Map<String, Value>> {
        let kind = if sub.kind.is_empty() {
            (self.info.group, self.info.version, self.info.kind)
        } else {
            (sub.group, sub.version, sub.kind)
        };
        let suffix = capitalized(sub.name);
        match sub.name {
            "status" | "scale" => Some(self.object_operations(path_parameters, kind, id, &suffix, sub.verbs)),
            "binding" | "eviction" => {
                let mut ops = Map::new();
                ops.insert(
                    "post".into(),
                    Value::Object(self.create_operation(id("create", &suffix), kind)),
                );
                ops.insert("parameters".into(), Value::Array(path_parameters.to_vec()));
                Some(ops)
            }
            // Streams (log, exec, attach, portforward) are not plain object operations.
            _ => None,
        }
    }
}

fn group_version_document<'a>(resources: impl Iterator<Item = &'a ResourceInfo>) -> Value {
    let mut paths = Map::new();
    let mut kinds: Vec<&'static str> = Vec::new();
    let mut legacy = BTreeMap::new();
    for info in resources {
        kinds.extend(rkube_api::schemas::names_of(info.group, info.version, info.kind));
        if let Some(current) = info
            .stored_as
            .filter(|_| rkube_api::convert::deprecation(info).is_some())
        {
            legacy.extend(rkube_api::schemas::legacy(info.group, info.version, info.kind, current));
        }
        let gv_id = group_version_id(info.group, info.version);
        let tag = if info.group.is_empty() {
            format!("core_{}", info.version)
        } else {
            format!(
                "{}_{}",
                info.group.trim_end_matches(".k8s.io").replace('.', "_"),
                info.version
            )
        };
        Operations { info, gv_id, tag }.add_paths(&mut paths);
    }
    let mut schemas = rkube_api::schemas::closure(kinds);
    schemas.extend(legacy);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(path: &str) -> Value {
        let openapi = OpenApi::build().unwrap();
        serde_json::from_slice(&openapi.documents[path].body).unwrap()
    }

    #[test]
    fn operation_ids_name_group_versions_as_upstream() {
        assert_eq!(group_version_id("", "v1"), "CoreV1");
        assert_eq!(group_version_id("apps", "v1"), "AppsV1");
        assert_eq!(
            group_version_id("rbac.authorization.k8s.io", "v1"),
            "RbacAuthorizationV1"
        );
        assert_eq!(group_version_id("autoscaling", "v2"), "AutoscalingV2");
    }

    /// What kubectl looks for before it sends `fieldValidation=Strict`.
    #[test]
    fn every_kind_has_a_patch_operation_with_field_validation() {
        for info in rkube_api::resources() {
            let path = if info.group.is_empty() {
                format!("api/{}", info.version)
            } else {
                format!("apis/{}/{}", info.group, info.version)
            };
            let doc = document(&path);
            let found = doc["paths"].as_object().unwrap().values().any(|p| {
                let patch = &p["patch"];
                patch["x-kubernetes-group-version-kind"]
                    == json!({"group": info.group, "version": info.version, "kind": info.kind})
                    && patch["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|param| param["name"] == "fieldValidation" && param["in"] == "query")
            });
            assert!(found, "{} has no PATCH operation with fieldValidation", info.plural);
        }
    }

    #[test]
    fn paths_and_operations_follow_upstream() {
        let doc = document("apis/apps/v1");
        let deployment = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert_eq!(deployment["get"]["operationId"], "readAppsV1NamespacedDeployment");
        assert_eq!(deployment["patch"]["operationId"], "patchAppsV1NamespacedDeployment");
        assert_eq!(deployment["parameters"][0]["name"], "name");
        let scale = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(scale["put"]["operationId"], "replaceAppsV1NamespacedDeploymentScale");
        assert_eq!(scale["patch"]["x-kubernetes-group-version-kind"]["kind"], "Scale");
        let all = &doc["paths"]["/apis/apps/v1/deployments"]["get"];
        assert_eq!(all["operationId"], "listAppsV1DeploymentForAllNamespaces");
        let core = document("api/v1");
        let nodes = &core["paths"]["/api/v1/nodes"];
        assert_eq!(nodes["delete"]["operationId"], "deleteCoreV1CollectionNode");
        assert!(
            core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"].is_object(),
            "{core}"
        );
        assert!(
            core["paths"]
                .get("/api/v1/namespaces/{namespace}/pods/{name}/exec")
                .is_none()
        );
    }

    #[test]
    fn documents_are_served_at_their_hash() {
        let openapi = OpenApi::build().unwrap();
        let root = openapi.serve("/openapi/v3", None, &HeaderMap::new()).unwrap();
        assert_eq!(root.status(), StatusCode::OK);
        let hash = &openapi.documents["apis/apps/v1"].hash;
        assert_eq!(hash.len(), 128);
        let query = format!("hash={hash}");
        let response = openapi
            .serve("/openapi/v3/apis/apps/v1", Some(&query), &HeaderMap::new())
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "public, immutable");
        let etag = response.headers()[header::ETAG].clone();
        assert_eq!(etag.to_str().unwrap(), format!("\"{hash}\""));
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        let cached = openapi.serve("/openapi/v3/apis/apps/v1", None, &headers).unwrap();
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        let moved = openapi
            .serve("/openapi/v3/apis/apps/v1", Some("hash=OLD"), &HeaderMap::new())
            .unwrap();
        assert_eq!(moved.status(), StatusCode::MOVED_PERMANENTLY);
        assert!(
            openapi
                .serve("/openapi/v3/apis/nope/v1", None, &HeaderMap::new())
                .is_none()
        );
    }
}
