//! JobService: submit, read, list, cancel, watch and retry jobs; pause, resume and count queues.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::status::{Error, invalid};
use super::{Limits, Quotas, caller, convert, validate};
use crate::artifacts::{self, Storage};
use crate::events::{self, FollowItem, Item};
use crate::proto::{self, job_service_server::JobService};
use crate::scheduler::{self, NewJob, Tier};
use crate::telemetry;

/// Most jobs one SubmitJobs call may carry.
const MAX_BATCH: usize = 1000;

pub struct Jobs {
    scheduler: scheduler::Handle,
    hub: events::Handle,
    limits: Limits,
    quotas: Arc<Quotas>,
    /// Where artifacts are; `None`: artifacts are off.
    storage: Option<Storage>,
    /// Turns true when the server shuts down; open watches then end with UNAVAILABLE.
    stopping: watch::Receiver<bool>,
    /// A watch quiet this long gets a keep-alive event.
    keepalive: Duration,
}

impl Jobs {
    pub fn new(
        scheduler: scheduler::Handle,
        hub: events::Handle,
        limits: Limits,
        quotas: Arc<Quotas>,
        storage: Option<Storage>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            scheduler,
            hub,
            limits,
            quotas,
            storage,
            stopping,
            keepalive: Duration::from_secs(15),
        }
    }

    /// How long a watch may be quiet before it gets a keep-alive event.
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// One of the tenant's open watch streams (WatchJob and WatchJobs count alike).
    fn watch_permit(&self, tenant: &str) -> Result<super::quota::WatchPermit, Error> {
        self.quotas.watch(tenant).ok_or_else(|| {
            let cap = self.quotas.max_watches();
            Error::Exhausted(format!(
                "this tenant already has {cap} open watch streams; close some first"
            ))
        })
    }

    /// What `job` names exists for the tenant: the jobs it depends on and its inputs.
    async fn check_references(&self, tenant: &str, job: &NewJob) -> Result<(), Error> {
        self.check_dependencies(tenant, job).await?;
        if job.inputs.is_empty() {
            return Ok(());
        }
        let storage = self.storage.as_ref().ok_or(artifacts::Error::Off)?;
        for (i, input) in job.inputs.iter().enumerate() {
            let key = artifacts::input_key(tenant, input);
            if storage.head(&key, input).await?.is_none() {
                return Err(invalid(format!(
                    "inputs[{i}]: no uploaded input {input:?} (CreateInputUpload, then PUT)"
                )));
            }
        }
        Ok(())
    }

    /// Every job `job` depends on is one of the tenant's (one read each, in Redis or else the
    /// history; no waiting reasons, which GetJob would add).
    async fn check_dependencies(&self, tenant: &str, job: &NewJob) -> Result<(), Error> {
        for id in &job.flow.depends_on {
            match self.scheduler.lookup(id).await {
                Ok(Some(dep)) if dep.tenant == tenant => {}
                Ok(_) | Err(scheduler::Error::NotFound) => {
                    return Err(invalid(format!("depends_on: no job {id}")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchJobResponse, Status>> + Send>>;
type FollowStream = Pin<Box<dyn Stream<Item = Result<proto::WatchJobsResponse, Status>> + Send>>;

/// `items` as `Some`, with a `None` (a keep-alive) whenever they have been quiet for `every`:
/// proxies with idle timeouts would cut a watch of a long render otherwise. Ends with `items`.
fn with_beats<T: Send + 'static>(
    items: impl Stream<Item = T> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Option<T>> + Send + 'static {
    futures_util::stream::unfold(Box::pin(items), move |mut items| async move {
        match tokio::time::timeout(every, items.next()).await {
            Ok(Some(item)) => Some((Some(item), items)),
            Ok(None) => None,
            Err(_) => Some((None, items)),
        }
    })
}

/// Runs `work` to its end even when the client goes away meanwhile (gRPC drops a cancelled
/// call's handler): a submit's row and its Redis call stand or fall together, promptly, whatever
/// the client does. The client hears UNAVAILABLE before its own deadline (`grpc-timeout`) if the
/// work is not done by then; the work goes on.
async fn detached<T: Send + 'static>(
    budget: Option<Duration>,
    work: impl Future<Output = Result<T, scheduler::Error>> + Send + 'static,
) -> Result<T, Error> {
    use tracing::Instrument;
    // In the call's span, so its script calls are its children in the trace.
    let task = tokio::spawn(work.in_current_span());
    let joined = match budget {
        Some(budget) => match tokio::time::timeout(budget, task).await {
            Ok(joined) => joined,
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "not done within the call's deadline ({budget:?} of it); it goes on: \
                     retry with the same idempotency key to learn its job"
                )));
            }
        },
        None => task.await,
    };
    match joined {
        Ok(done) => Ok(done?),
        Err(e) => Err(scheduler::Error::Corrupt(format!("the submit task ended: {e}")).into()),
    }
}

