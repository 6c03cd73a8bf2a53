//! The resource catalogue: every served resource with the names discovery advertises.
//! Only what the API server really serves is listed here (discovery advertises exactly
//! this), so kinds join the table as their storage and semantics arrive.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// The kind the subresource answers with, when it differs from the parent's.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub scope: Scope,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Where objects live in the store, as upstream lays out etcd (`/registry/<this>/...`).
    pub storage: &'static str,
    /// For a version served by conversion: the (group, version) its objects are stored as.
    pub stored_as: Option<(&'static str, &'static str)>,
}

impl ResourceInfo {
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How messages name the resource: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store prefix of every object of this resource (of one namespace, if given).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced() => format!("/registry/{}/{ns}/", self.storage),
            _ => format!("/registry/{}/", self.storage),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }

    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces cannot be deleted as a collection.
const NAMESPACE_VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! resource {
    ($group:literal, $version:literal, $kind:literal, $plural:literal, $singular:literal, $scope:ident,
     short: $short:expr, categories: $cat:expr, storage: $storage:literal, status: $status:literal, scale) => {
        ResourceInfo {
            subresources: &[
                Subresource {
                    name: "scale",
                    group: "autoscaling",
                    version: "v1",
                    kind: "Scale",
                    verbs: &["get", "patch", "update"],
                },
                Subresource {
                    name: "status",
                    group: $group,
                    version: $version,
                    kind: $kind,
                    verbs: &["get", "patch", "update"],
                },
            ],
            ..resource!($group, $version, $kind, $plural, $singular, $scope,
                short: $short, categories: $cat, storage: $storage, status: $status)
        }
    };
    ($group:literal, $version:literal, $kind:literal, $plural:literal, $singular:literal, $scope:ident,
     short: $short:expr, categories: $cat:expr, storage: $storage:literal, status: $status:literal) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            scope: Scope::$scope,
            short_names: $short,
            categories: $cat,
            verbs: VERBS,
            subresources: if $status {
                &[Subresource {
                    name: "status",
                    group: $group,
                    version: $version,
                    kind: $kind,
                    verbs: &["get", "patch", "update"],
                }]
            } else {
                &[]
            },
            storage: $storage,
            stored_as: None,
        }
    };
}

/// A legacy version of a current resource, served by conversion to and from it.
macro_rules! legacy {
    ($group:literal, $version:literal, $kind:literal, $plural:literal, $singular:literal, $scope:ident,
     storage: $storage:literal, status: $status:literal, current: $current:expr $(, $scale:ident)?) => {
        ResourceInfo {
            stored_as: Some($current),
            ..resource!($group, $version, $kind, $plural, $singular, $scope,
                short: NONE, categories: NONE, storage: $storage, status: $status $(, $scale)?)
        }
    };
}

