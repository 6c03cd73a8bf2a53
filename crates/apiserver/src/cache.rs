//! The watch cache: one store watch over the whole registry keeps every resource's objects
//! in memory, serves lists from there at a consistent revision, and fans each change out to
//! all API watches of its resource.
//!
//! Objects are kept as their JSON bytes (resourceVersion included) plus the labels and
//! selectable fields that selectors need, not as decoded trees: a pod costs its encoded
//! size and a little more, and a list is the concatenation of shared byte buffers. Each
//! change is decoded once and each event line encoded once for all watchers.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use rkube_api::ResourceInfo;
use rkube_store::{ContinueToken, Event, EventKind, KeyValue, RangeRequest, Store, StoreError};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, watch};

use crate::filter::{Filter, Selectable, selectable_fields};
use crate::object::{field_text, from_store, general_store_error, metadata, set_resource_version};
use crate::response::ApiError;

/// Every resource's keys live under this prefix; the cache watches all of it at once, so it
/// learns of every revision, which is what lets a list prove it is fresh.
const REGISTRY: &str = "/registry/";
/// Changes buffered per resource for watchers; one further behind is cut off (410).
const FEED_BUFFER: usize = 4096;
/// Recent changes per resource kept for watches that resume a little in the past.
const HISTORY: usize = 1024;
/// How long a read waits for the cache to reach the revision it needs before it goes to
/// the store instead (upstream waits 3 s too).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);
/// How often idle resources' watchers learn that the registry has moved on (for bookmarks).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Objects read per store range while loading.
const LOAD_PAGE: usize = 5000;

/// One object as the cache keeps it.
pub(crate) struct Cached {
    /// The object's JSON, resourceVersion included: what lists and events carry.
    pub json: Bytes,
    /// Sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    fields: Box<[(&'static str, Box<str>)]>,
    /// Where `metadata.managedFields`' value lies in `json`, when known without parsing
    /// again: in-process watchers get the object without it.
    managed_fields: Option<(usize, usize)>,
}

impl Cached {
    /// `object` carries its resourceVersion already.
    pub fn new(info: &ResourceInfo, object: &Value) -> Result<Self, ApiError> {
        let json = serde_json::to_vec(object).map_err(|e| ApiError::internal(format!("encoding an object: {e}")))?;
        let mut labels: Vec<(Box<str>, Box<str>)> = metadata(object)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort_unstable();
        let fields = ["metadata.name", "metadata.namespace"]
            .iter()
            .chain(selectable_fields(info))
            .filter_map(|path| Some((*path, field_text(object, path)?.into_boxed_str())))
            .collect();
        Ok(Self {
            json: Bytes::from(json),
            labels: labels.into_boxed_slice(),
            fields,
            managed_fields: None,
        })
    }

    /// Every change passes here once: the stored bytes are read without building a tree
    /// (the labels and fields are picked out, the resourceVersion spliced in), with the
    /// full decode as the fallback for anything the quick reading does not handle.
    pub fn from_kv(info: &ResourceInfo, kv: &KeyValue) -> Result<Self, ApiError> {
        match Self::from_stored(info, &kv.value, kv.mod_revision) {
            Some(cached) => Ok(cached),
            None => Self::new(info, &from_store(kv)?),
        }
    }

    fn from_stored(info: &ResourceInfo, stored: &[u8], revision: i64) -> Option<Self> {
        let top: RawMap<'_> = serde_json::from_slice(stored).ok()?;
        let meta_raw = *top.get("metadata")?;
        let meta: RawMap<'_> = serde_json::from_str(meta_raw.get()).ok()?;
        if meta.contains_key("resourceVersion") || meta.contains_key("selfLink") {
            return None;
        }
        let mut labels: Vec<(Box<str>, Box<str>)> = match meta.get("labels") {
            Some(raw) => {
                let map: BTreeMap<&str, &RawValue> = serde_json::from_str(raw.get()).ok()?;
                map.into_iter()
                    .filter_map(|(k, v)| Some((k.into(), serde_json::from_str::<&str>(v.get()).ok()?.into())))
                    .collect()
            }
            None => Vec::new(),
        };
        labels.sort_unstable();
        let mut fields = Vec::new();
        let mut sections = Sections::new(&top);
        sections.read.push(("metadata", Some(meta.clone())));
        for path in ["metadata.name", "metadata.namespace"]
            .iter()
            .chain(selectable_fields(info))
        {
            if let Some(text) = sections.text(path)? {
                fields.push((*path, text.into_boxed_str()));
            }
        }
        let json = splice_revision(stored, meta_raw, revision)?;
        // The resourceVersion went in at the start of the metadata, before managedFields.
        let inserted = json.len().checked_sub(stored.len())?;
        let managed_fields = meta.get("managedFields").and_then(|raw| {
            let start = offset_in(stored, raw.get())? + inserted;
            Some((start, start + raw.get().len()))
        });
        Some(Self {
            json: Bytes::from(json),
            labels: labels.into_boxed_slice(),
            fields: fields.into_boxed_slice(),
            managed_fields,
        })
    }

