//! Label and field selectors: parsing (with upstream's error words) and matching.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    Field(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn valid_key(key: &str) -> bool {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn valid_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric())
}

/// Splits on commas outside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_top(text) {
            let part = part.trim();
            let bad = || SelectorError::Label(part.to_string());
            let key_ok = |k: &str| if valid_key(k) { Ok(k.to_string()) } else { Err(bad()) };
            let value_ok = |v: &str| if valid_value(v) { Ok(v.to_string()) } else { Err(bad()) };
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key_ok(key.trim())?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key_ok(key.trim())?, value_ok(value.trim())?)
            } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(key_ok(key.trim())?, value_ok(value.trim())?)
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(key_ok(key.trim())?, set(rest, &bad, &value_ok)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(key_ok(key.trim())?, set(rest, &bad, &value_ok)?)
            } else {
                Requirement::Exists(key_ok(part)?)
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// A label every object the selector matches carries (from `k=v`, or `k in (v)`), for
    /// looking candidates up in an index.
    pub fn required_label(&self) -> Option<(&str, &str)> {
        self.requirements.iter().find_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            Requirement::In(k, vs) if vs.len() == 1 => Some((k.as_str(), vs[0].as_str())),
            _ => None,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_by(|key| labels.get(key).map(String::as_str))
    }

    /// Matches against labels looked up by `label`, for callers that keep labels in
    /// another shape than a map (the watch cache).
    pub fn matches_by<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

fn set(
    text: &str,
    bad: &dyn Fn() -> SelectorError,
    value_ok: &dyn Fn(&str) -> Result<String, SelectorError>,
) -> Result<Vec<String>, SelectorError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(bad)?;
    inner.split(',').map(|v| value_ok(v.trim())).collect()
}

/// A `metav1.LabelSelector` (JSON: `matchLabels`, `matchExpressions`) in selector syntax
/// (`a=b,c in (d,e)`); a bare label map (ReplicationController selectors) works too.
/// Unknown operators make the selector match nothing, as upstream treats them as errors.
pub fn label_selector_text(selector: &serde_json::Value) -> String {
    let labels = selector.get("matchLabels").unwrap_or(selector);
    let mut parts: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "matchExpressions")
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    for expr in selector
        .get("matchExpressions")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr.get("key").and_then(serde_json::Value::as_str).unwrap_or_default();
        let values: Vec<&str> = expr
            .get("values")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        match expr
            .get("operator")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
        {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            // Not a selector of ours: a requirement nothing satisfies.
            _ => parts.push(format!("!{key},{key}")),
        }
    }
    parts.join(",")
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma-joined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in text.split(',') {
            let bad = || SelectorError::Field(text.to_string(), part.to_string());
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(bad());
            };
            if field.trim().is_empty() {
                return Err(bad());
            }
            terms.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The fields the selector names, so the caller can refuse unsupported ones.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(f, _, _)| f.as_str())
    }

    /// Matches against field values looked up by `value_of` (missing fields are "").
    pub fn matches<S: AsRef<str>>(&self, value_of: impl Fn(&str) -> Option<S>) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = value_of(field);
            (actual.as_ref().map_or("", AsRef::as_ref) == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("app.kubernetes.io/name", "x")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("tier in (front,back)", true),
            ("tier notin (front)", false),
            ("missing notin (a)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app.kubernetes.io/name=x", true),
            ("app in (web), tier", true),
        ];
        for (text, expected) in cases {
            assert_eq!(LabelSelector::parse(text).unwrap().matches(&l), expected, "{text}");
        }
        for bad in ["app=we b", "=x", "app in web", "a/", "app=-x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn required_labels_for_index_lookups() {
        for (text, required) in [
            ("app=web,tier in (a,b)", Some(("app", "web"))),
            ("tier in (a,b),app==web", Some(("app", "web"))),
            ("tier in (a)", Some(("tier", "a"))),
            ("app!=web,tier in (a,b),x", None),
            ("", None),
        ] {
            assert_eq!(LabelSelector::parse(text).unwrap().required_label(), required, "{text}");
        }
    }

    #[test]
    fn json_selectors() {
        let selector = serde_json::json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "DoesNotExist"}]});
        assert_eq!(label_selector_text(&selector), "app=web,tier in (a,b),!x");
        assert_eq!(label_selector_text(&serde_json::json!({"app": "web"})), "app=web");
        let bogus = serde_json::json!({"matchExpressions": [{"key": "k", "operator": "Bogus"}]});
        let parsed = LabelSelector::parse(&label_selector_text(&bogus)).unwrap();
        assert!(!parsed.matches(&labels(&[("k", "v")])) && !parsed.matches(&labels(&[])));
    }

    #[test]
    fn field_selectors() {
        let sel = FieldSelector::parse("metadata.name=a,status.phase!=Failed").unwrap();
        let value_of = |f: &str| match f {
            "metadata.name" => Some("a".to_string()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        assert!(sel.matches(value_of));
        assert_eq!(sel.fields().collect::<Vec<_>>(), vec!["metadata.name", "status.phase"]);
        let err = FieldSelector::parse("metadata.name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
    }
}
