//! What a request path names: an API root, a discovery document, or a resource.

use rkube_api::{ResourceInfo, find};

#[derive(Debug, PartialEq)]
pub enum Target<'a> {
    /// `/api`
    CoreRoot,
    /// `/apis`
    GroupsRoot,
    /// `/apis/<group>`
    Group(&'a str),
    /// `/api/v1` or `/apis/<group>/<version>`
    GroupVersion(&'a str, &'a str),
    Resource(ResourcePath<'a>),
    /// A group-version or resource that is not served.
    Unknown,
}

#[derive(Debug, PartialEq)]
pub struct ResourcePath<'a> {
    pub info: &'static ResourceInfo,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
}

pub fn parse(path: &str) -> Target<'_> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Target::CoreRoot,
        ["apis"] => return Target::GroupsRoot,
        ["apis", group] => return Target::Group(group),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Target::Unknown,
    };
    if rest.is_empty() {
        return Target::GroupVersion(group, version);
    }
    let resource = |plural: &str| find(group, version, plural);
    let target = |info: &'static ResourceInfo, namespace, name, subresource| {
        Target::Resource(ResourcePath {
            info,
            namespace,
            name,
            subresource,
        })
    };
    match rest {
        // /namespaces/<ns>/<resource>[/<name>[/<sub>]] for namespaced resources; but
        // /namespaces/<name>[/<sub>] is the namespace itself.
        ["namespaces", ns, plural, tail @ ..]
            if resource(plural).is_some_and(ResourceInfo::namespaced) && tail.len() <= 2 =>
        {
            let Some(info) = resource(plural) else {
                return Target::Unknown;
            };
            target(info, Some(*ns), tail.first().copied(), tail.get(1).copied())
        }
        [plural, tail @ ..] if tail.len() <= 2 => match resource(plural) {
            Some(info) => target(info, None, tail.first().copied(), tail.get(1).copied()),
            None => Target::Unknown,
        },
        _ => Target::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> (String, Option<&str>, Option<&str>, Option<&str>) {
        match parse(path) {
            Target::Resource(r) => (r.info.qualified(), r.namespace, r.name, r.subresource),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parse("/api"), Target::CoreRoot);
        assert_eq!(parse("/apis/"), Target::GroupsRoot);
        assert_eq!(parse("/apis/apps"), Target::Group("apps"));
        assert_eq!(parse("/api/v1"), Target::GroupVersion("", "v1"));
        assert_eq!(parse("/apis/apps/v1"), Target::GroupVersion("apps", "v1"));
        assert_eq!(resource("/api/v1/pods"), ("pods".into(), None, None, None));
        assert_eq!(
            resource("/api/v1/namespaces/default/pods/web/status"),
            ("pods".into(), Some("default"), Some("web"), Some("status"))
        );
        assert_eq!(resource("/api/v1/namespaces"), ("namespaces".into(), None, None, None));
        assert_eq!(
            resource("/api/v1/namespaces/kube-system"),
            ("namespaces".into(), None, Some("kube-system"), None)
        );
        assert_eq!(
            resource("/api/v1/namespaces/kube-system/status"),
            ("namespaces".into(), None, Some("kube-system"), Some("status"))
        );
        assert_eq!(
            resource("/apis/apps/v1/namespaces/a/deployments"),
            ("deployments.apps".into(), Some("a"), None, None)
        );
        assert_eq!(resource("/api/v1/nodes/n1"), ("nodes".into(), None, Some("n1"), None));
        assert_eq!(parse("/api/v1/bogus"), Target::Unknown);
        assert_eq!(parse("/apis/apps/v1alpha1/deployments"), Target::Unknown);
        assert_eq!(parse("/api/v1/namespaces/a/pods/b/c/d"), Target::Unknown);
        assert_eq!(parse("/metrics/x"), Target::Unknown);
    }
}