static RESOURCES: &[ResourceInfo] = &[
    // core/v1
    ResourceInfo {
        verbs: NAMESPACE_VERBS,
        // `finalize` is how the namespace controller says the content is gone.
        subresources: &[
            Subresource {
                name: "finalize",
                group: "",
                version: "v1",
                kind: "Namespace",
                verbs: &["update"],
            },
            Subresource {
                name: "status",
                group: "",
                version: "v1",
                kind: "Namespace",
                verbs: &["get", "patch", "update"],
            },
        ],
        ..resource!("", "v1", "Namespace", "namespaces", "namespace", Cluster,
            short: &["ns"], categories: NONE, storage: "namespaces", status: true)
    },
    ResourceInfo {
        subresources: &[
            Subresource {
                name: "attach",
                group: "",
                version: "v1",
                kind: "PodAttachOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "binding",
                group: "",
                version: "v1",
                kind: "Binding",
                verbs: &["create"],
            },
            Subresource {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: &["create"],
            },
            Subresource {
                name: "exec",
                group: "",
                version: "v1",
                kind: "PodExecOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "log",
                group: "",
                version: "v1",
                kind: "Pod",
                verbs: &["get"],
            },
            Subresource {
                name: "portforward",
                group: "",
                version: "v1",
                kind: "PodPortForwardOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "status",
                group: "",
                version: "v1",
                kind: "Pod",
                verbs: &["get", "patch", "update"],
            },
        ],
        ..resource!("", "v1", "Pod", "pods", "pod", Namespaced,
            short: &["po"], categories: ALL, storage: "pods", status: true)
    },
    resource!("", "v1", "Service", "services", "service", Namespaced,
        short: &["svc"], categories: ALL, storage: "services/specs", status: true),
    resource!("", "v1", "Endpoints", "endpoints", "endpoints", Namespaced,
        short: &["ep"], categories: NONE, storage: "services/endpoints", status: false),
    resource!("", "v1", "Node", "nodes", "node", Cluster,
        short: &["no"], categories: NONE, storage: "minions", status: true),
    resource!("", "v1", "ConfigMap", "configmaps", "configmap", Namespaced,
        short: &["cm"], categories: NONE, storage: "configmaps", status: false),
    resource!("", "v1", "Secret", "secrets", "secret", Namespaced,
        short: NONE, categories: NONE, storage: "secrets", status: false),
    ResourceInfo {
        // `kubectl create token`: short-lived tokens for the account.
        subresources: &[Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: &["create"],
        }],
        ..resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", Namespaced,
            short: &["sa"], categories: NONE, storage: "serviceaccounts", status: false)
    },
    resource!("", "v1", "Event", "events", "event", Namespaced,
        short: &["ev"], categories: NONE, storage: "events", status: false),
    resource!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", Cluster,
        short: &["pv"], categories: NONE, storage: "persistentvolumes", status: true),
    resource!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", Namespaced,
        short: &["pvc"], categories: NONE, storage: "persistentvolumeclaims", status: true),
    resource!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", Namespaced,
        short: &["quota"], categories: NONE, storage: "resourcequotas", status: true),
    resource!("", "v1", "LimitRange", "limitranges", "limitrange", Namespaced,
        short: &["limits"], categories: NONE, storage: "limitranges", status: false),
    resource!("", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", Namespaced,
        short: &["rc"], categories: ALL, storage: "controllers", status: true, scale),
    // apps/v1
    resource!("apps", "v1", "Deployment", "deployments", "deployment", Namespaced,
        short: &["deploy"], categories: ALL, storage: "deployments", status: true, scale),
    resource!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", Namespaced,
        short: &["rs"], categories: ALL, storage: "replicasets", status: true, scale),
    resource!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", Namespaced,
        short: &["sts"], categories: ALL, storage: "statefulsets", status: true, scale),
    resource!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", Namespaced,
        short: &["ds"], categories: ALL, storage: "daemonsets", status: true),
    resource!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", Namespaced,
        short: NONE, categories: NONE, storage: "controllerrevisions", status: false),
    // batch/v1
    resource!("batch", "v1", "Job", "jobs", "job", Namespaced,
        short: NONE, categories: ALL, storage: "jobs", status: true),
    resource!("batch", "v1", "CronJob", "cronjobs", "cronjob", Namespaced,
        short: &["cj"], categories: ALL, storage: "cronjobs", status: true),
    // autoscaling/v2, and v1 converted to and from it
    resource!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", Namespaced,
        short: &["hpa"], categories: ALL, storage: "horizontalpodautoscalers", status: true),
    ResourceInfo {
        stored_as: Some(("autoscaling", "v2")),
        ..resource!("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", Namespaced,
            short: &["hpa"], categories: ALL, storage: "horizontalpodautoscalers", status: true)
    },
    // networking.k8s.io/v1
    resource!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", Namespaced,
        short: &["ing"], categories: NONE, storage: "ingress", status: true),
    resource!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", Cluster,
        short: NONE, categories: NONE, storage: "ingressclasses", status: false),
    resource!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", Namespaced,
        short: &["netpol"], categories: NONE, storage: "networkpolicies", status: false),
    // discovery.k8s.io/v1
    resource!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", Namespaced,
        short: NONE, categories: NONE, storage: "endpointslices", status: false),
    // coordination.k8s.io/v1
    resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", Namespaced,
        short: NONE, categories: NONE, storage: "leases", status: false),
    // rbac.authorization.k8s.io/v1
    resource!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", Namespaced,
        short: NONE, categories: NONE, storage: "roles", status: false),
    resource!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", Namespaced,
        short: NONE, categories: NONE, storage: "rolebindings", status: false),
    resource!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", Cluster,
        short: NONE, categories: NONE, storage: "clusterroles", status: false),
    resource!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", Cluster,
        short: NONE, categories: NONE, storage: "clusterrolebindings", status: false),
    // storage.k8s.io/v1
    resource!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", Cluster,
        short: &["sc"], categories: NONE, storage: "storageclasses", status: false),
    // policy/v1
    resource!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", Namespaced,
        short: &["pdb"], categories: NONE, storage: "poddisruptionbudgets", status: true),
    // scheduling.k8s.io/v1
    resource!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", Cluster,
        short: &["pc"], categories: NONE, storage: "priorityclasses", status: false),
    // events.k8s.io/v1, converted to and from core/v1 events
    ResourceInfo {
        stored_as: Some(("", "v1")),
        ..resource!("events.k8s.io", "v1", "Event", "events", "event", Namespaced,
            short: &["ev"], categories: NONE, storage: "events", status: false)
    },
    // Legacy versions upstream removed, for old manifests; listed last so that discovery
    // puts them after the current versions (kubectl keeps preferring those).
    legacy!("extensions", "v1beta1", "Deployment", "deployments", "deployment", Namespaced,
        storage: "deployments", status: true, current: ("apps", "v1"), scale),
    legacy!("extensions", "v1beta1", "DaemonSet", "daemonsets", "daemonset", Namespaced,
        storage: "daemonsets", status: true, current: ("apps", "v1")),
    legacy!("extensions", "v1beta1", "ReplicaSet", "replicasets", "replicaset", Namespaced,
        storage: "replicasets", status: true, current: ("apps", "v1"), scale),
    legacy!("extensions", "v1beta1", "Ingress", "ingresses", "ingress", Namespaced,
        storage: "ingress", status: true, current: ("networking.k8s.io", "v1")),
    legacy!("apps", "v1beta2", "Deployment", "deployments", "deployment", Namespaced,
        storage: "deployments", status: true, current: ("apps", "v1"), scale),
    legacy!("apps", "v1beta2", "StatefulSet", "statefulsets", "statefulset", Namespaced,
        storage: "statefulsets", status: true, current: ("apps", "v1"), scale),
    legacy!("apps", "v1beta2", "DaemonSet", "daemonsets", "daemonset", Namespaced,
        storage: "daemonsets", status: true, current: ("apps", "v1")),
    legacy!("apps", "v1beta2", "ReplicaSet", "replicasets", "replicaset", Namespaced,
        storage: "replicasets", status: true, current: ("apps", "v1"), scale),
    legacy!("apps", "v1beta1", "Deployment", "deployments", "deployment", Namespaced,
        storage: "deployments", status: true, current: ("apps", "v1"), scale),
    legacy!("apps", "v1beta1", "StatefulSet", "statefulsets", "statefulset", Namespaced,
        storage: "statefulsets", status: true, current: ("apps", "v1"), scale),
    legacy!("batch", "v1beta1", "CronJob", "cronjobs", "cronjob", Namespaced,
        storage: "cronjobs", status: true, current: ("batch", "v1")),
    legacy!("networking.k8s.io", "v1beta1", "Ingress", "ingresses", "ingress", Namespaced,
        storage: "ingress", status: true, current: ("networking.k8s.io", "v1")),
    legacy!("rbac.authorization.k8s.io", "v1beta1", "Role", "roles", "role", Namespaced,
        storage: "roles", status: false, current: ("rbac.authorization.k8s.io", "v1")),
    legacy!("rbac.authorization.k8s.io", "v1beta1", "RoleBinding", "rolebindings", "rolebinding", Namespaced,
        storage: "rolebindings", status: false, current: ("rbac.authorization.k8s.io", "v1")),
    legacy!("rbac.authorization.k8s.io", "v1beta1", "ClusterRole", "clusterroles", "clusterrole", Cluster,
        storage: "clusterroles", status: false, current: ("rbac.authorization.k8s.io", "v1")),
    legacy!("rbac.authorization.k8s.io", "v1beta1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", Cluster,
        storage: "clusterrolebindings", status: false, current: ("rbac.authorization.k8s.io", "v1")),
    legacy!("policy", "v1beta1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", Namespaced,
        storage: "poddisruptionbudgets", status: true, current: ("policy", "v1")),
];

