//! rkube's API server: the Kubernetes v1.33 REST API over the store, served over HTTPS to
//! stock kubectl and every other Kubernetes client.
//!
//! So far: TLS with client-certificate and bearer-token authentication, `/version`, health
//! endpoints, discovery, and the REST verbs (with watch and Tables) for every resource in
//! the catalogue.

mod admission;
mod authn;
mod cache;
mod discovery;
mod filter;
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod object;
mod openapi;
mod path;
mod pods;
mod query;
mod response;
mod rest;
mod reviews;
mod routes;
mod service_accounts;
mod services;
mod table;
mod tls;
mod transport;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rkube_pki::{CertKey, TokenFile};
use rkube_store::Store;
use tokio::net::TcpListener;

pub use authn::Authenticator;
pub use response::ApiError;
pub use services::ServiceNetwork;
pub use transport::LocalTransport;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("tls configuration: {0}")]
    Tls(String),
    #[error("starting: {0}")]
    Startup(String),
    #[error("listening: {0}")]
    Io(#[from] std::io::Error),
}

/// What the server needs to run.
pub struct Config {
    pub listener: TcpListener,
    /// The serving certificate (chain) and key.
    pub serving: CertKey,
    /// CA whose client certificates are trusted.
    pub client_ca_pem: String,
    pub tokens: TokenFile,
    /// Signs and checks service-account tokens.
    pub service_account_keys: rkube_pki::ServiceAccountKeys,
    pub store: Arc<dyn Store>,
    pub services: ServiceNetwork,
    /// Where pods reach this API server: the `kubernetes` service's endpoint.
    pub advertise: SocketAddr,
}

/// Shared by every request.
pub(crate) struct State {
    pub authenticator: Authenticator,
    /// The datastore, timed for `/metrics`.
    pub store: Arc<dyn Store>,
    pub metrics: Arc<metrics::Metrics>,
    /// Every resource's objects in memory, for lists and watches.
    pub cache: Arc<cache::WatchCache>,
    /// Built in the background at start (seconds in a debug build); the first OpenAPI
    /// request waits for it.
    pub openapi: Arc<tokio::sync::OnceCell<openapi::OpenApi>>,
    pub services: ServiceNetwork,
}

/// An API server whose state is ready (datastore open, watch cache filled, system
/// namespaces there): in-process clients can use it before it listens.
pub struct ApiServer {
    state: Arc<State>,
    acceptor: tokio_rustls::TlsAcceptor,
    listener: TcpListener,
}

impl ApiServer {
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let acceptor = tls::acceptor(&config.serving, &config.client_ca_pem)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let store: Arc<dyn Store> = Arc::new(metrics::MeteredStore {
            inner: config.store,
            metrics: Arc::clone(&metrics),
        });
        let cache = cache::WatchCache::start(Arc::clone(&store))
            .await
            .map_err(|err| ServeError::Startup(err.message))?;
        let state = Arc::new(State {
            authenticator: Authenticator::new(config.tokens, config.service_account_keys),
            cache,
            openapi: Arc::new(tokio::sync::OnceCell::new()),
            store,
            metrics,
            services: config.services,
        });
        if let Err(err) = rest::ensure_system_namespaces(&state).await {
            return Err(ServeError::Startup(err.message));
        }
        if let Err(err) = rest::ensure_kubernetes_service(&state, config.advertise).await {
            return Err(ServeError::Startup(err.message));
        }
        // Start building the OpenAPI documents now, so that kubectl's first request finds them.
        {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                if let Err(err) = openapi::built(&state.openapi).await {
                    tracing::error!(err = err.message, "building the OpenAPI documents");
                }
            });
        }
        Ok(Self {
            state,
            acceptor,
            listener: config.listener,
        })
    }

    /// A transport for a client in this process, authenticated as `user` (no groups, as
    /// the component certificates had) and naming itself `user_agent` when the request
    /// does not.
    pub fn local_transport(&self, user: &str, user_agent: http::HeaderValue) -> LocalTransport {
        let identity = rkube_pki::Identity {
            user: user.to_string(),
            uid: String::new(),
            groups: Vec::new(),
        };
        LocalTransport::new(Arc::clone(&self.state), identity, user_agent)
    }

    /// Serves until `shutdown` completes. Connections already open are dropped then.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Self {
            state,
            acceptor,
            listener,
        } = self;
        let local: SocketAddr = listener.local_addr()?;
        tracing::info!(address = %local, "API server listening");
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(err) => {
                        tracing::debug!(%peer, %err, "tls handshake failed");
                        return;
                    }
                };
                let certificate = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| der.as_ref().to_vec());
                let connection = Arc::new(authn::Connection::new(certificate));
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (state, connection) = (Arc::clone(&state), Arc::clone(&connection));
                    let request = request.map(transport::RequestBody::Network);
                    async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, &connection, request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(err) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, %err, "connection ended with an error");
                }
            });
        }
    }
}
