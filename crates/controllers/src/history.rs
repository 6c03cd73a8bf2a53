//! ControllerRevisions, the history of a StatefulSet's or DaemonSet's pod templates (as
//! upstream's `pkg/controller/history`): each revision holds the patch that restores its
//! template, is named `<owner>-<hash>` and numbered; the revision matching the owner's
//! template now is its update revision (an older equal one is renumbered as the newest, which
//! is what a rollback does), and revisions no pod uses are pruned beyond
//! `revisionHistoryLimit`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use rkube_api::selector::LabelSelector;
use serde::Serialize;
use serde_json::{Value, json};

use crate::pods::labels_match;

/// FNV-1a of the value's JSON (with the collision count), its decimal digits mapped onto
/// upstream's safe alphabet, as upstream names ReplicaSets and ControllerRevisions.
pub fn hash_of(value: &impl Serialize, collisions: Option<i32>) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(serde_json::to_string(value).unwrap_or_default().as_bytes());
    if let Some(n) = collisions {
        feed(n.to_string().as_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(SAFE[usize::from(b) % SAFE.len()]))
        .collect()
}

/// The patch a revision stores: the whole template, replacing the owner's.
pub fn patch_of(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_default();
    if let Some(object) = template.as_object_mut() {
        object.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The template a revision restores.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(object) = template.as_object_mut() {
        object.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// What is asked of the history of one owner.
pub struct Owner<'a> {
    pub reference: OwnerReference,
    pub namespace: String,
    pub selector: &'a LabelSelector,
    pub template: &'a PodTemplateSpec,
    /// The revision's label carrying its hash (`controller.kubernetes.io/hash` for
    /// StatefulSets, `controller-revision-hash` for DaemonSets).
    pub hash_label: &'static str,
    pub collision_count: Option<i32>,
}

/// The owner's revisions (adopting orphans its selector matches), oldest first.
pub async fn claim(
    client: &kube::Client,
    store: &Store<ControllerRevision>,
    owner: &Owner<'_>,
) -> Result<Vec<Arc<ControllerRevision>>, kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &owner.namespace);
    let mut owned = Vec::new();
    for revision in store.state() {
        if revision.metadata.namespace.as_deref() != Some(owner.namespace.as_str()) {
            continue;
        }
        let controller = crate::pods::controller_of(revision.as_ref());
        match controller {
            Some(c) if c.uid == owner.reference.uid => owned.push(revision),
            Some(_) => {}
            None if labels_match(owner.selector, revision.metadata.labels.as_ref()) => {
                let patch = json!({"metadata": {"uid": revision.uid(), "ownerReferences": [owner.reference]}});
                match api
                    .patch(&revision.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(adopted) => owned.push(Arc::new(adopted)),
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                    Err(err) => return Err(err),
                }
            }
            None => {}
        }
    }
    owned.sort_by_key(|r| (r.revision, r.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    Ok(owned)
}

/// Why no update revision could be had.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Another revision holds the name this template hashes to: the owner's
    /// `collisionCount` must grow and the hash be taken again.
    #[error("the revision name {0} is taken by a different template")]
    Collision(String),
}

/// The revision for the owner's template now: an existing equal one (renumbered as the
/// newest if it is not), or a new one.
pub async fn update_revision(
    client: &kube::Client,
    owner: &Owner<'_>,
    revisions: &[Arc<ControllerRevision>],
) -> Result<Arc<ControllerRevision>, HistoryError> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &owner.namespace);
    let data = patch_of(owner.template);
    let next = revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let equal = revisions
        .iter()
        .rev()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data));
    if let Some(existing) = equal {
        if existing.revision == next - 1 {
            return Ok(Arc::clone(existing));
        }
        let patch = json!({"revision": next});
        let renumbered = api
            .patch(&existing.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Arc::new(renumbered));
    }
    let hash = hash_of(&data, owner.collision_count);
    let name = format!("{}-{hash}", owner.reference.name);
    let mut labels: BTreeMap<String, String> = owner
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(owner.hash_label.into(), hash.clone());
    let revision = ControllerRevision {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(owner.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![owner.reference.clone()]),
            ..Default::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: next,
    };
    match api.create(&PostParams::default(), &revision).await {
        Ok(created) => Ok(Arc::new(created)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Ours already (a cache behind our own write) or somebody else's template.
            let existing = api.get(&name).await?;
            let ours = existing
                .owner_references()
                .iter()
                .any(|o| o.uid == owner.reference.uid && o.controller == Some(true));
            if ours && existing.data.as_ref().map(|d| &d.0) == Some(&data) {
                Ok(Arc::new(existing))
            } else {
                Err(HistoryError::Collision(name))
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// Deletes the oldest revisions that are neither `live` (named) nor within `limit`.
pub async fn prune(
    client: &kube::Client,
    namespace: &str,
    revisions: &[Arc<ControllerRevision>],
    live: &HashSet<String>,
    limit: i32,
) -> Result<(), kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let dead: Vec<&Arc<ControllerRevision>> = revisions.iter().filter(|r| !live.contains(&r.name_any())).collect();
    let excess = dead.len().saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    for revision in dead.into_iter().take(excess) {
        crate::ignore_not_found(api.delete(&revision.name_any(), &DeleteParams::default()).await)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_restore_their_templates() {
        let template: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "mysql:5.6"}]}}))
        .unwrap();
        let data = patch_of(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let revision = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            ..Default::default()
        };
        assert_eq!(template_of(&revision), Some(template));
        assert_eq!(hash_of(&data, None), hash_of(&data, None));
        assert_ne!(hash_of(&data, None), hash_of(&data, Some(1)));
    }
}
