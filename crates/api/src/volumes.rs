//! Which PersistentVolume can serve which claim, as pure functions: the scheduler's
//! VolumeBinding and the volume binder match claims to volumes by the same rules.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use crate::selector::{LabelSelector, label_selector_text};

/// The node a WaitForFirstConsumer claim is to be provisioned on, set by the scheduler.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The provisioner asked for a claim's volume (and its beta spelling).
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// The claim's class: `spec.storageClassName`, or the beta annotation of old manifests.
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
                .map(String::as_str)
        })
        .unwrap_or_default()
}

/// The `storage` quantity of a capacity or requests list, in bytes.
pub fn storage(
    list: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> f64 {
    list.and_then(|l| l.get("storage"))
        .and_then(|q| crate::quantity::parse(&q.0))
        .unwrap_or(0.0)
}

/// Whether `volume` can serve `claim` (upstream's `FindMatchingVolume` criteria, less the
/// node): pre-bound to it, or available, of its class, mode, access modes, size and labels.
pub fn volume_serves(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(spec), Some(wants)) = (volume.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    if let Some(reference) = &spec.claim_ref {
        return reference.namespace == claim.metadata.namespace
            && reference.name == claim.metadata.name
            && reference
                .uid
                .as_deref()
                .is_none_or(|uid| Some(uid) == claim.metadata.uid.as_deref());
    }
    let available = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available");
    let modes = spec.access_modes.as_deref().unwrap_or_default();
    let mode = |m: Option<&str>| m.unwrap_or("Filesystem").to_string();
    let selected = wants.selector.as_ref().is_none_or(|selector| {
        let text = label_selector_text(&serde_json::to_value(selector).unwrap_or_default());
        LabelSelector::parse(&text).is_ok_and(|s| {
            s.matches_by(|key| {
                volume
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .map(String::as_str)
            })
        })
    });
    available
        && volume.metadata.deletion_timestamp.is_none()
        && spec.storage_class_name.as_deref().unwrap_or_default() == claim_class(claim)
        && mode(spec.volume_mode.as_deref()) == mode(wants.volume_mode.as_deref())
        && wants.access_modes.iter().flatten().all(|m| modes.contains(m))
        && selected
        && storage(spec.capacity.as_ref()) >= storage(wants.resources.as_ref().and_then(|r| r.requests.as_ref()))
}
