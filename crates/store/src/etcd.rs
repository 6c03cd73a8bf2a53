//! The etcd v3 backend: each store operation is one etcd request (creates, updates and
//! deletes are transactions comparing create or mod revisions), watches are etcd watches
//! pumped into a bounded buffer so one slow consumer cannot hold the shared gRPC connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
    WatchClient, WatchOptions,
};
use tokio::sync::mpsc;

use crate::continuation::ContinueToken;
use crate::error::{Result, StoreError};
use crate::key::{prefix_end, validate_key, validate_value};
use crate::watch::{WatchSource, Watcher};
use crate::{Bytes, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Store};

/// Large ranges and watch batches exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Keys per request when a caller asks for a whole range. etcd 3.4 counts the whole
/// remaining range on every limited request, so small pages make a full range quadratic.
const PAGE: usize = 10_000;
/// Attempts after a refused connection before the error is returned (about 2.7 s in all).
const CONNECT_RETRIES: u32 = 10;
/// Events buffered per watcher before it counts as too slow and is cut off.
const WATCH_BUFFER: usize = 16 * 1024;

pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    timeout: Duration,
    watch_buffer: usize,
    /// The highest compaction this process has seen or made.
    compacted: AtomicI64,
}

fn kv_from(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = kv
        .key_str()
        .map_err(|_| StoreError::EtcdProtocol("a key that is not UTF-8".into()))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::EtcdProtocol("a response without a header".into()))
}

/// True when etcd refused a revision because compaction removed it.
fn is_compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// A request that failed before it reached etcd.
fn never_sent(err: &etcd_client::Error) -> bool {
    // tonic reports it as Unavailable with this message; the code alone also covers
    // requests that were sent and then lost, which are not safe to repeat.
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message().contains("tcp connect error"))
}

