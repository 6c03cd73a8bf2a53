//! The Job controller (and TTL-after-finished), as upstream's: a Job runs pods from its
//! template until `completions` have succeeded (NonIndexed: any pods; Indexed: one per
//! index, `completedIndexes`, or until its `successPolicy` is met), at most `parallelism`
//! at once; failed pods are replaced after an exponential backoff (10 s doubling, at most 6
//! minutes) until `backoffLimit` failures (container restarts with restartPolicy
//! OnFailure) or, with `backoffLimitPerIndex`, each index until its own limit
//! (`failedIndexes`, `maxFailedIndexes`); a `podFailurePolicy` fails the Job (FailJob) or
//! the index (FailIndex) at a failure it matches and leaves failures its Ignore rule
//! matches uncounted; `activeDeadlineSeconds` and `suspend` stop it; the conditions are
//! upstream's (SuccessCriteriaMet then Complete, FailureTarget then Failed once no pod is
//! still terminating, Suspended). With `podReplacementPolicy: Failed` a pod being deleted
//! is replaced only once it has finished. A finished Job with `ttlSecondsAfterFinished` is
//! deleted, with its pods, once that time has passed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use k8s_openapi::api::batch::v1::{Job, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, SuccessPolicy};
use k8s_openapi::api::core::v1::{ContainerStatus, EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rkube_client::events::{Recorder, reference};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::expectations::Expectations;
use crate::pods::{controller_of, from_template, is_active, is_finished, is_ready};
use crate::shared::{PodEvent, SharedPods, handle_events};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, api_message, key_of, split_key};

const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The `spec.managedBy` that means this controller (as no value does).
const JOB_CONTROLLER: &str = "kubernetes.io/job-controller";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
const WORKERS: usize = 5;

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX))
        .and_then(|i| i.parse().ok())
}

/// "0-2,4,6,7", as upstream writes `completedIndexes` (a run of two is written as two).
pub fn index_ranges(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(match end - start {
            0 => start.to_string(),
            1 => format!("{start},{end}"),
            _ => format!("{start}-{end}"),
        });
    }
    parts.join(",")
}

/// The index intervals below `completions` that a field lists, as upstream's
/// `parseIndexesFromString` reads them: unreadable fragments are skipped.
pub fn parse_intervals(text: &str, completions: i32) -> Vec<(i32, i32)> {
    let mut intervals = Vec::new();
    for fragment in text.split(',').filter(|f| !f.is_empty()) {
        let mut parts = fragment.splitn(2, '-');
        let Some(Ok(first)) = parts.next().map(str::parse::<i32>) else {
            continue;
        };
        if first >= completions {
            break;
        }
        let last = match parts.next().map(str::parse::<i32>) {
            None => first,
            Some(Ok(last)) => last.min(completions - 1),
            Some(Err(_)) => continue,
        };
        if first >= 0 && last >= first {
            intervals.push((first, last));
        }
    }
    intervals
}

/// The indexes a status field lists. (A status lists indexes that pods reached, so the set
/// stays as small as the Job's work.)
pub fn parse_indexes(text: &str, completions: i32) -> BTreeSet<i32> {
    parse_intervals(text, completions)
        .into_iter()
        .flat_map(|(first, last)| first..=last)
        .collect()
}

/// Upstream's `matchSuccessPolicy`: the first rule the succeeded indexes meet, as upstream
/// words it ("Matched rules at index 0"). A rule with indexes is met when all of them (or
/// its count of them) succeeded; a rule with only a count when that many indexes did.
pub fn match_success_policy(
    policy: Option<&SuccessPolicy>,
    completions: i32,
    succeeded: &BTreeSet<i32>,
) -> Option<String> {
    let policy = policy?;
    if succeeded.is_empty() {
        return None;
    }
    policy.rules.iter().enumerate().find_map(|(index, rule)| {
        let met = match (&rule.succeeded_indexes, rule.succeeded_count) {
            (Some(indexes), count) => {
                // Counted interval by interval: a rule may name far more indexes than ran.
                let required = parse_intervals(indexes, completions);
                let wanted: i64 = required.iter().map(|(first, last)| i64::from(last - first) + 1).sum();
                let done: i64 = required
                    .iter()
                    .map(|(first, last)| i64::try_from(succeeded.range(first..=last).count()).unwrap_or(i64::MAX))
                    .sum();
                wanted > 0 && count.map_or(done == wanted, |n| done >= i64::from(n))
            }
            (None, Some(count)) => succeeded.len() >= usize::try_from(count).unwrap_or(0),
            (None, None) => false,
        };
        met.then(|| format!("Matched rules at index {index}"))
    })
}

const FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
const IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