pub fn resources() -> &'static [ResourceInfo] {
    RESOURCES
}

/// Review APIs: answered at creation (from the authenticator and the authorizer), never
/// stored, so they only take `create`.
const REVIEW_VERBS: &[&str] = &["create"];

macro_rules! review {
    ($group:literal, $kind:literal, $plural:literal, $singular:literal) => {
        review!($group, "v1", $kind, $plural, $singular)
    };
    ($group:literal, $version:literal, $kind:literal, $plural:literal, $singular:literal) => {
        ResourceInfo {
            verbs: REVIEW_VERBS,
            subresources: &[],
            ..resource!($group, $version, $kind, $plural, $singular, Cluster,
                short: NONE, categories: NONE, storage: "", status: false)
        }
    };
}

static REVIEWS: &[ResourceInfo] = &[
    review!(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview"
    ),
    review!("authentication.k8s.io", "TokenReview", "tokenreviews", "tokenreview"),
    review!(
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview"
    ),
    review!(
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview"
    ),
    review!(
        "authorization.k8s.io",
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview"
    ),
    // kubectl 1.27 asks whoami in v1alpha1, 1.28 in v1beta1.
    review!(
        "authentication.k8s.io",
        "v1beta1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview"
    ),
    review!(
        "authentication.k8s.io",
        "v1alpha1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview"
    ),
];