fn is_future(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision is a future revision"))
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        let client = tokio::time::timeout(timeout, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| StoreError::InvalidEndpoint {
                endpoint: endpoints.join(","),
                reason: format!("no answer within {timeout:?}"),
            })??;
        let store = Self {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE_BYTES),
            timeout,
            watch_buffer: WATCH_BUFFER,
            compacted: AtomicI64::new(0),
        };
        // Fail at start, not at the first request, when etcd is not there.
        let revision = store.current_revision().await?;
        let compacted = store.compacted_revision().await?;
        tracing::info!(
            endpoints = endpoints.join(",").as_str(),
            revision,
            compacted,
            "connected to etcd"
        );
        Ok(store)
    }

    /// Events buffered per watcher before it is cut off (default 16,384).
    pub fn with_watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events.max(1);
        self
    }

    async fn timed<T>(&self, future: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::EtcdProtocol(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Runs a kv request, retrying it while the balancer picks an endpoint that refuses
    /// connections (a member that died): such a request was never sent, so even a write is
    /// safe to send again, and the next attempt may pick a live member.
    async fn kv_call<T, Fut>(&self, mut request: impl FnMut(KvClient) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            match self.timed(request(self.kv.clone())).await {
                Err(StoreError::Etcd(err)) if never_sent(&err) && attempt < CONNECT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%err, attempt, "etcd endpoint refused the connection; retrying");
                    tokio::time::sleep(Duration::from_millis(50) * attempt).await;
                }
                other => return other,
            }
        }
    }

    /// Maps etcd's refusal of a revision to the store's errors.
    async fn revision_error(&self, err: etcd_client::Error, requested: i64) -> StoreError {
        if is_compacted(&err) {
            let compacted = self.compacted_revision().await.unwrap_or(0);
            return StoreError::Compacted { requested, compacted };
        }
        if is_future(&err) {
            let current = self.current_revision().await.unwrap_or(0);
            return StoreError::FutureRevision { requested, current };
        }
        err.into()
    }

    /// The answer of a transaction's `or_else` get: the key's current value, if any.
    fn current_from(resp: &etcd_client::TxnResponse) -> Result<Option<KeyValue>> {
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return get.kvs().first().map(kv_from).transpose();
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .kv_call(|mut kv| async move { kv.get("/", Some(GetOptions::new().with_count_only())).await })
            .await?;
        header_revision(resp.header())
    }

    async fn compacted_revision(&self) -> Result<i64> {
        // etcd reports its compaction point only to a watch that starts before it.
        let mut stream = self
            .timed(self.watch.clone().watch(
                "/rkube-compaction-probe",
                Some(WatchOptions::new().with_start_revision(1)),
            ))
            .await?;
        let seen = match self.timed(stream.message()).await? {
            Some(resp) if resp.canceled() && resp.compact_revision() > 0 => resp.compact_revision(),
            _ => 0,
        };
        let known = self.compacted.fetch_max(seen, Ordering::SeqCst).max(seen);
        Ok(known)
    }

    async fn get(&self, key: &str) -> Result<(i64, Option<KeyValue>)> {
        validate_key(key)?;
        let resp = self.kv_call(|mut kv| async move { kv.get(key, None).await }).await?;
        let revision = header_revision(resp.header())?;
        Ok((revision, resp.kvs().first().map(kv_from).transpose()?))
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let token = request.validate()?;
        let end = prefix_end(&request.prefix);
        // Keys cannot contain NUL, so "last key + NUL" is the first key after it.
        let mut start = match &token {
            Some(t) => format!("{}\0", t.last_key),
            None => request.prefix.clone(),
        };
        let mut revision = token.as_ref().map(|t| t.revision).or(request.revision);
        let mut kvs = Vec::new();
        loop {
            let want = request.limit.map_or(PAGE, |l| (l - kvs.len()).min(PAGE));
            let mut options = GetOptions::new().with_range(end.as_str()).with_limit(want as i64 + 1);
            if let Some(rev) = revision {
                options = options.with_revision(rev);
            }
            let from = start.as_str();
            let resp = match self
                .kv_call(|mut kv| {
                    let options = options.clone();
                    async move { kv.get(from, Some(options)).await }
                })
                .await
            {
                Ok(resp) => resp,
                Err(StoreError::Etcd(err)) => return Err(self.revision_error(err, revision.unwrap_or(0)).await),
                Err(err) => return Err(err),
            };
            // Every page reads at the revision of the first.
            let rev = *revision.get_or_insert(header_revision(resp.header())?);
            let page = resp.kvs();
            let more = page.len() > want;
            for kv in page.iter().take(want) {
                kvs.push(kv_from(kv)?);
            }
            let full = request.limit.is_some_and(|l| kvs.len() >= l);
            if !more || full {
                let continue_token = (more && full).then(|| {
                    ContinueToken {
                        revision: rev,
                        last_key: kvs.last().map(|kv| kv.key.clone()).unwrap_or_default(),
                    }
                    .encode()
                });
                return Ok(RangeResponse {
                    kvs,
                    revision: rev,
                    continue_token,
                });
            }
            start = format!("{}\0", kvs.last().map(|kv| kv.key.as_str()).unwrap_or_default());
        }
    }

    async fn count(&self, prefix: &str) -> Result<(i64, i64)> {
        validate_key(prefix)?;
        let options = GetOptions::new().with_range(prefix_end(prefix)).with_count_only();
        let resp = self
            .kv_call(|mut kv| {
                let options = options.clone();
                async move { kv.get(prefix, Some(options)).await }
            })
            .await?;
        Ok((header_revision(resp.header())?, resp.count()))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let resp = self
            .kv_call(|mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists { key: key.to_string() });
        }
        header_revision(resp.header())
    }

    async fn update(&self, key: &str, value: Bytes, expected_mod_revision: i64) -> Result<i64> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected_mod_revision)])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .kv_call(|mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        match Self::current_from(&resp)? {
            None => Err(StoreError::NotFound { key: key.to_string() }),
            Some(current) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: expected_mod_revision,
                current: Some(Box::new(current)),
            }),
        }
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, KeyValue)> {
        validate_key(key)?;
        let guard = match expected_mod_revision {
            Some(expected) => Compare::mod_revision(key, CompareOp::Equal, expected),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::delete(
                key,
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .kv_call(|mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            let revision = header_revision(resp.header())?;
            for op in resp.op_responses() {
                if let TxnOpResponse::Delete(del) = op
                    && let Some(prev) = del.prev_kvs().first()
                {
                    return Ok((revision, kv_from(prev)?));
                }
            }
            return Err(StoreError::EtcdProtocol(
                "a delete that returned no previous value".into(),
            ));
        }
        match (Self::current_from(&resp)?, expected_mod_revision) {
            (Some(current), Some(expected)) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected,
                current: Some(Box::new(current)),
            }),
            _ => Err(StoreError::NotFound { key: key.to_string() }),
        }
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<Watcher> {
        validate_key(prefix)?;
        let current = self.current_revision().await?;
        let after = if after_revision <= 0 { current } else { after_revision };
        if after > current {
            return Err(StoreError::FutureRevision {
                requested: after,
                current,
            });
        }
        let known_compacted = self.compacted.load(Ordering::SeqCst);
        if after < known_compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: known_compacted,
            });
        }
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after + 1)
            .with_prev_key();
        let stream = self.timed(self.watch.clone().watch(prefix, Some(options))).await?;
        let (sender, receiver) = mpsc::channel(self.watch_buffer);
        let cut_off = Arc::new(AtomicBool::new(false));
        tokio::spawn(pump(stream, sender, Arc::clone(&cut_off), after));
        Ok(Watcher::new(Box::new(EtcdWatch {
            prefix: prefix.to_string(),
            receiver,
            cut_off,
        })))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let known = self.compacted.load(Ordering::SeqCst);
        if revision <= known {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: known,
            });
        }
        match self
            .kv_call(|mut kv| async move { kv.compact(revision, None).await })
            .await
        {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::SeqCst);
                Ok(())
            }
            Err(StoreError::Etcd(err)) => Err(self.revision_error(err, revision).await),
            Err(err) => Err(err),
        }
    }
}