    /// The object without `metadata.managedFields` (see [`without_managed_fields`]).
    pub fn without_managed_fields(&self) -> Option<Vec<u8>> {
        match self.managed_fields {
            Some((start, end)) => cut_member(&self.json, start, end, "managedFields"),
            None => without_managed_fields(&self.json),
        }
    }

    pub fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json).map_err(|e| ApiError::internal(format!("cached object is not JSON: {e}")))
    }
}

/// `stored` (an object's stored encoding, which leaves the resourceVersion out) with
/// `revision` as its resourceVersion, first inside the metadata object that starts at
/// `metadata_at`: what reads and write responses carry, made without decoding.
pub(crate) fn with_revision(stored: &[u8], metadata_at: usize, revision: i64) -> Option<Vec<u8>> {
    if stored.get(metadata_at) != Some(&b'{') {
        return None;
    }
    let at = metadata_at + 1;
    let empty = stored.get(at..)?.trim_ascii_start().starts_with(b"}");
    let revision = revision.to_string();
    let mut json = Vec::with_capacity(stored.len() + revision.len() + 24);
    json.extend_from_slice(stored.get(..at)?);
    json.extend_from_slice(b"\"resourceVersion\":\"");
    json.extend_from_slice(revision.as_bytes());
    json.push(b'"');
    if !empty {
        json.push(b',');
    }
    json.extend_from_slice(stored.get(at..)?);
    Some(json)
}

/// `object` (encoded) with its `metadata.managedFields` cut out of the bytes: what the
/// in-process components' watches carry, as they drop managedFields on arrival anyway
/// (ADR 14). `None` when there are none or the member is not written the plain way this
/// server writes it; the caller then sends the object whole.
pub(crate) fn without_managed_fields(object: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        metadata: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow, rename = "managedFields")]
        managed_fields: Option<&'a RawValue>,
    }
    let top: Top<'_> = serde_json::from_slice(object).ok()?;
    let metadata: Metadata<'_> = serde_json::from_str(top.metadata?.get()).ok()?;
    let value = metadata.managed_fields?.get();
    let start = offset_in(object, value)?;
    cut_member(object, start, start + value.len(), "managedFields")
}

/// Where `part`, a slice of `whole`, starts in it.
fn offset_in(whole: &[u8], part: &str) -> Option<usize> {
    (part.as_ptr() as usize)
        .checked_sub(whole.as_ptr() as usize)
        .filter(|at| at + part.len() <= whole.len())
}

/// `object` without the member `name` whose value is `object[start..end]`, with its key
/// and one comma; `None` unless the key is written plainly right before the value.
fn cut_member(object: &[u8], start: usize, end: usize, name: &str) -> Option<Vec<u8>> {
    let key = object
        .get(..start)?
        .trim_ascii_end()
        .strip_suffix(b":")?
        .trim_ascii_end()
        .strip_suffix(b"\"")?
        .strip_suffix(name.as_bytes())?
        .strip_suffix(b"\"")?;
    let key_start = key.len();
    let lead = key.trim_ascii_end();
    let (cut_from, cut_to) = if lead.ends_with(b",") {
        (lead.len() - 1, end)
    } else if lead.ends_with(b"{") {
        let rest = object.get(end..)?.trim_ascii_start();
        (key_start, object.len() - rest.strip_prefix(b",").unwrap_or(rest).len())
    } else {
        return None;
    };
    let mut lean = Vec::with_capacity(object.len() - (cut_to - cut_from));
    lean.extend_from_slice(object.get(..cut_from)?);
    lean.extend_from_slice(object.get(cut_to..)?);
    Some(lean)
}

/// [`with_revision`] with the metadata found by its slice of `stored`.
fn splice_revision(stored: &[u8], metadata: &RawValue, revision: i64) -> Option<Vec<u8>> {
    let at = (metadata.get().as_ptr() as usize).checked_sub(stored.as_ptr() as usize)?;
    with_revision(stored, at, revision)
}

impl Selectable for Cached {
    fn label(&self, key: &str) -> Option<&str> {
        let i = self.labels.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.labels[i].1)
    }

    fn field(&self, path: &str) -> Option<Cow<'_, str>> {
        self.fields
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| Cow::Borrowed(&**v))
    }
}

/// One level of a JSON object, its members left encoded. Keys are borrowed: a key with
/// escapes fails the quick reading, and the full decode takes over.
type RawMap<'a> = BTreeMap<&'a str, &'a RawValue>;

/// The objects directly under the top level, each read once however many fields it holds
/// (a pod has five selectable fields under `spec`).
struct Sections<'a> {
    top: &'a RawMap<'a>,
    read: Vec<(&'a str, Option<RawMap<'a>>)>,
}

impl<'a> Sections<'a> {
    fn new(top: &'a RawMap<'a>) -> Self {
        Self { top, read: Vec::new() }
    }

