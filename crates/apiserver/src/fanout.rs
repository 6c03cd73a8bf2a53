//! Watch fan-out: one store watch per resource feeds every API watch of that resource.
//! Each change is decoded once, and its encoded event lines are built once and shared by
//! every watcher that needs the same line, so a thousand watchers cost one decode and one
//! encode per change instead of a thousand. (Lists still read the store: the other half
//! of a watch cache.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use rkube_store::{Event, EventKind, Store};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::object::{from_store, general_store_error, set_resource_version};
use crate::response::ApiError;

/// Changes buffered per resource for watchers; one further behind is cut off (410).
const FEED_BUFFER: usize = 4096;

/// Which event line a watcher needs from a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    Added,
    Modified,
    /// The object left the watcher's selection (the new object).
    LeftSelection,
    /// The object was deleted (its last value, at the deletion's revision).
    Deleted,
}

impl Line {
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::LeftSelection | Self::Deleted => "DELETED",
        }
    }
}

/// One change, decoded once.
pub(crate) struct Decoded {
    pub revision: i64,
    pub key: String,
    pub kind: EventKind,
    /// The new object (puts).
    pub object: Option<Value>,
    /// The replaced object (updates and deletes).
    pub prev: Option<Value>,
    /// For deletes: the last value stamped with the deletion's revision.
    pub deleted: Option<Value>,
    lines: [OnceLock<Bytes>; 4],
}

impl Decoded {
    pub fn decode(event: &Event) -> Result<Self, ApiError> {
        let prev = event.prev.as_ref().map(from_store).transpose()?;
        let (object, deleted) = match event.kind {
            EventKind::Put => (Some(from_store(&event.kv)?), None),
            EventKind::Delete => {
                let deleted = prev.clone().map(|mut p| {
                    set_resource_version(&mut p, event.revision());
                    p
                });
                (None, deleted)
            }
        };
        Ok(Self {
            revision: event.revision(),
            key: event.kv.key.clone(),
            kind: event.kind,
            object,
            prev,
            deleted,
            lines: Default::default(),
        })
    }

    /// The event a watcher whose selection is `matches` sees, and the object it carries.
    pub fn classify(&self, matches: impl Fn(&Value) -> bool) -> Option<(Line, &Value)> {
        let was = self.prev.as_ref().is_some_and(&matches);
        match self.kind {
            EventKind::Put => {
                let object = self.object.as_ref()?;
                let is = matches(object);
                match (was, is) {
                    (_, true) if self.prev.is_none() => Some((Line::Added, object)),
                    (true, true) => Some((Line::Modified, object)),
                    (false, true) => Some((Line::Added, object)),
                    (true, false) => Some((Line::LeftSelection, object)),
                    (false, false) => None,
                }
            }
            EventKind::Delete if was => self.deleted.as_ref().map(|d| (Line::Deleted, d)),
            EventKind::Delete => None,
        }
    }

    /// The JSON event line (with its newline), built the first time anyone needs it.
    pub fn line(&self, line: Line, object: &Value) -> Bytes {
        self.lines[line as usize]
            .get_or_init(|| encode_line(line.event_type(), object))
            .clone()
    }
}

pub(crate) fn encode_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

struct Published {
    /// `None` once the feed's store watch ended: receivers see the channel close.
    sender: Option<broadcast::Sender<Arc<Decoded>>>,
    /// Every change at or before this revision has been sent.
    revision: i64,
}

struct Feed {
    published: Mutex<Published>,
}

type FeedMap = Arc<Mutex<HashMap<String, Arc<Feed>>>>;

/// The feeds of all resources, started on first use.
pub(crate) struct Feeds {
    store: Arc<dyn Store>,
    feeds: FeedMap,
}

impl Feeds {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            feeds: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A receiver of every change under `prefix` after the returned revision.
    pub async fn subscribe(&self, prefix: &str) -> Result<(broadcast::Receiver<Arc<Decoded>>, i64), ApiError> {
        for _ in 0..2 {
            let existing = self
                .feeds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(prefix)
                .cloned();
            let feed = match existing {
                Some(feed) => feed,
                None => self.start(prefix).await?,
            };
            let published = feed.published.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(sender) = &published.sender {
                return Ok((sender.subscribe(), published.revision));
            }
            // The feed just ended; its task removes it, and the next round starts another.
            drop(published);
            self.feeds.lock().unwrap_or_else(|p| p.into_inner()).remove(prefix);
        }
        Err(ApiError::internal(format!("could not start a watch feed for {prefix}")))
    }

