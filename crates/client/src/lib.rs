//! What rkube's API clients (the scheduler, the controller manager, later the node agent)
//! share: leader election through a Lease ([`leader`]) and events recorded as upstream's
//! recorder does, repeats aggregated into one event's count ([`events`]).

pub mod events;
pub mod leader;
pub mod shared;

use k8s_openapi::jiff::Timestamp;

/// A time as the API writes `metav1.Time`: RFC 3339 in UTC, to the second.
pub fn api_time(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as [`api_time`] writes it.
pub fn now_text() -> String {
    api_time(Timestamp::now())
}

/// Creates an object from its already encoded body at `url` (a collection), reading back
/// only what `T` takes of the answer: for writes made many times whose answer is mostly
/// thrown away (events; the pods of one ReplicaSet template).
pub async fn create_encoded<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<T, kube::Error> {
    let request = kube::core::Request::new(url)
        .create(&kube::api::PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    client.request::<T>(request).await
}
