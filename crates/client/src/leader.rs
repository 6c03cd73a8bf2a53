//! Leader election through a `coordination.k8s.io` Lease, as client-go's leaderelection
//! does it: a candidate takes the lease when it is free or when its holder has not renewed
//! it for the lease duration (measured on the candidate's own clock from when it last saw
//! the record change, so clocks need not agree); the leader renews it every retry period
//! and steps down when it could not renew within the renew deadline.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    /// Unique per candidate process.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Election {
    /// Upstream's defaults (15 s, 10 s, 2 s) for the lease `namespace/name`.
    pub fn new(namespace: &str, name: &str, identity: String) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// What the candidate last saw of the lease, and when it saw it change.
struct Observed {
    holder: Option<String>,
    renew_time: Option<String>,
    at: Instant,
}

/// Runs `work` while this process leads; returns when leadership is lost (or `work`
/// ends). Call it in a loop to stand again.
pub async fn lead<F: Future<Output = ()>>(client: kube::Client, election: &Election, work: F) {
    let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut observed: Option<Observed> = None;
    // Campaign.
    loop {
        if try_acquire_or_renew(&leases, election, &mut observed).await {
            break;
        }
        tokio::time::sleep(election.retry_period).await;
    }
    tracing::info!(lease = election.name, identity = election.identity, "became leader");
    // Lead: work, while renewing.
    let renewing = async {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(election.retry_period).await;
            if try_acquire_or_renew(&leases, election, &mut observed).await {
                last_renewal = Instant::now();
            } else if last_renewal.elapsed() >= election.renew_deadline {
                return;
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = renewing => tracing::warn!(lease = election.name, "lost leadership: could not renew the lease"),
    }
}

/// One attempt to take or keep the lease; true when this candidate holds it afterwards.
async fn try_acquire_or_renew(leases: &Api<Lease>, election: &Election, observed: &mut Option<Observed>) -> bool {
    let now = micro_now();
    let seconds = i32::try_from(election.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let current = match leases.get_opt(&election.name).await {
        Ok(current) => current,
        Err(err) => {
            tracing::debug!(%err, "reading the leader lease failed");
            return false;
        }
    };
    let Some(mut lease) = current else {
        let lease: Result<Lease, _> = serde_json::from_value(json!({
            "metadata": {"name": election.name, "namespace": election.namespace},
            "spec": {"holderIdentity": election.identity, "leaseDurationSeconds": seconds,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
        }));
        let Ok(lease) = lease else { return false };
        return leases.create(&PostParams::default(), &lease).await.is_ok();
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let renew_time = spec.renew_time.as_ref().map(|t| format!("{:?}", t.0));
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew_time,
            at: Instant::now(),
        });
    }
    let ours = holder.as_deref() == Some(election.identity.as_str());
    let expired = observed
        .as_ref()
        .is_some_and(|o| o.at.elapsed() >= election.lease_duration);
    if holder.is_some() && !ours && !expired {
        return false;
    }
    if !ours {
        spec.acquire_time = serde_json::from_value(json!(now)).ok();
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(election.identity.clone());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = serde_json::from_value(json!(now)).ok();
    // The resourceVersion it was read at makes this a compare-and-swap.
    leases
        .replace(&election.name, &PostParams::default(), &lease)
        .await
        .is_ok()
}

/// Gives the lease up (holder cleared, duration 1 s) if this candidate holds it, as
/// client-go's `ReleaseOnCancel` does, so a standby need not wait out the lease.
pub async fn release(client: kube::Client, election: &Election) {
    let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
    let Ok(Some(mut lease)) = leases.get_opt(&election.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return;
    }
    let now = micro_now();
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = serde_json::from_value(json!(now)).ok();
    spec.acquire_time = serde_json::from_value(json!(now)).ok();
    match leases.replace(&election.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = election.name, "released the leader lease"),
        Err(err) => tracing::warn!(%err, "releasing the leader lease failed"),
    }
}
