//! Object names, as upstream validates them (messages are upstream's words).

use crate::ResourceInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most resources.
    Subdomain,
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label: services (their names become DNS labels that must not start with a digit).
    Rfc1035Label,
    /// Anything usable as one path segment: RBAC objects (`system:controller:...`).
    PathSegment,
}

pub fn name_rule(resource: &ResourceInfo) -> NameRule {
    match (resource.group, resource.plural) {
        ("", "namespaces") => NameRule::Label,
        ("", "services") => NameRule::Rfc1035Label,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const RFC1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Problems with `name` under `rule`, each an upstream message; empty when valid.
pub fn validate_name(rule: NameRule, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                problems.push("must be no more than 253 characters".to_string());
            }
            if !name.split('.').all(is_label) {
                problems.push(SUBDOMAIN_MSG.to_string());
            }
        }
        NameRule::Label => {
            if name.len() > 63 {
                problems.push("must be no more than 63 characters".to_string());
            }
            if !is_label(name) {
                problems.push(LABEL_MSG.to_string());
            }
        }
        NameRule::Rfc1035Label => {
            if name.len() > 63 {
                problems.push("must be no more than 63 characters".to_string());
            }
            if !is_label(name) || !name.as_bytes()[0].is_ascii_lowercase() {
                problems.push(RFC1035_MSG.to_string());
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                problems.push(format!("may not be '{name}'"));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    problems.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let cases: &[(NameRule, &str, bool)] = &[
            (NameRule::Subdomain, "web-1.example", true),
            (NameRule::Subdomain, "Web", false),
            (NameRule::Subdomain, "a..b", false),
            (NameRule::Subdomain, "-a", false),
            (NameRule::Subdomain, "bad_name", false),
            (NameRule::Label, "kube-system", true),
            (NameRule::Label, "a.b", false),
            (NameRule::Rfc1035Label, "web", true),
            (NameRule::Rfc1035Label, "1web", false),
            (NameRule::PathSegment, "system:controller:job", true),
            (NameRule::PathSegment, "a/b", false),
            (NameRule::PathSegment, "..", false),
        ];
        for (rule, name, ok) in cases {
            assert_eq!(validate_name(*rule, name).is_empty(), *ok, "{rule:?} {name}");
        }
        assert_eq!(
            validate_name(NameRule::Label, &"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
    }
}
