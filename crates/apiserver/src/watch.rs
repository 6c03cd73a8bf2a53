//! Watches: newline-delimited JSON events streamed over a chunked response.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use rkube_api::ResourceInfo;
use rkube_store::{EventKind, StoreError};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::State;
use crate::object::{from_store, general_store_error, set_resource_version};
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
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn error(&mut self, err: &ApiError) -> Bytes {
        let mut status = serde_json::to_value(err.to_status()).unwrap_or_default();
        status["kind"] = json!("Status");
        status["apiVersion"] = json!("v1");
        let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
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
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
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
    let watcher = match state.store.watch(&prefix, after).await {
        Ok(watcher) => Some(watcher),
        Err(err @ StoreError::Compacted { .. }) => {
            // Upstream answers 200 and an ERROR event; clients then re-list.
            drop(sender.try_send(encoder.error(&general_store_error(err))));
            None
        }
        Err(err) => return Err(general_store_error(err)),
    };
    let timeout = query.timeout_seconds.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    if let Some(mut watcher) = watcher {
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
                let event = tokio::select! {
                    event = watcher.next() => event,
                    () = tokio::time::sleep_until(deadline) => return,
                    () = sender.closed() => return,
                };
                let line = match event {
                    None => return,
                    Some(Err(err)) => {
                        let err = match err {
                            StoreError::WatcherTooSlow { .. } => ApiError::new(
                                StatusCode::GONE,
                                "Expired",
                                "the watch fell too far behind; list again and watch from its resourceVersion",
                            ),
                            other => general_store_error(other),
                        };
                        drop(sender.send(encoder.error(&err)).await);
                        return;
                    }
                    Some(Ok(event)) => match translate(&filter, &event) {
                        Ok(Some((kind, object))) => encoder.event(kind, &object),
                        Ok(None) => continue,
                        Err(err) => {
                            drop(sender.send(encoder.error(&err)).await);
                            return;
                        }
                    },
                };
                if sender.send(line).await.is_err() {
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

/// A store event as the watcher sees it through its selectors: an object entering the
/// selection is ADDED, one leaving it DELETED.
fn translate(filter: &Filter, event: &rkube_store::Event) -> Result<Option<(&'static str, Value)>, ApiError> {
    let previous = event.prev.as_ref().map(from_store).transpose()?;
    let was = previous.as_ref().is_some_and(|p| filter.matches(p));
    match event.kind {
        EventKind::Put => {
            let object = from_store(&event.kv)?;
            let is = filter.matches(&object);
            Ok(match (was, is) {
                (_, true) if previous.is_none() => Some(("ADDED", object)),
                (true, true) => Some(("MODIFIED", object)),
                (false, true) => Some(("ADDED", object)),
                (true, false) => Some(("DELETED", object)),
                (false, false) => None,
            })
        }
        EventKind::Delete => Ok(match previous {
            Some(mut object) if was => {
                set_resource_version(&mut object, event.revision());
                Some(("DELETED", object))
            }
            _ => None,
        }),
    }
}
