//! A worker's artifacts: upload URLs (one PUT, or a multipart upload's part URLs), finishing a
//! multipart upload, and the check of a Complete that names artifacts. Each is checked against
//! the worker's current lease of the job (fencing token and worker id, as its reports are), and
//! every object lives in the attempt's own folder, so a zombie attempt can never write where
//! the accepted one does, nor make its files the job's.

use tonic::Code;

use super::workers::Refusal;
use super::{convert, validate};
use crate::artifacts::{self, Storage};
use crate::proto;
use crate::scheduler::{self, Artifact, Holder, JobState, Report};

/// HEAD requests of one Complete in flight at once.
const HEADS_IN_FLIGHT: usize = 16;
/// Longest multipart upload id accepted back from a worker.
const MAX_UPLOAD_ID: usize = 1024;

/// What answers a worker's upload messages.
#[derive(Clone)]
pub struct Uploads {
    pub scheduler: scheduler::Handle,
    /// `None`: artifacts are off (no bucket configured).
    pub storage: Option<Storage>,
}

type Refused = (Code, String);

impl Uploads {
    /// The UploadUrl for `r`, or an UploadResult saying why not.
    pub async fn answer(
        &self,
        worker_id: &str,
        r: proto::UploadRequest,
    ) -> proto::connect_response::Msg {
        use proto::connect_response::Msg;
        match self.url(worker_id, &r).await {
            Ok(url) => Msg::UploadUrl(url),
            Err((code, message)) => Msg::UploadResult(proto::UploadResult {
                job_id: r.job_id,
                token: r.token,
                name: r.name,
                code: code as i32,
                message,
            }),
        }
    }

    /// Assembles a multipart upload; the UploadResult says whether it worked.
    pub async fn finish(
        &self,
        worker_id: &str,
        d: proto::UploadDone,
    ) -> proto::connect_response::Msg {
        let (code, message) = match self.assemble(worker_id, &d).await {
            Ok(()) => (Code::Ok, String::new()),
            Err(refused) => refused,
        };
        proto::connect_response::Msg::UploadResult(proto::UploadResult {
            job_id: d.job_id,
            token: d.token,
            name: d.name,
            code: code as i32,
            message,
        })
    }

    /// The Complete as the scheduler takes it, with each named artifact as the store describes
    /// it; refused when one is not there. The script still fences the completion itself: an
    /// attempt that lost its lease meanwhile is refused there, and its files never become the
    /// job's.
    pub async fn complete(&self, worker_id: &str, c: proto::Complete) -> Result<Report, Refusal> {
        let (job_id, token) = (c.job_id.clone(), c.token);
        let refuse = |(code, text): Refused| (job_id.clone(), token, code, text);
        let storage = self.storage().map_err(refuse)?;
        check_names(&c.artifacts).map_err(refuse)?;
        // A Complete sent again after it was accepted checks the same files.
        let holder = self
            .holder(
                worker_id,
                &c.job_id,
                c.token,
                &[JobState::Running, JobState::Succeeded],
            )
            .await
            .map_err(refuse)?;
        let mut artifacts = Vec::with_capacity(c.artifacts.len());
        for names in c.artifacts.chunks(HEADS_IN_FLIGHT) {
            let heads = names
                .iter()
                .map(|name| head(storage, &holder, &c.job_id, name));
            let described = futures_util::future::try_join_all(heads).await;
            artifacts.extend(described.map_err(refuse)?);
        }
        Ok(Report::Complete {
            job_id: c.job_id,
            token: c.token,
            result: c.result,
            artifacts,
        })
    }

    /// Download URLs for a job's inputs, for its assignment (presigning is local: no call to
    /// the store).
    pub async fn input_urls(&self, job: &scheduler::Job) -> Vec<proto::InputUrl> {
        let Some(storage) = &self.storage else {
            return Vec::new();
        };
        let mut urls = Vec::with_capacity(job.inputs.len());
        for input in &job.inputs {
            let key = artifacts::input_key(&job.tenant, input);
            match storage.download_url(&key, None).await {
                Ok(url) => urls.push(proto::InputUrl {
                    input: input.clone(),
                    url,
                }),
                Err(e) => tracing::warn!(job = job.id, error = %e, "no URL for an input"),
            }
        }
        urls
    }

    fn storage(&self) -> Result<&Storage, Refused> {
        let off = artifacts::Error::Off;
        self.storage
            .as_ref()
            .ok_or_else(|| (Code::FailedPrecondition, off.to_string()))
    }