fn annotation_count(pod: &Pod, key: &str) -> i32 {
    let value = pod.metadata.annotations.as_ref().and_then(|a| a.get(key));
    value.and_then(|v| v.parse().ok()).filter(|v| *v >= 0).unwrap_or(0)
}

/// The failure counts a replacement of `failed` carries (upstream's
/// `getNewIndexFailureCounts`): the failed pod's, with its own failure added.
fn next_failure_counts(failed: &Pod, judgement: &Judgement) -> (i32, i32) {
    let (counted, ignored) = (
        annotation_count(failed, FAILURE_COUNT),
        annotation_count(failed, IGNORED_FAILURE_COUNT),
    );
    if judgement.counts() {
        (counted.saturating_add(1), ignored)
    } else {
        (counted, ignored.saturating_add(1))
    }
}

/// Upstream's `isIndexFailed`: a failed pod fails its index when a FailIndex rule says so,
/// or when its counted failure is past the index's limit.
fn fails_index(pod: &Pod, judgement: &Judgement, limit_per_index: i32) -> bool {
    match judgement {
        Judgement::FailIndex => true,
        judgement => judgement.counts() && annotation_count(pod, FAILURE_COUNT) >= limit_per_index,
    }
}

/// The delay before replacing a pod after `failures` failures (upstream's pod backoff).
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let factor = 2u32
        .checked_pow(u32::try_from(failures - 1).unwrap_or(u32::MAX))
        .unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// What a pod failure policy makes of a failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Counted toward the backoff limits: no rule matched, or a Count rule did.
    Count,
    /// Not counted (an Ignore rule).
    Ignore,
    /// Fails the Job, with upstream's message.
    FailJob(String),
    /// Fails the pod's index at once (with `backoffLimitPerIndex`).
    FailIndex,
}

impl Judgement {
    fn counts(&self) -> bool {
        *self != Judgement::Ignore
    }
}

/// A pod's container statuses, its containers' then its init containers'.
fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.iter();
    let containers = status.clone().flat_map(|s| s.container_statuses.iter().flatten());
    containers.chain(status.flat_map(|s| s.init_container_statuses.iter().flatten()))
}

/// How long after `failure` (a finish time) a replacement waits out the backoff of
/// `failures` failures; `None` once it has passed.
fn backoff_left(failure: Option<Timestamp>, failures: i32, now: Timestamp) -> Option<Duration> {
    let ready_at = failure? + SignedDuration::try_from(backoff(failures)).unwrap_or_default();
    let left = (ready_at > now).then(|| ready_at.duration_since(now).as_secs().max(1))?;
    Some(Duration::from_secs(u64::try_from(left).unwrap_or(1)))
}

/// Upstream's `matchPodFailurePolicy`: the first rule matching a failed pod decides. Rules
/// with an action this controller does not know are skipped, as upstream asks of clients.
pub fn match_failure_policy(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Judgement {
    let Some(policy) = policy else {
        return Judgement::Count;
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(requirement) = &rule.on_exit_codes {
            container_statuses(pod)
                .find_map(|c| exit_code_matching(c, requirement))
                .map(|(container, code)| {
                    format!(
                        "Container {container} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}",
                        rule.action
                    )
                })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let conditions = status.and_then(|s| s.conditions.as_ref()).into_iter().flatten();
            conditions
                .filter(|c| patterns.iter().any(|p| p.type_ == c.type_ && p.status == c.status))
                .map(|c| {
                    format!(
                        "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                        c.type_, rule.action
                    )
                })
                .next()
        } else {
            None
        };
        let Some(message) = matched else { continue };
        match rule.action.as_str() {
            "Ignore" => return Judgement::Ignore,
            "Count" => return Judgement::Count,
            "FailJob" => return Judgement::FailJob(message),
            "FailIndex" => return Judgement::FailIndex,
            _ => {}
        }
    }
    Judgement::Count
}

/// When a pod finished: its containers' last termination, else its creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let containers = pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten());
    let finished = containers
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max();
    finished.or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Upstream's `pastBackoffLimitOnFailure`: with restartPolicy OnFailure, failures are
/// container restarts in the pods still pending or running, and enough of them fail the Job.
pub fn restarts_past_limit(job: &Job, pods: &[&Pod]) -> bool {
    let spec = job.spec.as_ref();
    let restart = spec.and_then(|s| s.template.spec.as_ref()?.restart_policy.as_deref());
    if restart != Some("OnFailure") {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), Some("Pending" | "Running")))
        .flat_map(|p| container_statuses(p))
        .map(|c| c.restart_count)
        .sum();
    match spec.and_then(|s| s.backoff_limit).unwrap_or(6) {
        0 => restarts > 0,
        limit => restarts >= limit,
    }
}