/// How long a handler may take so its answer reaches the client before the call's deadline
/// (`grpc-timeout`): nine tenths of it, at least 20 ms short of it.
fn answer_within(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (timeout / 10).max(Duration::from_millis(20));
    Some(timeout.saturating_sub(margin))
}

/// A keep-alive event: only the job id (empty on WatchJobs) and the time; seq 0.
fn keepalive(job_id: &str) -> proto::JobEvent {
    proto::JobEvent {
        job_id: job_id.to_string(),
        kind: proto::job_event::Kind::Keepalive as i32,
        time: Some(convert::timestamp(scheduler::now_ms())),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let trace_context = telemetry::job_trace_context(request.metadata().as_ref());
        let budget = answer_within(request.metadata());
        let mut job = validate::submit(request.into_inner(), &self.limits)?;
        job.trace_context = trace_context;
        self.check_references(&tenant, &job).await?;
        self.quotas
            .submit(&tenant, &[(job.tier, 1)])
            .map_err(Error::RateLimited)?;
        let scheduler = self.scheduler.clone();
        let submitted = async move { scheduler.submit(&tenant, job).await };
        let (job, created) = detached(budget, submitted).await?;
        Ok(Response::new(proto::SubmitJobResponse {
            job: Some(convert::job(job)),
            created,
        }))
    }

    async fn submit_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<proto::SubmitJobsResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let trace_context = telemetry::job_trace_context(request.metadata().as_ref());
        let budget = answer_within(request.metadata());
        let requests = request.into_inner().jobs;
        if requests.is_empty() || requests.len() > MAX_BATCH {
            let n = requests.len();
            return Err(invalid(format!("jobs: {n} jobs; send 1..={MAX_BATCH} per call")).into());
        }
        let queue = requests[0].queue.clone();
        let mut batch = Vec::with_capacity(requests.len());
        for (i, r) in requests.into_iter().enumerate() {
            if r.queue != queue {
                let message =
                    format!("jobs[{i}].queue: every job of one call goes to one queue ({queue:?})");
                return Err(invalid(message).into());
            }
            let mut job =
                validate::submit(r, &self.limits).map_err(|e| invalid(format!("jobs[{i}].{e}")))?;
            job.trace_context.clone_from(&trace_context);
            self.check_references(&tenant, &job)
                .await
                .map_err(|e| invalid(format!("jobs[{i}].{e}")))?;
            batch.push(job);
        }
        self.quotas
            .submit(&tenant, &Tier::count(batch.iter().map(|j| j.tier)))
            .map_err(Error::RateLimited)?;
        let scheduler = self.scheduler.clone();
        let submitted = async move { scheduler.submit_many(&tenant, batch).await };
        let results = detached(budget, submitted).await?;
        let results = results
            .into_iter()
            .map(|(job, created)| proto::SubmitJobResponse {
                job: Some(convert::job(job)),
                created,
            })
            .collect();
        Ok(Response::new(proto::SubmitJobsResponse { results }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let id = request.into_inner().job_id;
        validate::job_id(&id)?;
        let job = self
            .scheduler
            .get(&tenant, &id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::GetJobResponse {
            job: Some(convert::job(job)),
        }))
    }

    async fn get_artifact_url(
        &self,
        request: Request<proto::GetArtifactUrlRequest>,
    ) -> Result<Response<proto::GetArtifactUrlResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let r = request.into_inner();
        validate::job_id(&r.job_id)?;
        artifacts::check_name(&r.name).map_err(Error::from)?;
        let expiry = validate::url_expiry(r.expiry.as_ref())?;
        let Some(storage) = &self.storage else {
            return Err(Error::from(artifacts::Error::Off).into());
        };
        let job = self
            .scheduler
            .lookup(&r.job_id)
            .await
            .map_err(Error::from)?
            .filter(|job| job.tenant == tenant)
            .ok_or(Error::from(scheduler::Error::NotFound))?;
        let Some(artifact) = job.artifacts.iter().find(|a| a.name == r.name) else {
            return Err(Status::not_found(format!(
                "job {} has no artifact {:?}",
                job.id, r.name
            )));
        };
        let key = artifacts::object_key(&job.tenant, &job.id, job.attempt, &artifact.name);
        let expiry = expiry.unwrap_or(storage.options().download_expiry);
        let url = storage
            .download_url(&key, Some(expiry))
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::GetArtifactUrlResponse {
            url,
            expires_at: Some(convert::timestamp(
                scheduler::now_ms() + expiry.as_millis() as i64,
            )),
            artifact: Some(convert::artifact(artifact.clone())),
        }))
    }

    async fn create_input_upload(
        &self,
        request: Request<proto::CreateInputUploadRequest>,
    ) -> Result<Response<proto::CreateInputUploadResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let r = request.into_inner();
        artifacts::check_name(&r.name).map_err(Error::from)?;
        artifacts::check_upload(0, &r.content_type).map_err(Error::from)?;
        let storage = self
            .storage
            .as_ref()
            .ok_or(Error::from(artifacts::Error::Off))?;
        let input = artifacts::new_input(&r.name);
        let content_type = Some(r.content_type.as_str()).filter(|t| !t.is_empty());
        let url = storage
            .upload_url(&artifacts::input_key(&tenant, &input), content_type)
            .await
            .map_err(Error::from)?;
        let expires = scheduler::now_ms() + storage.options().upload_expiry.as_millis() as i64;
        Ok(Response::new(proto::CreateInputUploadResponse {
            input,
            url,
            expires_at: Some(convert::timestamp(expires)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let scheduler = &self.scheduler;
        let (filter, page_size, token) =
            validate::list(request.into_inner(), scheduler.history().is_some(), |t| {
                scheduler.valid_page_token(t)
            })?;
        let page = self
            .scheduler
            .list(&tenant, &filter, page_size, token.as_deref())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::ListJobsResponse {
            jobs: page.jobs.into_iter().map(convert::job).collect(),
            next_page_token: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let id = request.into_inner().job_id;
        validate::job_id(&id)?;
        let job = self
            .scheduler
            .cancel(&tenant, &id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::CancelJobResponse {
            job: Some(convert::job(job)),
        }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let tenant = caller(&request)?.tenant;
        let r = request.into_inner();
        validate::job_id(&r.job_id)?;
        let permit = self.watch_permit(&tenant)?;
        let job_id = r.job_id.clone();
        let items = events::watch(
            self.hub.clone(),
            self.scheduler.clone(),
            tenant,
            r.job_id,
            r.after_seq,
            self.stopping.clone(),
        )
        .await
        .map_err(Error::from)?;
        // The permit goes with the stream, and is given back when it ends.
        let responses = with_beats(items, self.keepalive).map(move |item| {
            let _ = &permit;
            let event = match item {
                None => keepalive(&job_id),
                Some(Ok(Item::Snapshot(job))) => convert::snapshot(*job),
                Some(Ok(Item::Event(event))) => convert::event(&event),
                Some(Ok(Item::Stopping)) => {
                    return Err(Status::unavailable(
                        "server shutting down; watch again with after_seq",
                    ));
                }
                Some(Err(e)) => return Err(Status::from(Error::from(e))),
            };
            Ok(proto::WatchJobResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    type WatchJobsStream = FollowStream;

    async fn watch_jobs(
        &self,
        request: Request<proto::WatchJobsRequest>,
    ) -> Result<Response<FollowStream>, Status> {
        let tenant = caller(&request)?.tenant;
        let (filter, resume) = validate::follow(tenant, request.into_inner())?;
        let permit = self.watch_permit(&filter.tenant)?;
        let items = events::follow(
            self.hub.clone(),
            self.scheduler.clone(),
            filter,
            resume,
            self.stopping.clone(),
        );
        // The permit goes with the stream. Keep-alives carry the last resume token too.
        let mut token = String::new();
        let responses = with_beats(items, self.keepalive).map(move |item| {
            let _ = &permit;
            let (event, synced) = match item {
                None => (Some(keepalive("")), false),
                Some(item) => {
                    let (item, resume) = item.map_err(|e| Status::from(Error::from(e)))?;
                    if let Some(ms) = resume {
                        token = validate::resume_token(ms);
                    }
                    match item {
                        FollowItem::Snapshot(job) => (Some(convert::snapshot(*job)), false),
                        FollowItem::Event(event) => (Some(convert::event(&event)), false),
                        FollowItem::Synced => (None, true),
                        FollowItem::Stopping => {
                            return Err(Status::unavailable(
                                "server shutting down; watch again with resume_token",
                            ));
                        }
                    }
                }
            };
            Ok(proto::WatchJobsResponse {
                event,
                resume_token: token.clone(),
                synced,
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn pause_queue(
        &self,
        request: Request<proto::PauseQueueRequest>,
    ) -> Result<Response<proto::PauseQueueResponse>, Status> {
        let queue = request.into_inner().queue;
        validate::queue(&queue)?;
        let changed = self
            .scheduler
            .set_paused(&queue, true)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::PauseQueueResponse { changed }))
    }

    async fn resume_queue(
        &self,
        request: Request<proto::ResumeQueueRequest>,
    ) -> Result<Response<proto::ResumeQueueResponse>, Status> {
        let queue = request.into_inner().queue;
        validate::queue(&queue)?;
        let changed = self
            .scheduler
            .set_paused(&queue, false)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::ResumeQueueResponse { changed }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<proto::GetQueueStatsRequest>,
    ) -> Result<Response<proto::GetQueueStatsResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let queue = request.into_inner().queue;
        validate::queue(&queue)?;
        let stats = self
            .scheduler
            .queue_stats(&tenant, &queue)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(convert::queue_stats(stats)))
    }

    async fn list_queues(
        &self,
        request: Request<proto::ListQueuesRequest>,
    ) -> Result<Response<proto::ListQueuesResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let queues = self.scheduler.queues(&tenant).await.map_err(Error::from)?;
        Ok(Response::new(proto::ListQueuesResponse {
            queues: queues.into_iter().map(convert::queue_summary).collect(),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<proto::RetryJobRequest>,
    ) -> Result<Response<proto::RetryJobResponse>, Status> {
        let tenant = caller(&request)?.tenant;
        let (jobs, more) = match validate::retry(request.into_inner())? {
            validate::RetryTarget::One(id) => {
                let job = self
                    .scheduler
                    .retry(&tenant, &id)
                    .await
                    .map_err(Error::from)?;
                (vec![job], false)
            }
            validate::RetryTarget::Failed(filter) => self
                .scheduler
                .retry_failed(&tenant, &filter, scheduler::MAX_RETRY_BULK)
                .await
                .map_err(Error::from)?,
        };
        Ok(Response::new(proto::RetryJobResponse {
            jobs: jobs.into_iter().map(convert::job).collect(),
            more,
        }))
    }
}
