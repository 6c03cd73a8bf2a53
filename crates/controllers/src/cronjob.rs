//! The CronJob controller, as upstream's (v2): at each scheduled time (in `timeZone`) a
//! Job named `<cronjob>-<minutes since the epoch>` is created from the template, unless
//! `concurrencyPolicy: Forbid` and one still runs (`Replace` deletes it first) or the time
//! is older than `startingDeadlineSeconds`; only the most recent missed time runs, and more
//! than 100 missed times are reported; finished Jobs beyond the history limits are deleted;
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime` follow the Jobs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rkube_client::events::{Recorder, reference};
use serde_json::{Value, json};

use crate::cron::Schedule;
use crate::workqueue::WorkQueue;
use crate::{ControllerError, api_message, key_of, split_key};

const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
const TOO_MANY_MISSED: usize = 100;
const WORKERS: usize = 5;

fn finished(job: &Job) -> Option<(&str, Option<Timestamp>)> {
    let condition = job
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    Some((
        condition.type_.as_str(),
        condition.last_transition_time.as_ref().map(|t| t.0),
    ))
}

/// The scheduled times in (earliest, now]: (the most recent, how many, counting no further
/// than one past `TOO_MANY_MISSED`).
pub fn missed(schedule: &Schedule, zone: &TimeZone, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
    let last_between = |from: Timestamp| {
        let mut last = None;
        let mut t = from;
        while let Some(next) = schedule.next_after(t, zone).filter(|n| *n <= now) {
            last = Some(next);
            t = next;
        }
        last
    };
    let mut last = None;
    let mut count = 0;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t, zone).filter(|n| *n <= now) {
        last = Some(next);
        count += 1;
        t = next;
        if count > TOO_MANY_MISSED {
            // Too many to walk: the most recent one is found from windows ending now,
            // widening until one holds a scheduled time (one exists: `next` does).
            let windows = [1, 24, 24 * 31, 24 * 366].map(jiff::SignedDuration::from_hours);
            last = windows
                .iter()
                .find_map(|w| last_between((now - *w).max(t)))
                .or(Some(next));
            break;
        }
    }
    (last, count)
}

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
}

impl Controller {
    async fn event(&self, cj: &CronJob, kind: &str, reason: &str, message: &str) {
        self.recorder.emit(&reference(cj), kind, reason, message).await;
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(cj) = self.cronjobs.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        let uid = cj.uid().unwrap_or_default();
        let jobs_api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let cronjobs: Api<CronJob> = Api::namespaced(self.client.clone(), namespace);
        let mut children: Vec<Arc<Job>> = self
            .jobs
            .state()
            .into_iter()
            .filter(|j| j.metadata.namespace.as_deref() == Some(namespace))
            .filter(|j| {
                j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
            .collect();
        children.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let spec = cj.spec.clone().unwrap_or_default();
        let previous = cj.status.clone().unwrap_or_default();
        let active: Vec<&Arc<Job>> = children.iter().filter(|j| finished(j).is_none()).collect();
        let last_success = children
            .iter()
            .filter_map(|j| match finished(j) {
                Some(("Complete", at)) => j
                    .status
                    .as_ref()
                    .and_then(|s| s.completion_time.as_ref().map(|t| t.0))
                    .or(at),
                _ => None,
            })
            .max();
        let mut last_schedule = previous.last_schedule_time.as_ref().map(|t| t.0);
        let mut active_refs: Vec<Value> = active
            .iter()
            .map(|j| {
                json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": namespace, "name": j.name_any(),
                             "uid": j.uid(), "resourceVersion": j.resource_version()})
            })
            .collect();
        // History limits.
        self.clean_up(
            &jobs_api,
            &children,
            spec.successful_jobs_history_limit.unwrap_or(3),
            "Complete",
        )
        .await?;
        self.clean_up(
            &jobs_api,
            &children,
            spec.failed_jobs_history_limit.unwrap_or(1),
            "Failed",
        )
        .await?;
        let zone = match spec.time_zone.as_deref() {
            Some(name) => match TimeZone::get(name) {
                Ok(zone) => zone,
                Err(_) => {
                    self.event(
                        &cj,
                        "Warning",
                        "UnknownTimeZone",
                        &format!("invalid timeZone: {name:?}"),
                    )
                    .await;
                    return Ok(None);
                }
            },
            None => TimeZone::UTC,
        };
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(schedule) => schedule,
            Err(err) => {
                let message = format!("unparseable schedule: {:?} : {err}", spec.schedule);
                self.event(&cj, "Warning", "UnparseableSchedule", &message).await;
                return Ok(None);
            }
        };
        let now = Timestamp::now();
        let mut requeue = schedule
            .next_after(now, &zone)
            .map(|next| Duration::from_millis(u64::try_from(next.duration_since(now).as_millis()).unwrap_or(0) + 100));
        if !spec.suspend.unwrap_or(false) {
            let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
            let mut earliest = last_schedule.unwrap_or(created);
            if let Some(deadline) = spec.starting_deadline_seconds {
                let limit = now - jiff::SignedDuration::from_secs(deadline);
                if limit > earliest {
                    earliest = limit;
                }
            }
            let (scheduled, count) = missed(&schedule, &zone, earliest, now);
            if count > TOO_MANY_MISSED {
                let message = format!(
                    "too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
                );
                self.event(&cj, "Warning", "TooManyMissedTimes", &message).await;
            }
            if let Some(scheduled) = scheduled {
                let too_late = spec
                    .starting_deadline_seconds
                    .is_some_and(|d| scheduled + jiff::SignedDuration::from_secs(d) < now);
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if too_late {
                    let message = format!(
                        "Missed scheduled time to start a job: {}",
                        scheduled.to_zoned(zone.clone())
                    );
                    self.event(&cj, "Warning", "MissSchedule", &message).await;
                } else if policy == "Forbid" && !active.is_empty() {
                    // Waits for the running one; tried again at the next time.
                } else {
                    if policy == "Replace" {
                        for job in &active {
                            match jobs_api.delete(&job.name_any(), &DeleteParams::background()).await {
                                Ok(_) => {
                                    self.event(
                                        &cj,
                                        "Normal",
                                        "SuccessfulDelete",
                                        &format!("Deleted job {}", job.name_any()),
                                    )
                                    .await;
                                }
                                Err(kube::Error::Api(status)) if status.code == 404 => {}
                                Err(source) => return Err(ControllerError::api(key, "replacing a job", source)),
                            }
                        }
                        active_refs.clear();
                    }
                    let job = self.job_for(&cj, scheduled, &zone)?;
                    match jobs_api.create(&PostParams::default(), &job).await {
                        Ok(created) => {
                            self.event(
                                &cj,
                                "Normal",
                                "SuccessfulCreate",
                                &format!("Created job {}", created.name_any()),
                            )
                            .await;
                            active_refs.push(json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": namespace,
                                "name": created.name_any(), "uid": created.uid(), "resourceVersion": created.resource_version()}));
                        }
                        // Created before (by this controller): nothing more to do.
                        Err(kube::Error::Api(status)) if status.code == 409 => {}
                        Err(err) => {
                            let message = format!("Error creating job: {}", api_message(&err));
                            self.event(&cj, "Warning", "FailedCreate", &message).await;
                            return Err(ControllerError::api(key, "creating a job", err));
                        }
                    }
                    last_schedule = Some(scheduled);
                }
            }
        } else {
            requeue = None;
        }
        let time = |t: Option<Timestamp>| t.map(|t| json!(rkube_client::api_time(t))).unwrap_or(Value::Null);
        let status = json!({"active": if active_refs.is_empty() { Value::Null } else { json!(active_refs) },
                            "lastScheduleTime": time(last_schedule),
                            "lastSuccessfulTime": time(last_success.or(previous.last_successful_time.as_ref().map(|t| t.0)))});
        let current = serde_json::to_value(&previous).unwrap_or_default();
        let names =
            |v: &Value| -> Vec<Value> { v.as_array().into_iter().flatten().map(|r| r["name"].clone()).collect() };
        let changed = names(current.get("active").unwrap_or(&Value::Null)) != names(&status["active"])
            || current.get("lastScheduleTime").unwrap_or(&Value::Null) != &status["lastScheduleTime"]
            || current.get("lastSuccessfulTime").unwrap_or(&Value::Null) != &status["lastSuccessfulTime"];
        if changed {
            cronjobs
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                .await
                .map_err(|source| ControllerError::api(key, "updating the status", source))?;
        }
        Ok(requeue)
    }

    fn job_for(&self, cj: &CronJob, scheduled: Timestamp, zone: &TimeZone) -> Result<Job, ControllerError> {
        let key = key_of(cj);
        let template = cj.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert(
            SCHEDULED_AT.into(),
            scheduled
                .to_zoned(zone.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
        );
        let name = format!("{}-{}", cj.name_any(), scheduled.as_second() / 60);
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": cj.namespace(), "labels": meta.labels, "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cj.name_any(),
                                              "uid": cj.uid(), "controller": true, "blockOwnerDeletion": true}]},
            "spec": template.spec,
        });
        serde_json::from_value(job)
            .map_err(|e| ControllerError::api(&key, "building a job", kube::Error::SerdeError(e)))
    }

    /// Deletes the oldest finished Jobs of one outcome beyond `limit`.
    async fn clean_up(
        &self,
        api: &Api<Job>,
        children: &[Arc<Job>],
        limit: i32,
        outcome: &str,
    ) -> Result<(), ControllerError> {
        let done: Vec<&Arc<Job>> = children
            .iter()
            .filter(|j| finished(j).is_some_and(|(kind, _)| kind == outcome) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let extra = done.len().saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for job in done.into_iter().take(extra) {
            crate::ignore_not_found(api.delete(&job.name_any(), &DeleteParams::background()).await)
                .map_err(|source| ControllerError::api(&key_of(job.as_ref()), "deleting an old job", source))?;
        }
        Ok(())
    }
}

/// Runs the controller until the future is dropped.
pub async fn run(client: kube::Client) {
    let (cronjobs, cj_writer) = reflector::store::<CronJob>();
    let (jobs, job_writer) = reflector::store::<Job>();
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
        client: client.clone(),
        queue: WorkQueue::new(),
        cronjobs: cronjobs.clone(),
        jobs: jobs.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    {
        let controller = Arc::clone(&controller);
        let events = watcher(Api::<CronJob>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim)
            .reflect(cj_writer);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(cj) | watcher::Event::InitApply(cj)) = event {
                    controller.queue.add(&key_of(&cj)).await;
                }
            }
        });
    }
    {
        let controller = Arc::clone(&controller);
        let events = watcher(Api::<Job>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim)
            .reflect(job_writer);
        tasks.spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(job) | watcher::Event::Delete(job)) = event
                    && let Some(owner) = job
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .find(|o| o.controller == Some(true) && o.kind == "CronJob")
                {
                    controller
                        .queue
                        .add(&format!("{}/{}", job.namespace().unwrap_or_default(), owner.name))
                        .await;
                }
            }
        });
    }
    cronjobs.wait_until_ready().await.ok();
    jobs.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &controller.queue.clone(), WORKERS, "cronjob", move |key| {
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
    fn only_the_most_recent_missed_time_runs() {
        let every = Schedule::parse("*/1 * * * *").unwrap();
        let (last, count) = missed(
            &every,
            &TimeZone::UTC,
            "2026-01-01T00:00:30Z".parse().unwrap(),
            "2026-01-01T00:05:10Z".parse().unwrap(),
        );
        assert_eq!((last, count), (Some("2026-01-01T00:05:00Z".parse().unwrap()), 5));
        let (last, count) = missed(
            &every,
            &TimeZone::UTC,
            "2026-01-01T00:00:00Z".parse().unwrap(),
            "2026-01-02T00:00:10Z".parse().unwrap(),
        );
        assert_eq!(last, Some("2026-01-02T00:00:00Z".parse().unwrap()));
        assert!(count > TOO_MANY_MISSED);
    }
}
