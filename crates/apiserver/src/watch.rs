//! Watches: newline-delimited JSON events streamed over a chunked response.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use rkube_api::ResourceInfo;
use rkube_store::StoreError;
use serde_json::{Value, json};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::State;
use crate::fanout::Decoded;
use crate::object::general_store_error;
use crate::query::Query;
use crate::response::{ApiError, Body};
use crate::rest::{Filter, list_page};
use crate::table;

/// How long a watch lasts when the client does not say (upstream: 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

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
    table: bool,
    include_object: Option<String>,
    columns_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value) -> Bytes {
        let object = if self.table {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let query = Query {
                include_object: self.include_object.clone(),
                ..Query::default()
            };
            let t = table::table(
                self.info,
                std::slice::from_ref(object),
                rv,
                None,
                &query,
                !self.columns_sent,
            );
            self.columns_sent = true;
            t
        } else {
            object.clone()
        };
        crate::fanout::encode_line(kind, &object)
    }

    fn error(&mut self, err: &ApiError) -> Bytes {
        let mut status = serde_json::to_value(err.to_status()).unwrap_or_default();
        status["kind"] = json!("Status");
        status["apiVersion"] = json!("v1");
        crate::fanout::encode_line("ERROR", &status)
    }
}

pub(crate) async fn serve(
    state: &State,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    query: &Query,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_query(info, query)?;
    let from = query.watch_from()?;
    let prefix = info.key_prefix(ns);
    let mut encoder = Encoder {
        info,
        table,
        include_object: query.include_object.clone(),
        columns_sent: false,
    };
    // Subscribe before listing, so every change after the list's revision is received.
    let (feed, published) = state.feeds.subscribe(&info.key_prefix(None)).await?;
    let mut initial = Vec::new();
    let after = match from {
        Some(revision) => revision,
        None => {
            // "Now": the current state as ADDED events, then changes after it.
            let all = Query {
                limit: None,
                continue_token: None,
                ..Query::default()
            };
            let page = list_page(state, info, ns, &all, &filter).await?;
            initial = page.items;
            page.revision
        }
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let source = if after >= published {
        if after > published {
            // A revision the feed has not reached must at least exist.
            let current = state.store.current_revision().await.map_err(general_store_error)?;
            if after > current {
                return Err(general_store_error(StoreError::FutureRevision {
                    requested: after,
                    current,
                }));
            }
        }
        Some(Source::Feed(feed))
    } else {
        // Older than the shared feed: this watch replays history from the store itself.
        drop(feed);
        match state.store.watch(&prefix, after).await {
            Ok(watcher) => Some(Source::Store(watcher)),
            Err(err @ StoreError::Compacted { .. }) => {
                // Upstream answers 200 and an ERROR event; clients then re-list.
                drop(sender.try_send(encoder.error(&general_store_error(err))));
                None
            }
            Err(err) => return Err(general_store_error(err)),
        }
    };
    let timeout = query.timeout_seconds.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    if let Some(mut source) = source {
        let open_watch = state.metrics.watch_started(info.plural);
        tokio::spawn(async move {
            let _open_watch = open_watch;
            let deadline = tokio::time::Instant::now() + timeout;
            for object in &initial {
                if sender.send(encoder.event("ADDED", object)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    next = source.next(after) => next,
                    () = tokio::time::sleep_until(deadline) => return,
                    () = sender.closed() => return,
                };
                let decoded = match next {
                    None => return,
                    Some(Err(err)) => {
                        drop(sender.send(encoder.error(&err)).await);
                        return;
                    }
                    Some(Ok(decoded)) => decoded,
                };
                if !decoded.key.starts_with(&prefix) {
                    continue;
                }
                let Some((line, object)) = decoded.classify(|o| filter.matches(o)) else {
                    continue;
                };
                let bytes = if encoder.table {
                    encoder.event(line.event_type(), object)
                } else {
                    decoded.line(line, object)
                };
                if sender.send(bytes).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut response = Response::new(ChannelBody { receiver }.boxed());
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Where a watch's changes come from: the resource's shared feed, or (for watches that
/// start before the feed) a store watch of its own.
enum Source {
    Feed(broadcast::Receiver<Arc<Decoded>>),
    Store(rkube_store::Watcher),
}

impl Source {
    /// The next change after `after`, or an error to send, or `None` at the end.
    async fn next(&mut self, after: i64) -> Option<Result<Arc<Decoded>, ApiError>> {
        loop {
            match self {
                Self::Feed(receiver) => match receiver.recv().await {
                    Ok(decoded) if decoded.revision <= after => continue,
                    Ok(decoded) => return Some(Ok(decoded)),
                    Err(broadcast::error::RecvError::Lagged(_)) => return Some(Err(too_slow())),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                Self::Store(watcher) => {
                    return match watcher.next().await? {
                        Ok(event) => Some(Decoded::decode(&event).map(Arc::new)),
                        Err(StoreError::WatcherTooSlow { .. }) => Some(Err(too_slow())),
                        Err(other) => Some(Err(general_store_error(other))),
                    };
                }
            }
        }
    }
}

fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "Expired",
        "the watch fell too far behind; list again and watch from its resourceVersion",
    )
}