/// A terminated container whose non-zero exit code meets the requirement: its name and code.
fn exit_code_matching<'a>(
    container: &'a ContainerStatus,
    requirement: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(&'a str, i32)> {
    let code = container.state.as_ref()?.terminated.as_ref()?.exit_code;
    let named = requirement.container_name.as_ref().is_none_or(|n| *n == container.name);
    let listed = requirement.values.contains(&code);
    let meets = match requirement.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    };
    (named && code != 0 && meets).then_some((container.name.as_str(), code))
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastProbeTime": rkube_client::now_text(), "lastTransitionTime": rkube_client::now_text()})
}

fn has_condition(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn finished(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    let done = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    done.last_transition_time.as_ref().map(|t| t.0)
}

/// A Job's pods as one sync counts them.
struct Counts<'a> {
    /// Running or pending, not being deleted.
    active: &'a [&'a Pod],
    /// Being deleted and not yet finished.
    terminating: &'a [&'a Pod],
    succeeded: i32,
    /// Failures counted toward the backoff limit.
    failed: i32,
    /// Indexed: the indexes succeeded.
    completed: &'a BTreeSet<i32>,
    /// With a backoff limit per index: the indexes failed.
    failed_indexes: Option<&'a BTreeSet<i32>>,
    /// With a backoff limit per index: each index's latest failed pod.
    last_failures: &'a BTreeMap<i32, (&'a Pod, &'a Judgement)>,
}

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    jobs: Store<Job>,
    pods: SharedPods,
    expectations: Mutex<Expectations>,
    seen: Mutex<HashSet<String>>,
}

