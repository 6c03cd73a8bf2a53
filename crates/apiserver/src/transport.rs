//! How requests reach the dispatcher: over HTTPS from the network, or handed over in memory
//! by the components that run in this process (ADR 14). Both go through the same
//! authentication, admission, storage and watch paths; the in-memory way only skips TLS,
//! the loopback socket and HTTP/1 framing, which cost the components' requests and watch
//! streams about a tenth of the server's CPU.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use rkube_pki::Identity;

use crate::State;
use crate::authn::Connection;
use crate::object::bad_request;
use crate::response::{ApiError, Body};
use crate::routes;

/// A request's body: still arriving from a connection, or already whole.
pub(crate) enum RequestBody {
    Network(hyper::body::Incoming),
    Local(Bytes),
}

impl RequestBody {
    /// The whole body, refused with 413 beyond `limit` bytes.
    pub(crate) async fn read(self, limit: usize) -> Result<Bytes, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("Request entity too large: limit is {limit}"),
            )
        };
        match self {
            Self::Local(bytes) if bytes.len() > limit => Err(too_large()),
            Self::Local(bytes) => Ok(bytes),
            Self::Network(incoming) => match http_body_util::Limited::new(incoming, limit).collect().await {
                Ok(collected) => Ok(collected.to_bytes()),
                Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
                Err(err) => Err(bad_request(format!("reading the request body: {err}"))),
            },
        }
    }
}

/// Marks a request from a component in this process (no network client can set it): its
/// watches carry objects without managedFields, which the components drop on arrival.
#[derive(Clone, Copy)]
pub(crate) struct InProcess;

/// A `tower` service answering requests of one in-process client, as one authenticated
/// user, without a connection; `kube::Client::new` takes it in place of its HTTPS stack.
#[derive(Clone)]
pub struct LocalTransport {
    state: Arc<State>,
    connection: Arc<Connection>,
    user_agent: HeaderValue,
}

impl LocalTransport {
    pub(crate) fn new(state: Arc<State>, identity: Identity, user_agent: HeaderValue) -> Self {
        Self {
            state,
            connection: Arc::new(Connection::authenticated(identity)),
            user_agent,
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> tower_service::Service<Request<B>> for LocalTransport
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Answer {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // Managed fields are named after the user agent's first word, as upstream's are.
            parts
                .headers
                .entry(header::USER_AGENT)
                .or_insert_with(|| this.user_agent.clone());
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => return Ok(bad_request(format!("reading the request body: {err}")).into_response()),
            };
            parts.extensions.insert(InProcess);
            let request = Request::from_parts(parts, RequestBody::Local(body));
            Ok(routes::handle(&this.state, &this.connection, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_bodies_obey_the_size_limit() {
        let whole = RequestBody::Local(Bytes::from_static(b"{}")).read(2).await;
        assert_eq!(whole.ok(), Some(Bytes::from_static(b"{}")));
        let refused = RequestBody::Local(Bytes::from_static(b"{ }")).read(2).await;
        let err = refused.err().map(|err| (err.code, err.reason));
        assert_eq!(err, Some((StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")));
    }
}