    /// `field_text` over encoded members: `None` when the quick reading cannot tell (the
    /// caller then decodes in full), `Some(None)` when the field is absent or not a scalar.
    fn text(&mut self, path: &'a str) -> Option<Option<String>> {
        let (first, rest) = match path.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (path, None),
        };
        let Some(&section) = self.top.get(first) else {
            return Some(None);
        };
        let Some(rest) = rest else {
            return scalar_text(section);
        };
        let index = match self.read.iter().position(|(name, _)| *name == first) {
            Some(index) => index,
            None => {
                let map = if section.get().starts_with('{') {
                    Some(serde_json::from_str::<RawMap<'a>>(section.get()).ok()?)
                } else {
                    None
                };
                self.read.push((first, map));
                self.read.len() - 1
            }
        };
        let Some(mut map) = self.read[index].1.as_ref().map(Cow::Borrowed) else {
            return Some(None);
        };
        let mut parts = rest.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some(&raw) = map.get(part) else {
                return Some(None);
            };
            if parts.peek().is_none() {
                return scalar_text(raw);
            }
            if !raw.get().starts_with('{') {
                return Some(None);
            }
            map = Cow::Owned(serde_json::from_str(raw.get()).ok()?);
        }
        Some(None)
    }
}

/// A string, boolean or number as `field_text` gives it; `Some(None)` for anything else.
fn scalar_text(raw: &RawValue) -> Option<Option<String>> {
    let text = raw.get();
    Some(match text.as_bytes().first() {
        Some(b'"') => Some(serde_json::from_str::<String>(text).ok()?),
        Some(b't' | b'f') => Some(serde_json::from_str::<bool>(text).ok()?.to_string()),
        Some(b'-' | b'0'..=b'9') => Some(serde_json::from_str::<serde_json::Number>(text).ok()?.to_string()),
        _ => None,
    })
}

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
    /// The new object (puts).
    pub object: Option<Arc<Cached>>,
    /// The replaced object (updates and deletes).
    pub prev: Option<Arc<Cached>>,
    /// For deletes: the last value stamped with the deletion's revision.
    deleted: Option<Bytes>,
    lines: [OnceLock<Bytes>; 4],
    /// The same lines without managedFields (in-process watchers').
    lean_lines: [OnceLock<Bytes>; 4],
}

impl Decoded {
    fn new(
        revision: i64,
        key: String,
        object: Option<Arc<Cached>>,
        prev: Option<Arc<Cached>>,
    ) -> Result<Self, ApiError> {
        let deleted = match (&object, &prev) {
            (None, Some(prev)) => {
                let mut last = prev.value()?;
                set_resource_version(&mut last, revision);
                Some(Bytes::from(
                    serde_json::to_vec(&last).map_err(|e| ApiError::internal(format!("encoding an object: {e}")))?,
                ))
            }
            _ => None,
        };
        Ok(Self {
            revision,
            key,
            object,
            prev,
            deleted,
            lines: Default::default(),
            lean_lines: Default::default(),
        })
    }

    /// A store event decoded on its own (watches that replay history from the store).
    pub fn from_event(info: &ResourceInfo, event: &Event) -> Result<Self, ApiError> {
        let prev = event
            .prev
            .as_ref()
            .map(|kv| Cached::from_kv(info, kv).map(Arc::new))
            .transpose()?;
        let object = match event.kind {
            EventKind::Put => Some(Arc::new(Cached::from_kv(info, &event.kv)?)),
            EventKind::Delete => None,
        };
        Self::new(event.revision(), event.kv.key.clone(), object, prev)
    }

    /// The event a watcher whose selection is `filter` sees.
    pub fn classify(&self, filter: &Filter) -> Option<Line> {
        let was = self.prev.as_deref().is_some_and(|p| filter.matches(p));
        match &self.object {
            Some(object) => match (was, filter.matches(&**object)) {
                (_, true) if self.prev.is_none() => Some(Line::Added),
                (true, true) => Some(Line::Modified),
                (false, true) => Some(Line::Added),
                (true, false) => Some(Line::LeftSelection),
                (false, false) => None,
            },
            None if was => Some(Line::Deleted),
            None => None,
        }
    }

    /// The object an event line carries.
    pub fn object_json(&self, line: Line) -> &Bytes {
        match (line, &self.object, &self.deleted) {
            (Line::Deleted, _, Some(deleted)) => deleted,
            (_, Some(object), _) => &object.json,
            // A delete always has its last value, a put its object.
            (_, None, _) => self.deleted.as_ref().map_or(&EMPTY, |d| d),
        }
    }

    /// The JSON event line (with its newline), built the first time anyone needs it.
    pub fn line(&self, line: Line) -> Bytes {
        self.lines[line as usize]
            .get_or_init(|| event_line(line.event_type(), self.object_json(line)))
            .clone()
    }

    /// The object an event line carries without its managedFields; `None` when it has
    /// none. Cut where the cache noted them while reading the stored bytes.
    pub fn lean_object(&self, line: Line) -> Option<Vec<u8>> {
        match (line, &self.object, &self.deleted) {
            (Line::Deleted, _, Some(deleted)) => without_managed_fields(deleted),
            (_, Some(object), _) => object.without_managed_fields(),
            _ => None,
        }
    }

    /// [`Self::line`] without the object's managedFields.
    pub fn lean_line(&self, line: Line) -> Bytes {
        self.lean_lines[line as usize]
            .get_or_init(|| match self.lean_object(line) {
                Some(object) => event_line(line.event_type(), &object),
                None => self.line(line),
            })
            .clone()
    }
}

static EMPTY: Bytes = Bytes::from_static(b"{}");