/// The review resources (see [`REVIEWS`]); not in [`resources`], which lists stored ones.
pub fn reviews() -> &'static [ResourceInfo] {
    REVIEWS
}

pub fn is_review(info: &ResourceInfo) -> bool {
    info.verbs == REVIEW_VERBS
}

/// The version `info`'s objects are stored as: itself, unless it is served by conversion.
pub fn storage_of(info: &'static ResourceInfo) -> &'static ResourceInfo {
    info.stored_as
        .and_then(|(group, version)| find(group, version, info.plural))
        .unwrap_or(info)
}

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    // Every request looks its resource up (twice: for dispatch and for its metrics).
    static BY_NAME: std::sync::LazyLock<foldhash::HashMap<(&str, &str, &str), &ResourceInfo>> =
        std::sync::LazyLock::new(|| {
            RESOURCES
                .iter()
                .chain(REVIEWS)
                .map(|r| ((r.group, r.version, r.plural), r))
                .collect()
        });
    BY_NAME.get(&(group, version, plural)).copied()
}

/// Every served (group, version) in discovery order: the core group first, then groups in
/// the order they first appear.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().chain(REVIEWS) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique() {
        let mut plurals = HashSet::new();
        let mut shorts = HashSet::new();
        let mut storage = HashSet::new();
        for r in resources() {
            assert!(plurals.insert((r.group, r.version, r.plural)), "{}", r.plural);
            if r.stored_as.is_some() {
                // Converted versions share their storage version's names and store.
                let stored = storage_of(r);
                assert!(
                    stored.stored_as.is_none() && stored.storage == r.storage,
                    "{}",
                    r.plural
                );
                continue;
            }
            assert!(storage.insert(r.storage), "{}", r.storage);
            for s in r.short_names {
                assert!(shorts.insert(*s), "short name {s}");
            }
            assert_eq!(r.singular, r.kind.to_lowercase(), "{}", r.kind);
        }
    }

    #[test]
    fn lookups() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.qualified(), "deployments.apps");
        assert_eq!(deploy.key(Some("default"), "web"), "/registry/deployments/default/web");
        assert!(deploy.has_status());
        assert_eq!(deploy.subresource("scale").unwrap().kind, "Scale");
        assert!(find("apps", "v1", "daemonsets").unwrap().subresource("scale").is_none());
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.key(Some("ignored"), "kube-system"),
            "/registry/namespaces/kube-system"
        );
        assert!(!ns.verbs.contains(&"deletecollection"));
        assert!(find("apps", "v1alpha1", "deployments").is_none());
        // Legacy versions are stored as the current one and come after it.
        let legacy = find("apps", "v1beta1", "deployments").unwrap();
        assert_eq!(storage_of(legacy).version, "v1");
        let apps: Vec<&str> = group_versions()
            .into_iter()
            .filter(|(g, _)| *g == "apps")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(apps, ["v1", "v1beta2", "v1beta1"]);
        assert_eq!(group_versions()[0], ("", "v1"));
        assert!(group_versions().contains(&("rbac.authorization.k8s.io", "v1")));
    }
}
