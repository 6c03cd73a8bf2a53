//! Watches: newline-delimited JSON events streamed over a chunked response, fed by the
//! watch cache (or, for watches that resume further back than it remembers, by the store).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use rkube_api::ResourceInfo;
use rkube_store::StoreError;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::State;
use crate::cache::{Cached, Decoded, Item, Start, event_line};
use crate::filter::Filter;
use crate::object::general_store_error;
use crate::query::Query;
use crate::response::{ApiError, Body};
use crate::table;

/// How long a watch lasts when the client does not say (upstream: 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch that allows bookmarks gets one (upstream: about a minute).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// A response body fed by a channel; the stream ends when the sender is dropped.
struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.receiver
            .poll_recv(cx)
            .map(|item| item.map(|bytes| Ok(Frame::data(bytes))))
    }
}

struct Encoder {
    info: &'static ResourceInfo,
    view: table::View,
    include_object: Option<String>,
    columns_sent: bool,
    /// Objects go without managedFields (an in-process component's watch).
    lean: bool,
}

impl Encoder {
    /// An event carrying an encoded object (without managedFields already if the watch
    /// is lean): as it is, as its metadata alone, or as a Table row.
    fn object(&mut self, kind: &str, json: &[u8]) -> Bytes {
        match self.view {
            table::View::Object if self.info.stored_as.is_none() => return event_line(kind, json),
            table::View::Metadata => return event_line(kind, &table::partial_json(json).unwrap_or_default()),
            _ => {}
        }
        let object: Value = serde_json::from_slice(json).unwrap_or_default();
        if self.view == table::View::Object {
            // A version served by conversion: this watch's own line.
            let shown = rkube_api::convert::from_storage(self.info, object);
            return event_line(kind, &serde_json::to_vec(&shown).unwrap_or_default());
        }
        let rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let query = Query {
            include_object: self.include_object.clone(),
            ..Query::default()
        };
        let table = table::table(
            rkube_api::storage_of(self.info),
            std::slice::from_ref(&object),
            rv,
            None,
            &query,
            !self.columns_sent,
        );
        self.columns_sent = true;
        event_line(kind, &serde_json::to_vec(&table).unwrap_or_default())
    }

    /// The line a change makes for this watch, if it concerns it.
    fn change(&mut self, decoded: &Decoded, prefix: &str, filter: &Filter) -> Option<Bytes> {
        if !decoded.key.starts_with(prefix) {
            return None;
        }
        let line = decoded.classify(filter)?;
        Some(if self.view != table::View::Object || self.info.stored_as.is_some() {
            let lean = if self.lean { decoded.lean_object(line) } else { None };
            self.object(line.event_type(), lean.as_deref().unwrap_or(decoded.object_json(line)))
        } else {
            // Shared by every watcher that needs the same line.
            if self.lean {
                decoded.lean_line(line)
            } else {
                decoded.line(line)
            }
        })
    }

    fn bookmark(&self, revision: i64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match self.view {
            table::View::Metadata => table::partial(&json!({ "metadata": metadata })),
            _ => json!({"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": metadata}),
        };
        event_line("BOOKMARK", &serde_json::to_vec(&object).unwrap_or_default())
    }

    fn error(&mut self, err: &ApiError) -> Bytes {
        let mut status = serde_json::to_value(err.to_status()).unwrap_or_default();
        status["kind"] = json!("Status");
        status["apiVersion"] = json!("v1");
        event_line("ERROR", &serde_json::to_vec(&status).unwrap_or_default())
    }
}