    async fn start(&self, prefix: &str) -> Result<Arc<Feed>, ApiError> {
        let revision = self.store.current_revision().await.map_err(general_store_error)?;
        let mut watcher = self.store.watch(prefix, revision).await.map_err(general_store_error)?;
        let (sender, _) = broadcast::channel(FEED_BUFFER);
        let feed = Arc::new(Feed {
            published: Mutex::new(Published {
                sender: Some(sender),
                revision,
            }),
        });
        {
            let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
            // Another request may have started one meanwhile: use the first.
            if let Some(existing) = feeds.get(prefix) {
                return Ok(Arc::clone(existing));
            }
            feeds.insert(prefix.to_string(), Arc::clone(&feed));
        }
        let (task_feed, feeds, prefix) = (Arc::clone(&feed), Arc::clone(&self.feeds), prefix.to_string());
        tokio::spawn(async move {
            loop {
                let decoded = match watcher.next().await {
                    Some(Ok(event)) => match Decoded::decode(&event) {
                        Ok(decoded) => Arc::new(decoded),
                        Err(err) => {
                            tracing::error!(prefix, error = err.message, "undecodable change; ending the feed");
                            break;
                        }
                    },
                    Some(Err(err)) => {
                        tracing::warn!(prefix, %err, "watch feed ended");
                        break;
                    }
                    None => break,
                };
                let mut published = task_feed.published.lock().unwrap_or_else(|p| p.into_inner());
                published.revision = decoded.revision;
                if let Some(sender) = &published.sender {
                    // No receiver right now is fine: later ones start after this revision.
                    drop(sender.send(decoded));
                }
            }
            // Close the receivers (their watches end and clients watch again) and let the
            // next watch start a fresh feed.
            task_feed.published.lock().unwrap_or_else(|p| p.into_inner()).sender = None;
            let mut feeds = feeds.lock().unwrap_or_else(|p| p.into_inner());
            if feeds.get(&prefix).is_some_and(|f| Arc::ptr_eq(f, &task_feed)) {
                feeds.remove(&prefix);
            }
        });
        Ok(feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_store::KeyValue;

    fn kv(rev: i64, app: &str) -> KeyValue {
        let value = json!({"kind": "Pod", "metadata": {"name": "p", "labels": {"app": app}}});
        KeyValue {
            key: "/registry/pods/default/p".into(),
            value: serde_json::to_vec(&value).unwrap().into(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn app_is(app: &'static str) -> impl Fn(&Value) -> bool {
        move |o: &Value| o.pointer("/metadata/labels/app").and_then(Value::as_str) == Some(app)
    }

    #[test]
    fn each_watcher_sees_its_selection() {
        let update = Event {
            kind: EventKind::Put,
            kv: kv(5, "db"),
            prev: Some(kv(4, "web")),
        };
        let decoded = Decoded::decode(&update).unwrap();
        assert_eq!(decoded.classify(|_| true).unwrap().0, Line::Modified);
        assert_eq!(decoded.classify(app_is("web")).unwrap().0, Line::LeftSelection);
        assert_eq!(decoded.classify(app_is("db")).unwrap().0, Line::Added);
        assert!(decoded.classify(app_is("cache")).is_none());

        let delete = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                value: Bytes::new(),
                mod_revision: 6,
                ..kv(6, "")
            },
            prev: Some(kv(5, "db")),
        };
        let decoded = Decoded::decode(&delete).unwrap();
        let (line, object) = decoded.classify(app_is("db")).unwrap();
        assert_eq!(line, Line::Deleted);
        assert_eq!(object.pointer("/metadata/resourceVersion").unwrap(), "6");
        assert!(decoded.classify(app_is("web")).is_none());
    }

    #[test]
    fn lines_are_encoded_once() {
        let create = Event {
            kind: EventKind::Put,
            kv: kv(3, "web"),
            prev: None,
        };
        let decoded = Decoded::decode(&create).unwrap();
        let (line, object) = decoded.classify(|_| true).unwrap();
        let first = decoded.line(line, object);
        let second = decoded.line(line, object);
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same bytes, shared");
        let text = std::str::from_utf8(&first).unwrap();
        assert!(
            text.starts_with(r#"{"object":"#) || text.starts_with(r#"{"type":"#),
            "{text}"
        );
        assert!(text.ends_with('\n') && text.contains(r#""type":"ADDED""#));
    }
}