fn convert(event: &etcd_client::Event) -> Result<Event> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::EtcdProtocol("a watch event without a key".into()))?;
    let prev = event.prev_kv().map(kv_from).transpose()?;
    Ok(match event.event_type() {
        EventType::Put => Event {
            kind: EventKind::Put,
            kv: kv_from(kv)?,
            // etcd sends the previous value of a create too when the key existed before a
            // delete that compaction has not removed; a create has no previous value.
            prev: if kv.create_revision() == kv.mod_revision() {
                None
            } else {
                prev
            },
        },
        EventType::Delete => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: kv_from(kv)?.key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: kv.mod_revision(),
            },
            prev,
        },
    })
}

/// Moves events from etcd into the watcher's buffer. A full buffer means the consumer is
/// too slow: it is cut off (and the etcd watch cancelled by dropping it) rather than
/// letting unread responses pile up on the connection every watcher shares.
async fn pump(
    mut stream: etcd_client::WatchStream,
    sender: mpsc::Sender<Result<Event>>,
    cut_off: Arc<AtomicBool>,
    after: i64,
) {
    loop {
        let resp = tokio::select! {
            resp = stream.message() => resp,
            () = sender.closed() => return,
        };
        let resp = match resp {
            Ok(Some(resp)) => resp,
            Ok(None) => return,
            Err(err) => {
                drop(sender.try_send(Err(err.into())));
                return;
            }
        };
        if resp.canceled() {
            let err = if resp.compact_revision() > 0 {
                StoreError::Compacted {
                    requested: after,
                    compacted: resp.compact_revision(),
                }
            } else {
                StoreError::EtcdProtocol(format!("etcd cancelled the watch: {}", resp.cancel_reason()))
            };
            drop(sender.try_send(Err(err)));
            return;
        }
        for event in resp.events() {
            match sender.try_send(convert(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    cut_off.store(true, Ordering::SeqCst);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

struct EtcdWatch {
    prefix: String,
    receiver: mpsc::Receiver<Result<Event>>,
    cut_off: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl WatchSource for EtcdWatch {
    async fn next_batch(&mut self) -> Option<Result<Vec<Event>>> {
        let first = match self.receiver.recv().await {
            Some(Ok(event)) => event,
            Some(Err(err)) => return Some(Err(err)),
            None if self.cut_off.load(Ordering::SeqCst) => {
                return Some(Err(StoreError::WatcherTooSlow {
                    prefix: self.prefix.clone(),
                }));
            }
            None => return None,
        };
        let mut batch = vec![first];
        while let Ok(next) = self.receiver.try_recv() {
            match next {
                Ok(event) => batch.push(event),
                Err(err) => {
                    // Deliver what came before the error first; the error follows next call.
                    let (sender, receiver) = mpsc::channel(1);
                    drop(sender.try_send(Err(err)));
                    self.receiver = receiver;
                    break;
                }
            }
        }
        Some(Ok(batch))
    }
}