pub(crate) async fn serve(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    query: &Query,
    view: table::View,
    in_process: bool,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_query(info, query)?;
    let plan = plan(query)?;
    let mut encoder = Encoder {
        info,
        view,
        include_object: query.include_object.clone(),
        columns_sent: false,
        lean: in_process,
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let opened = open(state, info, ns, &filter, &plan).await?;
    let timeout = query.timeout_seconds.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let bookmarks = query.allow_watch_bookmarks;
    let prefix = info.key_prefix(ns);
    match opened {
        Opened::Expired(err) => {
            // Upstream answers 200 and an ERROR event; clients then re-list.
            drop(sender.try_send(encoder.error(&err)));
        }
        Opened::Source {
            mut source,
            initial,
            replay,
            revision,
        } => {
            let open_watch = state.metrics.watch_started(info.plural);
            let initial_end = plan.initial_end_bookmark && bookmarks;
            tokio::spawn(async move {
                let _open_watch = open_watch;
                let started = tokio::time::Instant::now();
                let deadline = started + timeout;
                let mut position = revision;
                for object in &initial {
                    let lean = if encoder.lean {
                        object.without_managed_fields()
                    } else {
                        None
                    };
                    let line = encoder.object("ADDED", lean.as_deref().unwrap_or(&object.json));
                    if sender.send(line).await.is_err() {
                        return;
                    }
                }
                if initial_end && sender.send(encoder.bookmark(position, true)).await.is_err() {
                    return;
                }
                for decoded in replay {
                    if let Some(bytes) = encoder.change(&decoded, &prefix, &filter) {
                        position = decoded.revision;
                        if sender.send(bytes).await.is_err() {
                            return;
                        }
                    }
                }
                let mut next_bookmark = next_bookmark_time(started, deadline);
                loop {
                    let bookmark_due = async {
                        match next_bookmark {
                            Some(at) if bookmarks => tokio::time::sleep_until(at).await,
                            _ => std::future::pending().await,
                        }
                    };
                    let item = tokio::select! {
                        item = source.next() => item,
                        () = bookmark_due => {
                            next_bookmark = next_bookmark_time(tokio::time::Instant::now(), deadline);
                            if sender.send(encoder.bookmark(position, false)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        () = tokio::time::sleep_until(deadline) => return,
                        () = sender.closed() => return,
                    };
                    let decoded = match item {
                        None => return,
                        Some(Err(err)) => {
                            drop(sender.send(encoder.error(&err)).await);
                            return;
                        }
                        Some(Ok(Item::Progress(revision))) => {
                            position = position.max(revision);
                            continue;
                        }
                        Some(Ok(Item::Change(decoded))) if decoded.revision <= position => continue,
                        Some(Ok(Item::Change(decoded))) => decoded,
                    };
                    position = decoded.revision;
                    let Some(line) = encoder.change(&decoded, &prefix, &filter) else {
                        continue;
                    };
                    let (lines, failed) =
                        with_waiting(line, &mut source, &mut encoder, &mut position, (&prefix, &filter));
                    if sender.send(lines).await.is_err() {
                        return;
                    }
                    if let Some(err) = failed {
                        drop(sender.send(encoder.error(&err)).await);
                        return;
                    }
                }
            });
        }
    }
    let mut response = Response::new(ChannelBody { receiver }.boxed());
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Upstream's bookmark rhythm: about every minute, and once just before the watch times out.
fn next_bookmark_time(now: tokio::time::Instant, deadline: tokio::time::Instant) -> Option<tokio::time::Instant> {
    let next = (now + BOOKMARK_INTERVAL).min(deadline.checked_sub(Duration::from_secs(2))?);
    (next > now).then_some(next)
}

/// How a watch starts, from its options (upstream's validation and WatchList defaulting).
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    start: PlanStart,
    /// Wait for the cache to be at least this fresh first (`Some(None)`: as fresh as the store).
    fresh: Option<Option<i64>>,
    initial_end_bookmark: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum PlanStart {
    Snapshot,
    Now,
    After(i64),
}

fn plan(query: &Query) -> Result<Plan, ApiError> {
    let rv = query.resource_version.as_deref();
    let legacy_now = matches!(rv, None | Some("0"));
    let mut matching = query.resource_version_match.as_deref();
    let mut send_initial = query.send_initial_events;
    if send_initial.is_none() && matching.is_none() && legacy_now {
        // Upstream's defaulting: an old-style watch from "now" lists first.
        send_initial = Some(true);
        matching = Some("NotOlderThan");
    }
    let mut causes = Vec::new();
    let forbidden = |why: &str| {
        (
            "resourceVersionMatch".to_string(),
            "Forbidden".to_string(),
            why.to_string(),
        )
    };
    if send_initial.is_some() && matching != Some("NotOlderThan") {
        causes.push(forbidden(
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if let Some(matching) = matching {
        if send_initial.is_none() {
            causes.push(forbidden(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if matching != "NotOlderThan" {
            causes.push((
                "resourceVersionMatch".to_string(),
                format!("Unsupported value: {matching:?}"),
                r#"supported values: "NotOlderThan""#.to_string(),
            ));
        }
        if query.continue_token.is_some() {
            causes.push(forbidden("resourceVersionMatch is forbidden when continue is provided"));
        }
    }
    if !causes.is_empty() {
        return Err(crate::object::invalid_kind("meta.k8s.io", "ListOptions", "", causes));
    }
    let revision = query.watch_from()?;
    let fresh = match rv {
        None => Some(None),
        Some("0") => None,
        Some(_) => revision.map(Some),
    };
    Ok(match (send_initial, revision) {
        (Some(true), _) => Plan {
            start: PlanStart::Snapshot,
            fresh,
            initial_end_bookmark: true,
        },
        (_, Some(revision)) => Plan {
            start: PlanStart::After(revision),
            fresh: Some(Some(revision)),
            initial_end_bookmark: false,
        },
        (_, None) => Plan {
            start: PlanStart::Now,
            fresh,
            initial_end_bookmark: false,
        },
    })
}

enum Opened {
    Source {
        source: Source,
        initial: Vec<Arc<Cached>>,
        replay: Vec<Arc<Decoded>>,
        revision: i64,
    },
    /// The watch starts before what the store still has.
    Expired(ApiError),
}

async fn open(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    filter: &Filter,
    plan: &Plan,
) -> Result<Opened, ApiError> {
    let cache = &state.cache;
    let fresh = match plan.fresh {
        None => true,
        Some(None) => cache.wait_for_current().await?,
        Some(Some(revision)) => cache.wait_for(revision).await,
    };
    if !fresh {
        let current = state.store.current_revision().await.map_err(general_store_error)?;
        if let Some(Some(requested)) = plan.fresh
            && requested > current
        {
            return Err(general_store_error(StoreError::FutureRevision { requested, current }));
        }
        // The cache lags the store: a watch from a revision can still replay from the store.
        return match plan.start {
            PlanStart::After(after) => store_watch(state, info, ns, after).await,
            _ => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                "the watch cache has not caught up with the datastore; try again",
            )),
        };
    }
    let start = match plan.start {
        PlanStart::Snapshot => Start::Snapshot,
        PlanStart::Now => Start::Now,
        PlanStart::After(revision) => Start::After(revision),
    };
    if let Some(subscription) = cache.subscribe(info, ns, filter, start)? {
        return Ok(Opened::Source {
            source: Source::Cache(subscription.receiver),
            initial: subscription.initial,
            replay: subscription.replay,
            revision: subscription.revision,
        });
    }
    // Older than the cache remembers: this watch replays history from the store itself.
    match plan.start {
        PlanStart::After(after) => store_watch(state, info, ns, after).await,
        _ => Err(ApiError::internal("the watch cache refused a watch from now")),
    }
}

async fn store_watch(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    after: i64,
) -> Result<Opened, ApiError> {
    match state.store.watch(&info.key_prefix(ns), after).await {
        Ok(watcher) => Ok(Opened::Source {
            source: Source::Store(info, watcher),
            initial: Vec::new(),
            replay: Vec::new(),
            revision: after,
        }),
        Err(err @ StoreError::Compacted { .. }) => Ok(Opened::Expired(general_store_error(err))),
        Err(err) => Err(general_store_error(err)),
    }
}

/// Where a watch's changes come from: the cache, or (for watches that start before what
/// the cache remembers) a store watch of its own.
enum Source {
    Cache(broadcast::Receiver<Item>),
    Store(&'static ResourceInfo, rkube_store::Watcher),
}

impl Source {
    /// What is already waiting, without waiting for more: `None` when nothing is (a
    /// store watch decodes as it goes, so it never has anything waiting).
    fn waiting(&mut self) -> Option<Result<Item, ApiError>> {
        match self {
            Self::Cache(receiver) => match receiver.try_recv() {
                Ok(item) => Some(Ok(item)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Err(too_slow())),
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => None,
            },
            Self::Store(..) => None,
        }
    }

    /// The next change or progress mark, or an error to send, or `None` at the end.
    async fn next(&mut self) -> Option<Result<Item, ApiError>> {
        match self {
            Self::Cache(receiver) => match receiver.recv().await {
                Ok(item) => Some(Ok(item)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(Err(too_slow())),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            Self::Store(info, watcher) => match watcher.next().await? {
                Ok(event) => Some(Decoded::from_event(info, &event).map(|d| Item::Change(Arc::new(d)))),
                Err(StoreError::WatcherTooSlow { .. }) => Some(Err(too_slow())),
                Err(other) => Some(Err(general_store_error(other))),
            },
        }
    }
}

/// The most a watch sends in one piece; changes still waiting go in the next.
const BATCH_BYTES: usize = 256 * 1024;

/// `first` and the lines of the changes already waiting behind it, in one piece: a burst
/// of changes costs one write, one TLS record and one wake-up of the client instead of one
/// per change. Also the error that ended the burst, if one did.
fn with_waiting(
    first: Bytes,
    source: &mut Source,
    encoder: &mut Encoder,
    position: &mut i64,
    (prefix, filter): (&str, &Filter),
) -> (Bytes, Option<ApiError>) {
    let mut batch: Option<Vec<u8>> = None;
    let mut failed = None;
    while batch.as_ref().map_or(first.len(), Vec::len) < BATCH_BYTES {
        let decoded = match source.waiting() {
            None => break,
            Some(Err(err)) => {
                failed = Some(err);
                break;
            }
            Some(Ok(Item::Progress(revision))) => {
                *position = (*position).max(revision);
                continue;
            }
            Some(Ok(Item::Change(decoded))) if decoded.revision <= *position => continue,
            Some(Ok(Item::Change(decoded))) => decoded,
        };
        *position = decoded.revision;
        if let Some(line) = encoder.change(&decoded, prefix, filter) {
            batch.get_or_insert_with(|| first.to_vec()).extend_from_slice(&line);
        }
    }
    (batch.map_or(first, Bytes::from), failed)
}

fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "Expired",
        "the watch fell too far behind; list again and watch from its resourceVersion",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_store::{Event, EventKind, KeyValue};

    fn pods() -> &'static ResourceInfo {
        rkube_api::find("", "v1", "pods").unwrap()
    }

    fn change(revision: i64, namespace: &str, name: &str) -> Item {
        let value = serde_json::json!({"kind": "Pod", "metadata": {"name": name, "namespace": namespace}});
        let event = Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: format!("/registry/pods/{namespace}/{name}"),
                value: serde_json::to_vec(&value).unwrap().into(),
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        };
        Item::Change(Arc::new(Decoded::from_event(pods(), &event).unwrap()))
    }

    #[test]
    fn a_burst_of_changes_goes_out_in_one_piece_in_order() {
        let (sender, receiver) = broadcast::channel(16);
        let mut source = Source::Cache(receiver);
        let mut encoder = Encoder {
            info: pods(),
            view: table::View::Object,
            include_object: None,
            columns_sent: false,
            lean: false,
        };
        for item in [
            change(2, "a", "seen-already"),
            change(5, "a", "b"),
            Item::Progress(6),
            change(7, "elsewhere", "not-this-watch"),
            change(8, "a", "c"),
        ] {
            assert!(sender.send(item).is_ok());
        }
        let filter = Filter::everything();
        let mut position = 3;
        let first = Bytes::from_static(b"{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n");
        let watch = ("/registry/pods/a/", &filter);
        let (lines, failed) = with_waiting(first, &mut source, &mut encoder, &mut position, watch);
        assert!(failed.is_none());
        let text = String::from_utf8(lines.to_vec()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .map(|l| l.split("\"name\":\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"], "{text}");
        assert_eq!(position, 8);
        // Nothing waiting: the first line goes alone, untouched.
        let alone = Bytes::from_static(b"x\n");
        let (lines, _) = with_waiting(alone.clone(), &mut source, &mut encoder, &mut position, watch);
        assert_eq!(lines, alone);
        // A watcher left behind learns it at once, after what it got.
        for revision in 10..40 {
            assert!(sender.send(change(revision, "a", "flood")).is_ok());
        }
        let (_, failed) = with_waiting(alone, &mut source, &mut encoder, &mut position, watch);
        assert_eq!(failed.map(|e| e.code), Some(StatusCode::GONE));
    }
}
