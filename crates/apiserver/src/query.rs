//! Query parameters of resource requests. Unknown ones (`timeout`, `fieldManager`) are
//! ignored, as upstream does; queries like `?&watch=true` parse.

use crate::object::bad_request;
use crate::response::ApiError;

#[derive(Debug, Default)]
pub struct Query {
    pub watch: bool,
    pub label_selector: String,
    pub field_selector: String,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub send_initial_events: Option<bool>,
    pub timeout_seconds: Option<u64>,
    pub dry_run: bool,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub include_object: Option<String>,
    pub allow_watch_bookmarks: bool,
    pub field_validation: FieldValidation,
    /// Who writes (`fieldManager`), for managed fields and server-side apply.
    pub field_manager: Option<String>,
    /// Server-side apply takes fields other managers own (`force`).
    pub force: bool,
}

/// What to do with unknown fields in a write (`fieldValidation`); upstream's default is Warn.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

fn truthy(value: &str) -> bool {
    matches!(value, "true" | "1" | "t" | "T" | "True" | "TRUE")
}

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut q = Self::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let number = |what: &str| -> Result<i64, ApiError> {
                value
                    .parse::<i64>()
                    .map_err(|_| bad_request(format!("invalid value for {what}: {value:?}")))
            };
            match key.as_ref() {
                "watch" => q.watch = truthy(&value),
                "labelSelector" => q.label_selector = value.into_owned(),
                "fieldSelector" => q.field_selector = value.into_owned(),
                "limit" => {
                    let n = number("limit")?;
                    q.limit = (n > 0).then_some(n as usize);
                }
                "continue" if !value.is_empty() => q.continue_token = Some(value.into_owned()),
                "resourceVersion" if !value.is_empty() => q.resource_version = Some(value.into_owned()),
                "resourceVersionMatch" if !value.is_empty() => q.resource_version_match = Some(value.into_owned()),
                "sendInitialEvents" => q.send_initial_events = Some(truthy(&value)),
                "timeoutSeconds" => q.timeout_seconds = Some(number("timeoutSeconds")?.max(0) as u64),
                "dryRun" => {
                    if value != "All" {
                        return Err(bad_request(format!(
                            "Invalid dry run value: {value:?}: valid values are All"
                        )));
                    }
                    q.dry_run = true;
                }
                "propagationPolicy" => q.propagation_policy = Some(value.into_owned()),
                "gracePeriodSeconds" => q.grace_period_seconds = Some(number("gracePeriodSeconds")?),
                "includeObject" => q.include_object = Some(value.into_owned()),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = truthy(&value),
                "fieldManager" if !value.is_empty() => q.field_manager = Some(value.into_owned()),
                "force" => q.force = truthy(&value),
                "fieldValidation" => {
                    q.field_validation = match value.as_ref() {
                        "Ignore" => FieldValidation::Ignore,
                        "Warn" | "" => FieldValidation::Warn,
                        "Strict" => FieldValidation::Strict,
                        other => {
                            return Err(bad_request(format!(
                                "fieldValidation parameter unsupported: {other:?}: valid values are Ignore, Warn, Strict"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }

    /// The revision a watch starts after: `None` for "now, with the current state first"
    /// (resourceVersion empty or "0").
    pub fn watch_from(&self) -> Result<Option<i64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(rv) => rv
                .parse::<i64>()
                .ok()
                .filter(|r| *r > 0)
                .map(Some)
                .ok_or_else(|| bad_request(format!("invalid resource version: {rv}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubectl_queries() {
        let q = Query::parse(Some(
            "&watch=true&labelSelector=app%3Dweb&limit=500&resourceVersion=0&timeout=32s",
        ))
        .unwrap();
        assert!(q.watch);
        assert_eq!(q.label_selector, "app=web");
        assert_eq!(q.limit, Some(500));
        assert_eq!(q.watch_from().unwrap(), None);
        let q = Query::parse(Some("resourceVersion=42&dryRun=All")).unwrap();
        assert_eq!(q.watch_from().unwrap(), Some(42));
        assert!(q.dry_run);
        assert!(Query::parse(Some("limit=abc")).is_err());
        assert!(Query::parse(Some("dryRun=Some")).is_err());
        assert!(Query::parse(Some("resourceVersion=x")).unwrap().watch_from().is_err());
    }
}