fn controller_ref(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

impl Controller {
    async fn event(&self, job: &Job, kind: &str, reason: &str, message: &str) {
        self.recorder.emit(&reference(job), kind, reason, message).await;
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(job) = self.jobs.get(&ObjectRef::new(name).within(namespace)) else {
            self.expectations.lock().await.forget(key);
            return Ok(None);
        };
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let uid = job.uid().unwrap_or_default();
        let all = self.pods.controlled_by(&uid);
        let owned: Vec<&Pod> = all.iter().map(AsRef::as_ref).collect();
        // TTL after finished.
        if let Some(done) = finished(&job) {
            let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
                return Ok(None);
            };
            let expires = done + SignedDuration::from_secs(i64::from(ttl));
            let now = Timestamp::now();
            if expires > now {
                let left = expires.duration_since(now).as_secs().max(1);
                return Ok(Some(Duration::from_secs(u64::try_from(left).unwrap_or(1))));
            }
            let params = DeleteParams::background();
            return match jobs.delete(name, &params).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
                Err(source) => Err(ControllerError::api(key, "deleting a finished job", source)),
            };
        }
        // A Job another controller manages (spec.managedBy, as Kueue's MultiKueue sets it)
        // is left to it, but for its time to live.
        let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
        if managed_by.is_some_and(|m| m != JOB_CONTROLLER) {
            return Ok(None);
        }
        if !self.expectations.lock().await.satisfied(key) {
            return Ok(None);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let status = job.status.clone().unwrap_or_default();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_active(p)).collect();
        let terminating: Vec<&Pod> = owned
            .iter()
            .copied()
            .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_some())
            .collect();
        let succeeded_pods: Vec<&Pod> = owned
            .iter()
            .copied()
            .filter(|p| phase(p) == Some("Succeeded"))
            .collect();
        // Oldest first, so that the failure a FailJob rule reports is the first one.
        let mut failed_pods: Vec<&Pod> = owned.iter().copied().filter(|p| phase(p) == Some("Failed")).collect();
        failed_pods.sort_by_key(|p| (p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.name_any()));
        let policy = spec.pod_failure_policy.as_ref();
        let judged: Vec<(&Pod, Judgement)> = failed_pods
            .iter()
            .map(|p| (*p, match_failure_policy(policy, p)))
            .collect();
        let counted = judged.iter().filter(|(_, judgement)| judgement.counts()).count();
        let failed = status.failed.unwrap_or(0).max(i32::try_from(counted).unwrap_or(0));
        let fail_job = judged.iter().find_map(|(_, judgement)| match judgement {
            Judgement::FailJob(message) => Some(message.clone()),
            _ => None,
        });
        let total = spec.completions.unwrap_or(0);
        // Indexes succeeded or failed stay so in the status, whatever became of their pods.
        let mut completed = BTreeSet::new();
        if indexed {
            completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default(), total);
            completed.extend(succeeded_pods.iter().filter_map(|p| index_of(p)).filter(|i| *i < total));
        }
        let per_index = spec.backoff_limit_per_index.filter(|_| indexed);
        let failed_indexes: Option<BTreeSet<i32>> = per_index.map(|limit| {
            let mut indexes = parse_indexes(status.failed_indexes.as_deref().unwrap_or_default(), total);
            let newly = judged
                .iter()
                .filter(|(pod, judgement)| fails_index(pod, judgement, limit))
                .filter_map(|(pod, _)| index_of(pod))
                .filter(|i| *i < total && !completed.contains(i));
            indexes.extend(newly);
            indexes
        });
        // Each index's latest failure: its replacement carries its counts on and waits
        // out its backoff.
        let mut last_failures: BTreeMap<i32, (&Pod, &Judgement)> = BTreeMap::new();
        if per_index.is_some() {
            for (pod, judgement) in &judged {
                let Some(index) = index_of(pod) else { continue };
                let absolute =
                    |p: &Pod| annotation_count(p, FAILURE_COUNT) + annotation_count(p, IGNORED_FAILURE_COUNT);
                let later = last_failures
                    .get(&index)
                    .is_none_or(|(kept, _)| absolute(kept) <= absolute(pod) && finished_at(kept) <= finished_at(pod));
                if later {
                    last_failures.insert(index, (pod, judgement));
                }
            }
        }
        let succeeded = if indexed {
            i32::try_from(completed.len()).unwrap_or(0)
        } else {
            status
                .succeeded
                .unwrap_or(0)
                .max(i32::try_from(succeeded_pods.len()).unwrap_or(0))
        };
        let counts = Counts {
            active: &active,
            terminating: &terminating,
            succeeded,
            failed,
            completed: &completed,
            failed_indexes: failed_indexes.as_ref(),
            last_failures: &last_failures,
        };
        let parallelism = spec.parallelism.unwrap_or(1);
        let completions = spec.completions;
        let suspended = spec.suspend.unwrap_or(false);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let mut conditions: Vec<Value> = status
            .conditions
            .iter()
            .flatten()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let set = |conditions: &mut Vec<Value>, new: Value| {
            let kind = new["type"].clone();
            match conditions.iter_mut().find(|c| c["type"] == kind) {
                Some(existing) if existing["status"] == new["status"] => {}
                Some(existing) => *existing = new,
                None => conditions.push(new),
            }
        };
        let start = status.start_time.as_ref().map(|t| t.0);
        let deadline_passed = spec.active_deadline_seconds.zip(start).is_some_and(|(seconds, start)| {
            !suspended && start + SignedDuration::from_secs(seconds) <= Timestamp::now()
        });
        // A decision once made stays (its pods may be gone by the next look), as upstream
        // keeps the FailureTarget and SuccessCriteriaMet conditions.
        let decided = |kind: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == kind && c.status == "True")
                .map(|c| {
                    (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                })
        };
        let reason = |reason: &str, message: &str| Some((reason.to_string(), message.to_string()));
        let failed_indexes_count = failed_indexes.as_ref().map_or(0, BTreeSet::len);
        // Once its success criteria are met a Job is not failed by its pods' endings (those
        // it stops fail too), as upstream evaluates failures only before.
        let success_met = decided("SuccessCriteriaMet");
        let failure: Option<(String, String)> = if success_met.is_some() {
            None
        } else if let Some(decided) = decided("FailureTarget") {
            Some(decided)
        } else if let Some(message) = fail_job {
            Some(("PodFailurePolicy".into(), message))
        } else if failed > backoff_limit || restarts_past_limit(&job, &owned) {
            reason("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        } else if deadline_passed {
            reason("DeadlineExceeded", "Job was active longer than specified deadline")
        } else if spec
            .max_failed_indexes
            .is_some_and(|max| failed_indexes_count > usize::try_from(max).unwrap_or(0))
        {
            reason(
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            )
        } else if failed_indexes_count > 0
            && failed_indexes_count + completed.len() >= usize::try_from(total).unwrap_or(0)
        {
            reason("FailedIndexes", "Job has failed indexes")
        } else {
            None
        };
        let complete = match completions {
            Some(n) => succeeded >= n,
            None => succeeded > 0 && active.is_empty(),
        };
        let success: Option<(String, String)> = success_met
            .or_else(|| {
                let matched = indexed.then(|| match_success_policy(spec.success_policy.as_ref(), total, &completed));
                matched.flatten().map(|message| ("SuccessPolicy".into(), message))
            })
            .or_else(|| {
                complete
                    .then(|| reason("CompletionsReached", "Reached expected number of succeeded pods"))
                    .flatten()
            });
        let mut terminal: Option<(String, String)> = None;
        // Upstream marks a Job finished only once none of its pods is still terminating.
        let settled = |active: &[&Pod]| active.is_empty() && terminating.is_empty();
        let mut requeue_for_backoff = None;
        if let Some((reason, message)) = failure {
            self.delete_pods(key, &pods_api, &active).await?;
            set(&mut conditions, condition("FailureTarget", "True", &reason, &message));
            if settled(&active) {
                set(&mut conditions, condition("Failed", "True", &reason, &message));
                terminal = Some((reason, message));
            }
        } else if let Some((reason, message)) = success {
            set(
                &mut conditions,
                condition("SuccessCriteriaMet", "True", &reason, &message),
            );
            self.delete_pods(key, &pods_api, &active).await?;
            if settled(&active) {
                set(&mut conditions, condition("Complete", "True", &reason, &message));
                terminal = Some(("Completed".into(), "Job completed".into()));
            }
        } else if suspended {
            self.delete_pods(key, &pods_api, &active).await?;
            set(
                &mut conditions,
                condition("Suspended", "True", "JobSuspended", "Job suspended"),
            );
        } else {
            if has_condition(&job, "Suspended") {
                set(
                    &mut conditions,
                    condition("Suspended", "False", "JobResumed", "Job resumed"),
                );
            }
            // Replacements wait out the backoff from the last failure (with a limit per
            // index, each index its own). Every failure delays the next pod, those a policy
            // ignores too.
            let failures = failed.max(i32::try_from(failed_pods.len()).unwrap_or(0));
            let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
            let left = backoff_left(last_failure.filter(|_| per_index.is_none()), failures, Timestamp::now());
            if let Some(left) = left {
                self.write_status(key, &jobs, &job, &counts, indexed, conditions, None)
                    .await?;
                return Ok(Some(left));
            }
            requeue_for_backoff = self
                .manage(&job, key, &pods_api, &counts, indexed, parallelism, completions)
                .await?;
        }
        if let Some((reason, message)) = &terminal {
            let kind = if reason == "Completed" { "Normal" } else { "Warning" };
            self.event(&job, kind, reason, message).await;
        }
        let terminal = terminal.as_ref().map(|(reason, _)| reason.as_str());
        self.write_status(key, &jobs, &job, &counts, indexed, conditions, terminal)
            .await?;
        let requeue = spec
            .active_deadline_seconds
            .zip(start)
            .filter(|_| terminal.is_none() && !suspended)
            .map(|(seconds, start)| {
                let left = (start + SignedDuration::from_secs(seconds))
                    .duration_since(Timestamp::now())
                    .as_secs();
                Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1))
            });
        Ok(match (requeue, requeue_for_backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn delete_pods(&self, key: &str, api: &Api<Pod>, pods: &[&Pod]) -> Result<(), ControllerError> {
        if pods.is_empty() {
            return Ok(());
        }
        self.expectations
            .lock()
            .await
            .expect_deletions(key, pods.iter().map(|p| key_of(*p)));
        let params = DeleteParams::default();
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        let results = join_all(names.iter().map(|name| api.delete(name, &params))).await;
        for (pod, result) in pods.iter().zip(results) {
            if let Err(err) = result {
                self.expectations.lock().await.deletion_observed(key, &key_of(*pod));
                if !matches!(&err, kube::Error::Api(s) if s.code == 404) {
                    return Err(ControllerError::api(key, "deleting pods", err));
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn manage(
        &self,
        job: &Job,
        key: &str,
        api: &Api<Pod>,
        counts: &Counts<'_>,
        indexed: bool,
        parallelism: i32,
        completions: Option<i32>,
    ) -> Result<Option<Duration>, ControllerError> {
        let Some(template) = job.spec.as_ref().map(|s| &s.template) else {
            return Ok(None);
        };
        let (active, succeeded) = (counts.active, counts.succeeded);
        let active_count = i32::try_from(active.len()).unwrap_or(0);
        // podReplacementPolicy Failed: a pod being deleted is replaced once it has finished.
        let replace_only_failed = job.spec.as_ref().and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed");
        let waiting: &[&Pod] = if replace_only_failed { counts.terminating } else { &[] };
        let wanted_active = match completions {
            _ if indexed => {
                let total = completions.unwrap_or(0);
                parallelism.min(total - succeeded)
            }
            Some(total) => parallelism.min(total - succeeded),
            None if succeeded > 0 => 0,
            None => parallelism,
        }
        .max(0);
        if active_count > wanted_active {
            // Newest first, as upstream removes extra pods.
            let mut extra: Vec<&Pod> = active.to_vec();
            extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
            let extra = &extra[..usize::try_from(active_count - wanted_active).unwrap_or(0)];
            self.delete_pods(key, api, extra).await?;
            return Ok(None);
        }
        let waiting_count = i32::try_from(waiting.len()).unwrap_or(0);
        let missing = usize::try_from(wanted_active - active_count - waiting_count).unwrap_or(0);
        if missing == 0 {
            return Ok(None);
        }
        // Indexed: the lowest indexes neither completed, failed nor running, each once its
        // own backoff (with a limit per index) has passed.
        let running: BTreeSet<i32> = active.iter().chain(waiting).filter_map(|p| index_of(p)).collect();
        let mut requeue: Option<Duration> = None;
        let now = Timestamp::now();
        let indexes: Vec<Option<i32>> = if indexed {
            let failed = counts.failed_indexes;
            let pending = (0..completions.unwrap_or(0)).filter(|i| {
                !counts.completed.contains(i) && !running.contains(i) && !failed.is_some_and(|f| f.contains(i))
            });
            let mut ready = Vec::new();
            for index in pending {
                if ready.len() == missing {
                    break;
                }
                if let Some((pod, judgement)) = counts.last_failures.get(&index) {
                    let (counted, ignored) = next_failure_counts(pod, judgement);
                    if let Some(left) = backoff_left(finished_at(pod), counted.saturating_add(ignored), now) {
                        requeue = Some(requeue.map_or(left, |r| r.min(left)));
                        continue;
                    }
                }
                ready.push(Some(index));
            }
            ready
        } else {
            vec![None; missing]
        };
        // Failed indexes are counted exactly when there is a limit per index.
        let per_index = counts.failed_indexes.is_some();
        self.expectations.lock().await.expect_creations(key, indexes.len());
        let params = PostParams::default();
        let pods: Vec<Pod> = indexes
            .iter()
            .map(|index| {
                let owner_name = match index {
                    Some(i) => format!("{}-{i}", job.name_any()),
                    None => job.name_any(),
                };
                let mut pod = from_template(template, &owner_name, controller_ref(job));
                if let Some(i) = index {
                    pod.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(INDEX.into(), i.to_string());
                    pod.metadata
                        .labels
                        .get_or_insert_default()
                        .insert(INDEX.into(), i.to_string());
                    if per_index {
                        // Upstream's index failure counts, carried from the pod replaced.
                        let (counted, ignored) = counts
                            .last_failures
                            .get(i)
                            .map_or((0, 0), |(pod, judgement)| next_failure_counts(pod, judgement));
                        let annotations = pod.metadata.annotations.get_or_insert_default();
                        annotations.insert(FAILURE_COUNT.into(), counted.to_string());
                        if ignored > 0 {
                            annotations.insert(IGNORED_FAILURE_COUNT.into(), ignored.to_string());
                        }
                    }
                    if let Some(spec) = pod.spec.as_mut() {
                        spec.hostname = Some(owner_name.clone());
                        // Upstream's variable, read from the pod's index label, in every
                        // container that does not set it itself.
                        let containers = spec
                            .init_containers
                            .iter_mut()
                            .flatten()
                            .chain(spec.containers.iter_mut());
                        for container in containers {
                            let env = container.env.get_or_insert_default();
                            if env.iter().any(|e| e.name == INDEX_ENV) {
                                continue;
                            }
                            env.push(EnvVar {
                                name: INDEX_ENV.into(),
                                value: None,
                                value_from: Some(EnvVarSource {
                                    field_ref: Some(ObjectFieldSelector {
                                        api_version: Some("v1".into()),
                                        field_path: format!("metadata.labels['{INDEX}']"),
                                    }),
                                    ..EnvVarSource::default()
                                }),
                            });
                        }
                    }
                }
                pod
            })
            .collect();
        let results = join_all(pods.iter().map(|p| api.create(&params, p))).await;
        for result in results {
            match result {
                Ok(created) => {
                    let message = format!("Created pod: {}", created.name_any());
                    self.event(job, "Normal", "SuccessfulCreate", &message).await;
                }
                Err(err) => {
                    self.expectations.lock().await.creation_observed(key);
                    let message = format!("Error creating: {}", api_message(&err));
                    self.event(job, "Warning", "FailedCreate", &message).await;
                    return Err(ControllerError::api(key, "creating pods", err));
                }
            }
        }
        Ok(requeue)
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_status(
        &self,
        key: &str,
        api: &Api<Job>,
        job: &Job,
        counts: &Counts<'_>,
        indexed: bool,
        conditions: Vec<Value>,
        terminal: Option<&str>,
    ) -> Result<(), ControllerError> {
        let (active, succeeded, failed) = (counts.active, counts.succeeded, counts.failed);
        let previous = job.status.clone().unwrap_or_default();
        let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        let omit_zero = |n: usize| if n == 0 { Value::Null } else { json!(n) };
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let start = match &previous.start_time {
            Some(t) => json!(t),
            None if !suspended => json!(rkube_client::now_text()),
            None => Value::Null,
        };
        let mut status = json!({
            "active": omit_zero(active.len()),
            "ready": ready,
            "succeeded": omit_zero(usize::try_from(succeeded).unwrap_or(0)),
            "failed": omit_zero(usize::try_from(failed).unwrap_or(0)),
            "terminating": counts.terminating.len(),
            "startTime": start,
            "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
            "uncountedTerminatedPods": {},
        });
        if indexed {
            status["completedIndexes"] = json!(index_ranges(counts.completed));
            if let Some(failed) = counts.failed_indexes {
                status["failedIndexes"] = json!(index_ranges(failed));
            }
        }
        if terminal == Some("Completed") && previous.completion_time.is_none() {
            status["completionTime"] = json!(rkube_client::now_text());
        }
        let current = serde_json::to_value(&previous).unwrap_or_default();
        let changed = status.as_object().into_iter().flatten().any(|(field, value)| {
            let have = current.get(field).unwrap_or(&Value::Null);
            if field == "conditions" {
                let strip = |v: &Value| -> Vec<(Value, Value)> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| (c["type"].clone(), c["status"].clone()))
                        .collect()
                };
                return strip(have) != strip(value);
            }
            match field.as_str() {
                // Always empty: pods are counted as they are seen.
                "uncountedTerminatedPods" => false,
                "ready" | "terminating" => have.as_i64().unwrap_or(0) != value.as_i64().unwrap_or(0),
                _ => have != value,
            }
        });
        if changed {
            api.patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .map_err(|source| ControllerError::api(key, "updating the status", source))?;
        }
        Ok(())
    }

    async fn pod_event(&self, pod: &Pod, deleted: bool) {
        let Some(owner) = controller_of(pod).filter(|o| o.kind == "Job") else {
            return;
        };
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name);
        let uid = pod.uid().unwrap_or_default();
        let first_sight = !deleted && self.seen.lock().await.insert(uid.clone());
        if deleted {
            self.seen.lock().await.remove(&uid);
        }
        {
            let mut expectations = self.expectations.lock().await;
            if deleted || pod.metadata.deletion_timestamp.is_some() {
                expectations.deletion_observed(&key, &key_of(pod));
            } else if first_sight {
                expectations.creation_observed(&key);
            }
        }
        self.queue.add(&key).await;
    }
}

/// Runs the controller until the future is dropped.
pub async fn run(client: kube::Client, pods: SharedPods, pod_events: UnboundedReceiver<PodEvent>) {
    let (jobs, job_writer) = reflector::store::<Job>();
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "job-controller"),
        client: client.clone(),
        queue: WorkQueue::new(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        expectations: Mutex::new(Expectations::default()),
        seen: Mutex::new(HashSet::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    {
        let controller = Arc::clone(&controller);
        let events = watcher(Api::<Job>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim)
            .reflect(job_writer);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                        controller.queue.add(&key_of(&job)).await;
                    }
                    Ok(watcher::Event::Delete(job)) => controller.expectations.lock().await.forget(&key_of(&job)),
                    _ => {}
                }
            }
        });
    }
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(handle_events(pod_events, move |pod, deleted| {
            let controller = Arc::clone(&controller);
            async move { controller.pod_event(&pod, deleted).await }
        }));
    }
    jobs.wait_until_ready().await.ok();
    pods.wait_until_ready().await;
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &controller.queue.clone(), WORKERS, "job", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_policies_judge_a_failed_pod_by_its_first_matching_rule() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "Unknown", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3, 42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [5]}},
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [5]}},
        ]}))
        .unwrap();
        let pod = |containers: Value, init: Value, conditions: Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Failed",
                "containerStatuses": containers, "initContainerStatuses": init, "conditions": conditions}}),
            )
            .unwrap()
        };
        let exited = |name: &str, code: i32| {
            json!({"name": name, "image": "x", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": code}}})
        };
        let judge = |p: &Pod| match_failure_policy(Some(&policy), p);

        let fatal = pod(json!([exited("side", 0), exited("main", 42)]), json!([]), json!([]));
        assert_eq!(
            judge(&fatal),
            Judgement::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1".into()
            )
        );
        // The rule names another container; the unknown action's rule is skipped.
        let other = pod(json!([exited("side", 3)]), json!([]), json!([]));
        assert_eq!(judge(&other), Judgement::Count, "Count by NotIn");
        let evicted = pod(
            json!([exited("main", 137)]),
            json!([]),
            json!([{"type": "DisruptionTarget", "status": "True"}]),
        );
        assert_eq!(judge(&evicted), Judgement::Ignore, "the condition rule comes first");
        // Init containers are looked at too, and exit code 0 never matches.
        let init = pod(json!([]), json!([exited("main", 3)]), json!([]));
        assert!(matches!(judge(&init), Judgement::FailJob(_)));
        let ignored = pod(json!([exited("main", 5)]), json!([]), json!([]));
        assert_eq!(
            judge(&ignored),
            Judgement::Ignore,
            "NotIn 5 does not match 5; In 5 does"
        );
        let clean = pod(json!([exited("main", 0)]), json!([]), json!([]));
        assert_eq!(judge(&clean), Judgement::Count, "no rule matched: counted");
        assert_eq!(match_failure_policy(None, &fatal), Judgement::Count);
    }

    #[test]
    fn container_restarts_count_as_failures_for_on_failure_pods() {
        let job = |restart: &str, limit: i32| -> Job {
            serde_json::from_value(json!({"spec": {"backoffLimit": limit, "template": {"spec": {
                "restartPolicy": restart, "containers": [{"name": "main", "image": "x"}]}}}}))
            .unwrap()
        };
        let pod = |phase: &str, restarts: i32| -> Pod {
            serde_json::from_value(json!({"status": {"phase": phase, "containerStatuses": [{"name": "main",
                "image": "x", "imageID": "", "ready": false, "restartCount": restarts}],
                "initContainerStatuses": [{"name": "setup", "image": "x", "imageID": "", "ready": true, "restartCount": 1}]}}))
            .unwrap()
        };
        let (running, finished) = (pod("Running", 2), pod("Failed", 9));
        assert!(
            restarts_past_limit(&job("OnFailure", 3), &[&running, &finished]),
            "2 + 1 init restarts"
        );
        assert!(
            !restarts_past_limit(&job("OnFailure", 4), &[&running, &finished]),
            "finished pods' restarts left out"
        );
        assert!(!restarts_past_limit(&job("Never", 1), &[&running]));
        assert!(
            restarts_past_limit(&job("OnFailure", 0), &[&pod("Pending", 0)]),
            "the init restart"
        );
    }

    #[test]
    fn completed_indexes_read_as_upstream() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(index_ranges(&set), "0-2,4,6,7");
        assert_eq!(index_ranges(&BTreeSet::new()), "");
        assert_eq!(parse_indexes("0-2,4,6,7", 10), set);
        assert_eq!(
            parse_indexes("1,x,3-20", 5),
            [1, 3, 4].into(),
            "unreadable parts skipped, capped"
        );
    }

    #[test]
    fn success_policies_match_as_upstream() {
        let policy: SuccessPolicy = serde_json::from_value(json!({"rules": [
            {"succeededIndexes": "0,2-4"},
            {"succeededIndexes": "5-9", "succeededCount": 2},
            {"succeededCount": 6},
        ]}))
        .unwrap();
        let matched = |done: &[i32]| match_success_policy(Some(&policy), 10, &done.iter().copied().collect());
        assert_eq!(matched(&[0, 2, 3]), None);
        assert_eq!(matched(&[0, 2, 3, 4]).as_deref(), Some("Matched rules at index 0"));
        assert_eq!(matched(&[1, 5, 9]).as_deref(), Some("Matched rules at index 1"));
        assert_eq!(
            matched(&[0, 1, 2, 3, 5, 6]).as_deref(),
            Some("Matched rules at index 1")
        );
        assert_eq!(
            matched(&[0, 1, 2, 3, 6, 8]).as_deref(),
            Some("Matched rules at index 1")
        );
        assert_eq!(
            matched(&[0, 1, 2, 3, 6, 7]).as_deref(),
            Some("Matched rules at index 1")
        );
        assert_eq!(matched(&[0, 1, 3, 4, 5]), None, "2 missing, one of 5-9, five in all");
        assert_eq!(matched(&[]), None);
        assert_eq!(match_success_policy(None, 10, &[1].into()), None);
    }

    #[test]
    fn indexes_fail_past_their_limit_or_by_a_fail_index_rule() {
        let pod = |counted: &str, ignored: Option<&str>| -> Pod {
            let mut annotations = json!({FAILURE_COUNT: counted});
            if let Some(ignored) = ignored {
                annotations[IGNORED_FAILURE_COUNT] = json!(ignored);
            }
            serde_json::from_value(json!({"metadata": {"annotations": annotations}, "status": {"phase": "Failed"}}))
                .unwrap()
        };
        // backoffLimitPerIndex 1: a first failure is retried, a second fails the index.
        assert!(!fails_index(&pod("0", None), &Judgement::Count, 1));
        assert!(fails_index(&pod("1", None), &Judgement::Count, 1));
        assert!(
            !fails_index(&pod("5", None), &Judgement::Ignore, 1),
            "ignored failures never fail it"
        );
        assert!(fails_index(&pod("0", None), &Judgement::FailIndex, 1));
        assert!(
            !fails_index(&pod("junk", None), &Judgement::Count, 1),
            "an unreadable count is 0"
        );
        assert_eq!(next_failure_counts(&pod("1", Some("2")), &Judgement::Count), (2, 2));
        assert_eq!(next_failure_counts(&pod("1", None), &Judgement::Ignore), (1, 1));
    }

    #[test]
    fn failures_back_off_exponentially() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), BACKOFF_MAX);
    }
}
