//! Events about objects, recorded as client-go's recorder does: a repeat of the same event
//! (same source, object, type, reason and message) bumps the first one's `count` and
//! `lastTimestamp` instead of creating another.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Mutex;

/// How many distinct events are remembered for aggregation (client-go keeps 4,096).
const REMEMBERED: usize = 4096;

/// The object an event is about.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    let meta = object.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: String,
    namespace: String,
    name: String,
    uid: String,
    event_type: String,
    reason: String,
    message: String,
}

pub struct Recorder {
    client: kube::Client,
    component: String,
    /// Event name and count of each event recorded so far.
    seen: Mutex<HashMap<Key, (String, i32)>>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str) -> Self {
        Self {
            client,
            component: component.into(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event, logging (not returning) a failure: a lost event is no reason for
    /// a controller's sync to fail.
    pub async fn emit(&self, involved: &ObjectReference, event_type: &str, reason: &str, message: &str) {
        if let Err(err) = self.record(involved, event_type, reason, message).await {
            tracing::debug!(%err, reason, "recording an event failed");
        }
    }

    /// Records an event (`Normal` or `Warning`) about `involved`.
    pub async fn record(
        &self,
        involved: &ObjectReference,
        event_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        // Events about cluster-scoped objects live in `default`, as upstream's do.
        let namespace = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = Key {
            kind: involved.kind.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: involved.name.clone().unwrap_or_default(),
            uid: involved.uid.clone().unwrap_or_default(),
            event_type: event_type.into(),
            reason: reason.into(),
            message: message.into(),
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = crate::now_text();
        let repeat = self.seen.lock().await.get(&key).cloned();
        if let Some((name, count)) = repeat {
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.seen.lock().await.insert(key, (name, count + 1));
                    return Ok(());
                }
                // Gone (expired or deleted): record it afresh.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        let stamp = k8s_openapi::jiff::Timestamp::now().as_nanosecond();
        let name = format!("{}.{stamp:x}", key.name);
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason, "message": message, "type": event_type,
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        // Sent as built and its answer read past, not decoded: nothing here needs the
        // created event, and every placed or created pod makes one.
        let body = serde_json::to_vec(&event).map_err(kube::Error::SerdeError)?;
        crate::create_encoded::<serde::de::IgnoredAny>(&self.client, events.resource_url(), body).await?;
        let mut seen = self.seen.lock().await;
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(key, (name, 1));
        Ok(())
    }
}