/// `{"type":…,"object":…}` and a newline, around an already encoded object.
pub(crate) fn event_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + event_type.len() + 30);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(event_type.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// What a resource's watchers receive, in revision order.
#[derive(Clone)]
pub(crate) enum Item {
    Change(Arc<Decoded>),
    /// Every change of the resource up to this revision has been sent.
    Progress(i64),
}

struct Snapshot {
    objects: BTreeMap<String, Arc<Cached>>,
    /// The revision of the last change applied to this resource.
    revision: i64,
    /// Recent changes, oldest first; with `history_after`, every change after that revision.
    history: VecDeque<Arc<Decoded>>,
    history_after: i64,
    sender: broadcast::Sender<Item>,
    progress_sent: i64,
}

impl Snapshot {
    /// Objects just loaded at `revision`, with no history and a channel of their own.
    fn loaded(objects: BTreeMap<String, Arc<Cached>>, revision: i64) -> Self {
        Self {
            objects,
            revision,
            history: VecDeque::new(),
            history_after: revision,
            sender: broadcast::channel(FEED_BUFFER).0,
            progress_sent: revision,
        }
    }
}

struct Resource {
    info: &'static ResourceInfo,
    prefix: String,
    snapshot: RwLock<Snapshot>,
}

impl Resource {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A page of a list served from memory.
pub(crate) struct Page {
    pub items: Vec<Arc<Cached>>,
    pub revision: i64,
    pub continue_token: Option<String>,
    /// Objects after this page (only without selectors, as upstream).
    pub remaining: Option<usize>,
}

/// Where a watch starts.
pub(crate) enum Start {
    /// The current state first (as ADDED events), then changes.
    Snapshot,
    /// Changes after the cache's current revision.
    Now,
    /// Changes after this revision.
    After(i64),
}

pub(crate) struct Subscription {
    pub initial: Vec<Arc<Cached>>,
    pub replay: Vec<Arc<Decoded>>,
    pub receiver: broadcast::Receiver<Item>,
    /// The revision the watch stands at once `initial` and `replay` are sent.
    pub revision: i64,
}

pub(crate) struct WatchCache {
    store: Arc<dyn Store>,
    resources: Vec<Resource>,
    /// Every change up to this revision has been applied.
    seen: watch::Sender<i64>,
}

impl WatchCache {
    /// Loads every resource at the store's current revision and starts following changes.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, ApiError> {
        let started = std::time::Instant::now();
        let revision = store.current_revision().await.map_err(general_store_error)?;
        let mut resources = Vec::new();
        let mut count = 0;
        for info in rkube_api::catalogue::resources() {
            if resources.iter().any(|r: &Resource| r.info.storage == info.storage) {
                continue;
            }
            let prefix = info.key_prefix(None);
            let objects = load(&store, info, &prefix, revision).await?;
            count += objects.len();
            resources.push(Resource {
                info,
                prefix,
                snapshot: RwLock::new(Snapshot::loaded(objects, revision)),
            });
        }
        tracing::info!(
            objects = count,
            revision,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "watch cache loaded"
        );
        let cache = Arc::new(Self {
            store: Arc::clone(&store),
            resources,
            seen: watch::Sender::new(revision),
        });
        tokio::spawn(follow(Arc::downgrade(&cache), store, revision));
        Ok(cache)
    }

    fn resource(&self, info: &ResourceInfo) -> Result<&Resource, ApiError> {
        self.resources
            .iter()
            .find(|r| r.info.storage == info.storage)
            .ok_or_else(|| ApiError::internal(format!("no watch cache for {}", info.plural)))
    }

    fn seen(&self) -> i64 {
        *self.seen.borrow()
    }

    /// The object at `key` as the cache holds it now: possibly behind the store, so only
    /// for reads a later compare-and-swap checks, or where upstream reads an informer.
    pub fn object(&self, info: &ResourceInfo, key: &str) -> Option<Arc<Cached>> {
        self.resource(info).ok()?.read().objects.get(key).cloned()
    }

    /// Waits until the cache has applied every change up to `revision`; false if it does
    /// not get there in time (the store is unreachable, or the revision is in the future).
    pub async fn wait_for(&self, revision: i64) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(FRESHNESS_WAIT, seen.wait_for(|s| *s >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the cache is as fresh as the store is now: a consistent read.
    pub async fn wait_for_current(&self) -> Result<bool, ApiError> {
        let current = self.store.current_revision().await.map_err(general_store_error)?;
        Ok(self.wait_for(current).await)
    }

    /// A page of the objects under `namespace` that `filter` selects, after `after_key`.
    /// With `at`, the page must show that revision: it is served only if the resource has
    /// not changed since; `None` then means "ask the store".
    pub fn page(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        filter: &Filter,
        limit: Option<usize>,
        at: Option<i64>,
        after_key: Option<String>,
    ) -> Result<Option<Page>, ApiError> {
        let resource = self.resource(info)?;
        let snapshot = resource.read();
        let newest = snapshot.revision.max(self.seen());
        let revision = match at {
            Some(at) if snapshot.revision <= at && at <= newest => at,
            Some(_) => return Ok(None),
            None => newest,
        };
        let prefix = info.key_prefix(namespace);
        let from = match after_key {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(prefix.clone()),
        };
        let mut range = snapshot
            .objects
            .range((from, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(_, object)| filter.matches(&***object));
        let mut items = Vec::new();
        let mut last_key = None;
        for (key, object) in range.by_ref() {
            items.push(Arc::clone(object));
            if limit.is_some_and(|l| items.len() >= l) {
                last_key = Some(key.clone());
                break;
            }
        }
        let (mut continue_token, mut remaining) = (None, None);
        if let Some(last_key) = last_key {
            let rest = if filter.is_everything() {
                let rest = range.count();
                remaining = (rest > 0).then_some(rest);
                rest
            } else {
                range.next().map_or(0, |_| 1)
            };
            if rest > 0 {
                continue_token = Some(ContinueToken { revision, last_key }.encode());
            }
        }
        Ok(Some(Page {
            items,
            revision,
            continue_token,
            remaining,
        }))
    }

    /// Subscribes a watch of `info`'s objects. `None`: the watch starts further back than
    /// the cache remembers, and must replay history from the store.
    pub fn subscribe(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        filter: &Filter,
        start: Start,
    ) -> Result<Option<Subscription>, ApiError> {
        let resource = self.resource(info)?;
        let snapshot = resource.read();
        let newest = snapshot.revision.max(self.seen());
        let prefix = info.key_prefix(namespace);
        let (initial, replay, revision) = match start {
            Start::Snapshot => {
                let initial = snapshot
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(key, _)| key.starts_with(&prefix))
                    .filter(|(_, object)| filter.matches(&***object))
                    .map(|(_, object)| Arc::clone(object))
                    .collect();
                (initial, Vec::new(), newest)
            }
            Start::Now => (Vec::new(), Vec::new(), newest),
            Start::After(after) if after >= newest => (Vec::new(), Vec::new(), after),
            Start::After(after) if after >= snapshot.history_after => {
                let replay = snapshot
                    .history
                    .iter()
                    .filter(|d| d.revision > after)
                    .cloned()
                    .collect();
                (Vec::new(), replay, newest)
            }
            Start::After(_) => return Ok(None),
        };
        // Subscribed under the same lock the snapshot was read under: the receiver gets
        // exactly the changes after it.
        Ok(Some(Subscription {
            initial,
            replay,
            receiver: snapshot.sender.subscribe(),
            revision,
        }))
    }

    fn apply(&self, event: &Event) {
        let key = &event.kv.key;
        let Some(resource) = self.resources.iter().find(|r| key.starts_with(&r.prefix)) else {
            return;
        };
        let revision = event.revision();
        let prev = resource.read().objects.get(key).cloned();
        let decoded = (|| {
            let prev = match (prev, &event.prev) {
                (Some(prev), _) => Some(prev),
                (None, Some(kv)) => Some(Arc::new(Cached::from_kv(resource.info, kv)?)),
                (None, None) => None,
            };
            let object = match event.kind {
                EventKind::Put => Some(Arc::new(Cached::from_kv(resource.info, &event.kv)?)),
                EventKind::Delete => None,
            };
            Decoded::new(revision, key.clone(), object, prev)
        })();
        let mut snapshot = resource.write();
        snapshot.revision = revision;
        let decoded = match decoded {
            Ok(decoded) => Arc::new(decoded),
            Err(err) => {
                // An undecodable stored object is left out of lists and watches.
                tracing::error!(key, error = err.message, "undecodable stored object");
                snapshot.objects.remove(key);
                return;
            }
        };
        match &decoded.object {
            Some(object) => snapshot.objects.insert(key.clone(), Arc::clone(object)),
            None => snapshot.objects.remove(key),
        };
        snapshot.history.push_back(Arc::clone(&decoded));
        if snapshot.history.len() > HISTORY
            && let Some(oldest) = snapshot.history.pop_front()
        {
            snapshot.history_after = oldest.revision;
        }
        // No receiver right now is fine: later ones start after this revision.
        drop(snapshot.sender.send(Item::Change(decoded)));
    }

    /// Tells watchers of resources that did not change that the registry moved on.
    fn progress(&self) {
        let seen = self.seen();
        for resource in &self.resources {
            let mut snapshot = resource.write();
            if snapshot.progress_sent < seen && snapshot.sender.receiver_count() > 0 {
                snapshot.progress_sent = seen;
                drop(snapshot.sender.send(Item::Progress(seen)));
            }
        }
    }

    /// After the store compacted past the cache: load everything again and end every
    /// watch (clients list and watch again, as after any 410).
    async fn reload(&self) -> Result<i64, ApiError> {
        let revision = self.store.current_revision().await.map_err(general_store_error)?;
        for resource in &self.resources {
            let objects = load(&self.store, resource.info, &resource.prefix, revision).await?;
            *resource.write() = Snapshot::loaded(objects, revision);
        }
        self.seen.send_replace(revision);
        Ok(revision)
    }
}

async fn load(
    store: &Arc<dyn Store>,
    info: &ResourceInfo,
    prefix: &str,
    revision: i64,
) -> Result<BTreeMap<String, Arc<Cached>>, ApiError> {
    let mut objects = BTreeMap::new();
    let mut request = RangeRequest::prefix(prefix).at_revision(revision).with_limit(LOAD_PAGE);
    loop {
        let page = store.range(request.clone()).await.map_err(general_store_error)?;
        for kv in &page.kvs {
            match Cached::from_kv(info, kv) {
                Ok(object) => {
                    objects.insert(kv.key.clone(), Arc::new(object));
                }
                Err(err) => tracing::error!(key = kv.key, error = err.message, "undecodable stored object"),
            }
        }
        match page.continue_token {
            Some(token) => request.continue_token = Some(token),
            None => return Ok(objects),
        }
    }
}

/// Follows the store's changes into the cache until the cache is dropped. A broken watch
/// is resumed where it stopped; one the store compacted past reloads the cache.
async fn follow(cache: Weak<WatchCache>, store: Arc<dyn Store>, mut after: i64) {
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    let mut watcher = None;
    loop {
        let Some(cache) = cache.upgrade() else { return };
        let Some(current) = watcher.as_mut() else {
            match store.watch(REGISTRY, after).await {
                Ok(w) => watcher = Some(w),
                Err(StoreError::Compacted { .. }) => match cache.reload().await {
                    Ok(revision) => {
                        tracing::warn!(revision, "watch cache reloaded after compaction overtook it");
                        after = revision;
                    }
                    Err(err) => {
                        tracing::warn!(error = err.message, "reloading the watch cache failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Err(err) => {
                    tracing::warn!(%err, "watch cache cannot watch the store; retrying");
                    drop(cache);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        };
        tokio::select! {
            next = current.next() => match next {
                Some(Ok(event)) => {
                    cache.apply(&event);
                    after = event.revision();
                    for event in current.drain_ready() {
                        cache.apply(&event);
                        after = event.revision();
                    }
                    cache.seen.send_replace(after);
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, after, "watch cache's store watch broke; resuming");
                    watcher = None;
                }
                None => {
                    watcher = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = ticker.tick() => cache.progress(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> &'static ResourceInfo {
        rkube_api::find("", "v1", "pods").unwrap()
    }

    fn kv(rev: i64, app: &str) -> KeyValue {
        let value = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {"app": app}}});
        KeyValue {
            key: "/registry/pods/default/p".into(),
            value: serde_json::to_vec(&value).unwrap().into(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn selecting(labels: &str) -> Filter {
        let query = crate::query::Query {
            label_selector: labels.into(),
            ..Default::default()
        };
        Filter::from_query(pods(), &query).unwrap()
    }

    #[test]
    fn a_revision_spliced_into_stored_bytes_reads_as_the_object_with_it() {
        for object in [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"},
                "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            json!({"kind": "Thing", "metadata": {}}),
            json!({"metadata": {"resourceVersion": "9"}, "zzz": 1}),
            // A member named metadata nested before the object's own.
            json!({"data": {"metadata": {"x": 1}}, "metadata": {"name": "m"}}),
        ] {
            let (stored, at) = crate::object::to_store_marked(&object).unwrap();
            let mut without = object.clone();
            without["metadata"].as_object_mut().unwrap().remove("resourceVersion");
            assert_eq!(stored, serde_json::to_vec(&without).unwrap(), "as serde_json writes it");
            let spliced: Value = serde_json::from_slice(&with_revision(&stored, at.unwrap(), 42).unwrap()).unwrap();
            let mut expected = object.clone();
            crate::object::set_resource_version(&mut expected, 42);
            assert_eq!(spliced, expected);
        }
        let spaced = br#"{"metadata": {  }, "a": 1}"#;
        let spliced: Value = serde_json::from_slice(&with_revision(spaced, 13, 3).unwrap()).unwrap();
        assert_eq!(spliced, json!({"metadata": {"resourceVersion": "3"}, "a": 1}));
        assert!(with_revision(br#"{"metadata": "text"}"#, 12, 1).is_none());
        assert!(with_revision(b"{}", 5, 1).is_none());
        let (_, at) = crate::object::to_store_marked(&json!([1])).unwrap();
        assert!(at.is_none());
    }

    #[test]
    fn the_quick_reading_of_stored_objects_equals_the_full_decode() {
        let stored = [
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "1"}},
                   "spec": {"nodeName": "n1", "hostNetwork": true, "restartPolicy": "Always"},
                   "status": {"phase": "Running", "podIP": "10.0.0.1"}}),
            json!({"kind": "Pod", "metadata": {}, "spec": {"nodeName": {"not": "a scalar"}}, "status": 7}),
            json!({"kind": "Pod", "metadata": {"name": "q\"uote", "labels": {"a": 1, "b": "x"}}}),
            json!({"kind": "Pod", "metadata": {"name": "e", "labels": {"we\u{1}ird": "v"}}}),
            json!({"kind": "Pod", "metadata": {"managedFields": [{"manager": "m"}], "name": "m"}, "spec": {}}),
            json!({"kind": "Pod", "metadata": {"managedFields": [{"manager": "m"}]}}),
        ];
        let node = Filter::from_query(
            pods(),
            &crate::query::Query {
                field_selector: "spec.nodeName=n1,status.phase=Running,spec.hostNetwork=true".into(),
                label_selector: "app=web".into(),
                ..Default::default()
            },
        )
        .unwrap();
        for object in stored {
            let bytes = serde_json::to_vec(&object).unwrap();
            let kv = KeyValue {
                key: "/registry/pods/ns/p".into(),
                value: bytes.clone().into(),
                create_revision: 3,
                mod_revision: 42,
            };
            let escaped_key = object.to_string().contains("\\u0001");
            assert_eq!(
                Cached::from_stored(pods(), &bytes, 42).is_none(),
                escaped_key,
                "{object}"
            );
            let quick = Cached::from_kv(pods(), &kv).unwrap();
            let full = Cached::new(pods(), &from_store(&kv).unwrap()).unwrap();
            assert_eq!(quick.value().unwrap(), full.value().unwrap(), "{object}");
            assert_eq!(quick.labels, full.labels, "{object}");
            assert_eq!(quick.fields, full.fields, "{object}");
            assert_eq!(node.matches(&quick), node.matches(&full), "{object}");
            // The in-process watchers' view, cut where the quick reading found managedFields.
            assert_eq!(
                quick.managed_fields.is_some(),
                !escaped_key && object["metadata"].get("managedFields").is_some()
            );
            let lean = quick
                .without_managed_fields()
                .map(|json| serde_json::from_slice::<Value>(&json).unwrap());
            let mut expected = full.value().unwrap();
            let had = expected["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("managedFields")
                .is_some();
            assert_eq!(lean, had.then_some(expected), "{object}");
        }
        let events = rkube_api::find("", "v1", "events").unwrap();
        let event = json!({"kind": "Event", "metadata": {"name": "e", "namespace": "ns"}, "reason": "Scheduled",
                           "type": "Normal", "source": {"component": "default-scheduler"},
                           "involvedObject": {"kind": "Pod", "name": "p", "uid": "u-1", "namespace": "ns"}});
        let kv = KeyValue {
            key: "/registry/events/ns/e".into(),
            value: serde_json::to_vec(&event).unwrap().into(),
            create_revision: 3,
            mod_revision: 9,
        };
        let quick = Cached::from_stored(events, &kv.value, 9).unwrap();
        let full = Cached::new(events, &from_store(&kv).unwrap()).unwrap();
        assert_eq!(quick.fields, full.fields);
        assert!(quick.fields.len() >= 6, "{:?}", quick.fields);
        let running = Cached::from_stored(
            pods(),
            &serde_json::to_vec(&json!({"metadata": {"name": "p"}})).unwrap(),
            5,
        );
        assert_eq!(
            running.unwrap().json.as_ref(),
            br#"{"metadata":{"resourceVersion":"5","name":"p"}}"#
        );
    }

    #[test]
    fn cached_objects_answer_selectors() {
        let object = Cached::from_kv(pods(), &kv(7, "web")).unwrap();
        assert_eq!(object.label("app"), Some("web"));
        assert_eq!(object.label("tier"), None);
        assert_eq!(object.field("metadata.namespace").as_deref(), Some("default"));
        assert_eq!(object.value().unwrap()["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn each_watcher_sees_its_selection() {
        let update = Event {
            kind: EventKind::Put,
            kv: kv(5, "db"),
            prev: Some(kv(4, "web")),
        };
        let decoded = Decoded::from_event(pods(), &update).unwrap();
        assert_eq!(decoded.classify(&selecting("")), Some(Line::Modified));
        assert_eq!(decoded.classify(&selecting("app=web")), Some(Line::LeftSelection));
        assert_eq!(decoded.classify(&selecting("app=db")), Some(Line::Added));
        assert_eq!(decoded.classify(&selecting("app=cache")), None);

        let delete = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                value: Bytes::new(),
                ..kv(6, "")
            },
            prev: Some(kv(5, "db")),
        };
        let decoded = Decoded::from_event(pods(), &delete).unwrap();
        assert_eq!(decoded.classify(&selecting("app=db")), Some(Line::Deleted));
        let last: Value = serde_json::from_slice(decoded.object_json(Line::Deleted)).unwrap();
        assert_eq!(last["metadata"]["resourceVersion"], "6", "the deletion's revision");
        assert_eq!(decoded.classify(&selecting("app=web")), None);
    }

    #[test]
    fn managed_fields_are_cut_from_the_metadata_alone() {
        let managed = json!([{"manager": "m", "fieldsV1": {"f:spec": {}}}]);
        let cases = [
            json!({"metadata": {"managedFields": managed, "name": "a"}, "spec": {"x": 1}}),
            json!({"metadata": {"name": "a", "managedFields": managed, "uid": "u"}}),
            json!({"metadata": {"name": "a", "managedFields": managed}}),
            json!({"metadata": {"managedFields": managed}}),
            // Only metadata's own member goes: the same key elsewhere stays.
            json!({"metadata": {"annotations": {"managedFields": "kept"}, "managedFields": managed},
                   "spec": {"managedFields": managed}}),
        ];
        for object in cases {
            let bytes = serde_json::to_vec(&object).unwrap();
            let lean = without_managed_fields(&bytes).unwrap();
            let mut expected = object.clone();
            expected["metadata"].as_object_mut().unwrap().remove("managedFields");
            assert_eq!(serde_json::from_slice::<Value>(&lean).unwrap(), expected, "{object}");
        }
        // Spaced out as another encoder might write it.
        let spaced = br#"{ "metadata" : { "name" : "a" , "managedFields" : [ ] } }"#;
        let lean: Value = serde_json::from_slice(&without_managed_fields(spaced).unwrap()).unwrap();
        assert_eq!(lean, json!({"metadata": {"name": "a"}}));
        // Nothing to cut, or a key written in a way the cut does not read: sent whole.
        assert!(without_managed_fields(br#"{"metadata":{"name":"a"}}"#).is_none());
        assert!(without_managed_fields(br#"{"metadata":{"managed\u0046ields":[]}}"#).is_none());
        assert!(without_managed_fields(b"not json").is_none());
    }

    #[test]
    fn lines_are_encoded_once() {
        let create = Event {
            kind: EventKind::Put,
            kv: kv(3, "web"),
            prev: None,
        };
        let decoded = Decoded::from_event(pods(), &create).unwrap();
        let line = decoded.classify(&selecting("")).unwrap();
        let first = decoded.line(line);
        let second = decoded.line(line);
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same bytes, shared");
        let event: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event["object"]["metadata"]["resourceVersion"], "3");
        assert!(first.ends_with(b"\n"));
    }

    fn pod(name: &str, app: &str) -> Bytes {
        let value = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}}});
        serde_json::to_vec(&value).unwrap().into()
    }

    async fn next_change(receiver: &mut broadcast::Receiver<Item>) -> Arc<Decoded> {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
                .await
                .expect("a change within 10 s")
                .unwrap();
            if let Item::Change(decoded) = item {
                return decoded;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_the_store_and_serves_consistent_pages_and_watches() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            rkube_store::sqlite::SqliteStore::open(&dir.path().join("state.db"), Default::default())
                .await
                .unwrap(),
        );
        for i in 0..3 {
            store
                .create(&format!("/registry/pods/default/p{i}"), pod(&format!("p{i}"), "web"))
                .await
                .unwrap();
        }
        let loaded_at = store.current_revision().await.unwrap();
        let cache = WatchCache::start(Arc::clone(&store)).await.unwrap();
        let everything = Filter::everything();
        let page = cache
            .page(pods(), None, &everything, None, None, None)
            .unwrap()
            .unwrap();
        assert_eq!((page.items.len(), page.revision), (3, loaded_at));

        let mut watching = cache
            .subscribe(pods(), None, &everything, Start::Snapshot)
            .unwrap()
            .unwrap();
        assert_eq!(watching.initial.len(), 3);
        let mut db_only = cache
            .subscribe(pods(), Some("default"), &selecting("app=db"), Start::Now)
            .unwrap()
            .unwrap();
        store
            .create("/registry/pods/default/p3", pod("p3", "db"))
            .await
            .unwrap();
        let written = store.create("/registry/pods/other/p4", pod("p4", "web")).await.unwrap();
        // Another resource's write moves the registry on too.
        let last = store
            .create("/registry/configmaps/default/c", pod("c", "web"))
            .await
            .unwrap();

        assert!(cache.wait_for_current().await.unwrap(), "the cache catches up");
        let page = cache
            .page(pods(), None, &everything, Some(2), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(page.revision, last, "a list is as fresh as the registry");
        assert_eq!(page.remaining, Some(3));
        let token = ContinueToken::decode(page.continue_token.as_deref().unwrap(), "/registry/pods/").unwrap();
        let next = cache
            .page(
                pods(),
                None,
                &everything,
                Some(2),
                Some(token.revision),
                Some(token.last_key),
            )
            .unwrap()
            .unwrap();
        assert_eq!((next.items.len(), next.remaining), (2, Some(1)));
        let in_default = cache
            .page(pods(), Some("default"), &selecting("app=web"), None, None, None)
            .unwrap()
            .unwrap();
        assert_eq!(in_default.items.len(), 3);

        let added = next_change(&mut watching.receiver).await;
        assert_eq!(added.key, "/registry/pods/default/p3");
        assert_eq!(added.classify(&everything), Some(Line::Added));
        assert_eq!(next_change(&mut watching.receiver).await.revision, written);
        assert_eq!(
            next_change(&mut db_only.receiver).await.classify(&selecting("app=db")),
            Some(Line::Added)
        );

        // A resume within the remembered history replays from memory; one from before the
        // cache started must go to the store.
        let resumed = cache
            .subscribe(pods(), None, &everything, Start::After(loaded_at))
            .unwrap()
            .unwrap();
        assert_eq!(
            resumed.replay.iter().map(|d| d.revision).collect::<Vec<_>>(),
            vec![written - 1, written]
        );
        assert!(
            cache
                .subscribe(pods(), None, &everything, Start::After(1))
                .unwrap()
                .is_none()
        );

        // A page at a revision the resource changed after is the store's to serve.
        assert!(
            cache
                .page(pods(), None, &everything, None, Some(loaded_at), None)
                .unwrap()
                .is_none()
        );
        store.delete("/registry/pods/default/p0", None).await.unwrap();
        let deleted = next_change(&mut watching.receiver).await;
        let last_value: Value = serde_json::from_slice(deleted.object_json(Line::Deleted)).unwrap();
        assert_eq!(last_value["metadata"]["resourceVersion"], deleted.revision.to_string());
    }
}