    async fn url(
        &self,
        worker_id: &str,
        r: &proto::UploadRequest,
    ) -> Result<proto::UploadUrl, Refused> {
        let storage = self.storage()?;
        let invalid = |e: artifacts::Error| (Code::InvalidArgument, e.to_string());
        artifacts::check_name(&r.name).map_err(invalid)?;
        artifacts::check_upload(r.size, &r.content_type).map_err(invalid)?;
        let holder = self
            .holder(worker_id, &r.job_id, r.token, &[JobState::Running])
            .await?;
        let key = artifacts::object_key(&holder.tenant, &r.job_id, holder.attempt, &r.name);
        let content_type = Some(r.content_type.as_str()).filter(|t| !t.is_empty());
        let unavailable = |e: artifacts::Error| (Code::Unavailable, e.to_string());
        let mut answer = proto::UploadUrl {
            job_id: r.job_id.clone(),
            token: r.token,
            name: r.name.clone(),
            expires_at: Some(convert::timestamp(
                scheduler::now_ms() + storage.options().upload_expiry.as_millis() as i64,
            )),
            ..Default::default()
        };
        if r.size > artifacts::MULTIPART_ABOVE {
            let multipart = storage
                .multipart(
                    &key,
                    content_type.unwrap_or(artifacts::DEFAULT_TYPE),
                    r.size,
                )
                .await
                .map_err(unavailable)?;
            answer.upload_id = multipart.upload_id;
            answer.part_size = multipart.part_size;
            answer.part_urls = multipart.part_urls;
        } else {
            answer.url = storage
                .upload_url(&key, content_type)
                .await
                .map_err(unavailable)?;
        }
        Ok(answer)
    }

    async fn assemble(&self, worker_id: &str, d: &proto::UploadDone) -> Result<(), Refused> {
        let storage = self.storage()?;
        let invalid = |text: String| Err((Code::InvalidArgument, text));
        artifacts::check_name(&d.name).map_err(|e| (Code::InvalidArgument, e.to_string()))?;
        if d.upload_id.is_empty() || d.upload_id.len() > MAX_UPLOAD_ID {
            return invalid(format!("upload_id: 1..={MAX_UPLOAD_ID} bytes"));
        }
        if d.part_etags.is_empty() || d.part_etags.len() > 10_000 {
            return invalid("part_etags: one per part, 1..=10000".into());
        }
        let holder = self
            .holder(worker_id, &d.job_id, d.token, &[JobState::Running])
            .await?;
        let key = artifacts::object_key(&holder.tenant, &d.job_id, holder.attempt, &d.name);
        storage
            .finish_multipart(&key, &d.upload_id, &d.part_etags)
            .await
            .map_err(|e| match e {
                artifacts::Error::Rejected(_) => (Code::FailedPrecondition, e.to_string()),
                _ => (Code::Unavailable, e.to_string()),
            })
    }

    /// The job's current lease, when it is this worker's with this token and the job is in one
    /// of `states`.
    async fn holder(
        &self,
        worker_id: &str,
        job_id: &str,
        token: u64,
        states: &[JobState],
    ) -> Result<Holder, Refused> {
        validate::job_id(job_id).map_err(|e| (Code::InvalidArgument, e.to_string()))?;
        let holder = self
            .scheduler
            .holder(job_id)
            .await
            .map_err(|e| (Code::Unavailable, e.to_string()))?;
        let refused = |why: String| Err((Code::FailedPrecondition, why));
        match holder {
            None => refused("job does not exist".into()),
            Some(h) if h.token != token => refused(format!(
                "stale fencing token {token}; the current lease has token {}",
                h.token
            )),
            Some(h) if h.worker != worker_id => {
                refused("job was never assigned to this worker".into())
            }
            Some(h) if !states.contains(&h.state) => {
                refused(format!("job is {}, not RUNNING", h.state.as_str()))
            }
            Some(h) => Ok(h),
        }
    }
}

/// Artifact `name` of the holder's attempt as the store describes it; refused when missing.
async fn head(
    storage: &Storage,
    holder: &Holder,
    job_id: &str,
    name: &str,
) -> Result<Artifact, Refused> {
    let key = artifacts::object_key(&holder.tenant, job_id, holder.attempt, name);
    match storage.head(&key, name).await {
        Ok(Some(artifact)) => Ok(artifact),
        Ok(None) => Err((
            Code::FailedPrecondition,
            format!("artifact {name:?} is not in the store: upload it first"),
        )),
        Err(e) => Err((Code::Unavailable, e.to_string())),
    }
}

/// A Complete names at most `MAX_ARTIFACTS` artifacts, each once, each a valid name.
pub(super) fn check_names(names: &[String]) -> Result<(), Refused> {
    let invalid = |text: String| Err((Code::InvalidArgument, text));
    if names.len() > artifacts::MAX_ARTIFACTS {
        return invalid(format!(
            "artifacts: at most {} per job",
            artifacts::MAX_ARTIFACTS
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for name in names {
        artifacts::check_name(name).map_err(|e| (Code::InvalidArgument, e.to_string()))?;
        if !seen.insert(name) {
            return invalid(format!("artifacts: {name:?} is named twice"));
        }
    }
    Ok(())
}
