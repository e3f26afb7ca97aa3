//! Artifact storage against a real S3-compatible server: s3s-fs (objects as files, SigV4 checked
//! on every request) served in this process on a loopback port.

use std::time::Duration;

use conveyor::artifacts::{Options, Storage, object_key};
use conveyor::proto::{
    self, connect_request::Msg as WorkerMsg, connect_response::Msg as ServerMsg,
};

use crate::auth;
use crate::harness::{self, Worker, eventually};

use conveyor::dev::{
    STORE_ACCESS_KEY as ACCESS_KEY, STORE_BUCKET as BUCKET, STORE_SECRET_KEY as SECRET_KEY,
};

/// An S3-compatible server with one bucket (`conveyor dev`'s private store) in a fresh folder,
/// stopped when dropped.
pub struct S3 {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    _store: conveyor::dev::Store,
}

impl S3 {
    pub async fn start() -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let store = conveyor::dev::start_store(dir.path()).await.unwrap();
        S3 {
            endpoint: store.endpoint.clone(),
            dir,
            _store: store,
        }
    }

    /// Storage options for this server.
    pub fn options(&self) -> Options {
        Options {
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint.clone()),
            path_style: true,
            access_key: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            upload_expiry: Duration::from_secs(600),
            download_expiry: Duration::from_secs(3600),
        }
    }
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn presigned_urls_put_and_get_an_artifact_and_nothing_else() {
    let s3 = S3::start().await;
    let storage = Storage::new(s3.options()).await.unwrap();
    let key = object_key(
        "acme",
        "render:0190b5a0-0000-7000-8000-000000000000",
        1,
        "out/video.mp4",
    );
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let client = http();

    let put = client
        .put(storage.upload_url(&key, None).await.unwrap())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{:?}", put.text().await);
    let on_disk = s3.dir.path().join(BUCKET).join(&key);
    assert_eq!(
        std::fs::read(&on_disk).unwrap(),
        body,
        "stored under its key"
    );

    let url = storage.download_url(&key, None).await.unwrap();
    let got = client.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), body.as_slice());

    // The signature covers the key and the method: another key, a PUT with a GET URL, or a
    // tampered signature are refused.
    let other = url.replace("attempt-1", "attempt-2");
    assert_eq!(client.get(&other).send().await.unwrap().status(), 403);
    let put_with_get = client.put(&url).body("x").send().await.unwrap();
    assert_eq!(put_with_get.status(), 403);
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    assert_eq!(client.get(&tampered).send().await.unwrap().status(), 403);

    // Expiry is honoured.
    let short = storage
        .download_url(&key, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(client.get(&short).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(client.get(&short).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn storage_refuses_a_configuration_it_cannot_use() {
    let options = Options {
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        endpoint: None,
        path_style: false,
        access_key: Some(("k".into(), "s".into())),
        upload_expiry: Duration::from_secs(600),
        download_expiry: Duration::from_secs(3600),
    };
    assert!(Storage::new(options.clone()).await.is_ok());
    let no_bucket = Options {
        bucket: String::new(),
        ..options.clone()
    };
    assert!(Storage::new(no_bucket).await.is_err());
    let too_long = Options {
        download_expiry: Duration::from_secs(8 * 24 * 3600),
        ..options
    };
    assert!(Storage::new(too_long).await.is_err());
}

/// A server whose artifacts go to a fresh store.
async fn stored() -> (S3, harness::Redis, harness::Server) {
    let s3 = S3::start().await;
    let redis = harness::Redis::start().await;
    let server = harness::Server::start(with_storage(&redis, &s3)).await;
    (s3, redis, server)
}

/// A server whose artifacts go to `s3`.
fn with_storage(redis: &harness::Redis, s3: &S3) -> conveyor::config::Config {
    let mut config = harness::config(redis);
    config.s3_bucket = Some(BUCKET.into());
    config.s3_endpoint = Some(s3.endpoint.clone());
    config.s3_path_style = true;
    config.s3_access_key = Some(ACCESS_KEY.into());
    config.s3_secret_key = Some(SECRET_KEY.into());
    config
}

fn upload(job_id: &str, token: u64, name: &str) -> WorkerMsg {
    WorkerMsg::Upload(proto::UploadRequest {
        job_id: job_id.into(),
        token,
        name: name.into(),
        ..Default::default()
    })
}

/// Asks for an upload URL: the URL, or the refusal's code and message.
async fn ask(worker: &mut Worker, request: WorkerMsg) -> Result<proto::UploadUrl, (i32, String)> {
    worker.send(request).await;
    match worker.recv().await {
        ServerMsg::UploadUrl(url) => Ok(url),
        ServerMsg::UploadResult(r) => Err((r.code, r.message)),
        other => panic!("expected an answer to the upload request, got {other:?}"),
    }
}

#[tokio::test]
async fn a_worker_uploads_into_its_own_attempt_and_only_while_it_holds_the_lease() {
    harness::logs();
    let (s3, _redis, server) = stored().await;
    let mut jobs = server.jobs().await;
    let job = harness::submit_job(&mut jobs, harness::submit("render", "{}")).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let first = worker.assignment().await;

    let url = ask(&mut worker, upload(&job.id, first.token, "video.mp4"))
        .await
        .unwrap();
    assert!(url.url.contains("/attempt-1/video.mp4"), "{}", url.url);
    let put = http()
        .put(&url.url)
        .body("first attempt")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let folder = s3
        .dir
        .path()
        .join(BUCKET)
        .join(format!("tenant/default/jobs/{}", job.id));
    assert_eq!(
        std::fs::read_to_string(folder.join("attempt-1/video.mp4")).unwrap(),
        "first attempt"
    );

    // The first attempt fails; the second runs. The first's token is a zombie's now.
    assert_eq!(worker.fail(&job.id, first.token, "oom", true).await.code, 0);
    let second = worker.assignment().await;
    let (code, message) = ask(&mut worker, upload(&job.id, first.token, "video.mp4"))
        .await
        .unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition as i32, "{message}");
    assert!(message.contains("stale fencing token"), "{message}");
    let url = ask(&mut worker, upload(&job.id, second.token, "video.mp4"))
        .await
        .unwrap();
    assert!(url.url.contains("/attempt-2/video.mp4"), "{}", url.url);

    // Names that would leave the attempt's folder, and jobs that are not the worker's.
    for (request, code) in [
        (
            upload(&job.id, second.token, "../attempt-1/video.mp4"),
            tonic::Code::InvalidArgument,
        ),
        (
            upload(&job.id, second.token, "/etc/passwd"),
            tonic::Code::InvalidArgument,
        ),
        (
            upload(
                &job.id,
                second.token,
                "tenant/globex/jobs/x/attempt-1/video.mp4",
            ),
            tonic::Code::InvalidArgument,
        ),
        (
            upload("render:0190b5a0-0000-7000-8000-000000000000", 1, "a"),
            tonic::Code::FailedPrecondition,
        ),
        (upload("not-a-job", 1, "a"), tonic::Code::InvalidArgument),
    ] {
        let (got, message) = ask(&mut worker, request).await.unwrap_err();
        assert_eq!(got, code as i32, "{message}");
    }
    assert_eq!(worker.complete(&job.id, second.token, "{}").await.code, 0);
    let (code, message) = ask(&mut worker, upload(&job.id, second.token, "late.mp4"))
        .await
        .unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition as i32);
    assert!(message.contains("SUCCEEDED"), "{message}");
}

#[tokio::test]
async fn without_a_bucket_artifacts_are_off_and_say_so() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let job = harness::submit_job(&mut jobs, harness::submit("render", "{}")).await;
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let a = worker.assignment().await;
    let (code, message) = ask(&mut worker, upload(&job.id, a.token, "video.mp4"))
        .await
        .unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition as i32);
    assert!(message.contains("artifacts are off"), "{message}");
    let status = jobs
        .create_input_upload(input_request("in.mov"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = jobs
        .submit_job(proto::SubmitJobRequest {
            inputs: vec![format!("{}/in.mov", uuid::Uuid::now_v7())],
            ..harness::submit("render", "{}")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}

fn input_request(name: &str) -> proto::CreateInputUploadRequest {
    proto::CreateInputUploadRequest {
        name: name.into(),
        content_type: String::new(),
    }
}

/// A client uploads an input through a presigned URL, a job names it, and the worker's
/// command finds it in its input folder; references that are not the caller's uploads are
/// refused and change nothing.
#[tokio::test]
async fn a_client_uploads_an_input_and_the_workers_command_reads_it() {
    let (_s3, redis, server) = stored().await;
    let mut jobs = server.jobs().await;
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source.mov");
    std::fs::write(&source, "raw footage").unwrap();
    let script = "cat \"$CONVEYOR_INPUT_DIR/source.mov\" > \"$CONVEYOR_OUTPUT_DIR/edited.mov\" && echo 'RESULT {}'";
    let _worker = crate::process::worker_with(&server.addr, &[], script);
    let submitted = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "submit",
            "--addr",
            &server.addr,
            "--queue",
            "render",
            "--tier",
            "pro",
            "--input",
        ])
        .arg(&source)
        .output()
        .await
        .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let id = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_string();
    let done = harness::wait_state(&mut jobs, &id, proto::JobState::Succeeded).await;
    assert_eq!(done.inputs.len(), 1);
    assert!(done.inputs[0].ends_with("/source.mov"), "{:?}", done.inputs);
    let url = jobs
        .get_artifact_url(url_request(&id, "edited.mov", None))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert_eq!(
        http().get(&url).send().await.unwrap().text().await.unwrap(),
        "raw footage"
    );

    let uploaded = jobs
        .create_input_upload(input_request("clip.mov"))
        .await
        .unwrap()
        .into_inner();
    let with_inputs = |inputs: Vec<String>| proto::SubmitJobRequest {
        inputs,
        ..harness::submit("render", "{}")
    };
    let keys_before = crate::bad_inputs::dbsize(&redis).await;
    let never_put = with_inputs(vec![uploaded.input.clone()]);
    let other = with_inputs(vec![format!("{}/clip.mov", uuid::Uuid::now_v7())]);
    let same_name = with_inputs(vec![
        done.inputs[0].clone(),
        format!("{}/source.mov", uuid::Uuid::now_v7()),
    ]);
    let too_many = with_inputs(
        (0..17)
            .map(|i| format!("{}/{i}", uuid::Uuid::now_v7()))
            .collect(),
    );
    let follow_up = proto::SubmitJobRequest {
        on_success: vec![with_inputs(done.inputs.clone())],
        ..harness::submit("render", "{}")
    };
    for (request, why) in [
        (never_put, "no uploaded input"),
        (other, "no uploaded input"),
        (
            with_inputs(vec!["../x.mov".into()]),
            "not a CreateInputUpload reference",
        ),
        (
            with_inputs(vec![format!("{}/../x", uuid::Uuid::now_v7())]),
            "artifact name",
        ),
        (same_name, "has the name of"),
        (too_many, "at most 16"),
        (follow_up, "give inputs to the first job"),
    ] {
        let status = jobs.submit_job(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(why), "{why}: {status:?}");
    }
    assert_eq!(
        crate::bad_inputs::dbsize(&redis).await,
        keys_before,
        "refusals changed Redis"
    );
}

/// Config for a server whose artifacts go to `s3`.
fn store_in(config: &mut conveyor::config::Config, s3: &S3) {
    config.s3_bucket = Some(BUCKET.into());
    config.s3_endpoint = Some(s3.endpoint.clone());
    config.s3_path_style = true;
    config.s3_access_key = Some(ACCESS_KEY.into());
    config.s3_secret_key = Some(SECRET_KEY.into());
}

/// PUTs `body` as artifact `name` of the attempt holding `token`, through the URL the server
/// hands out; `content_type` is asked for and sent.
async fn put_artifact(
    worker: &mut Worker,
    job_id: &str,
    token: u64,
    name: &str,
    content_type: &str,
    body: &str,
) {
    let request = WorkerMsg::Upload(proto::UploadRequest {
        job_id: job_id.into(),
        token,
        name: name.into(),
        size: body.len() as u64,
        content_type: content_type.into(),
    });
    let url = ask(worker, request).await.unwrap();
    let put = http()
        .put(&url.url)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{:?}", put.text().await);
}

fn complete_with(job_id: &str, token: u64, artifacts: &[&str]) -> WorkerMsg {
    WorkerMsg::Complete(proto::Complete {
        job_id: job_id.into(),
        token,
        result: "{}".into(),
        artifacts: artifacts.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
}

fn url_request(job_id: &str, name: &str, expiry: Option<Duration>) -> proto::GetArtifactUrlRequest {
    proto::GetArtifactUrlRequest {
        job_id: job_id.into(),
        name: name.into(),
        expiry: expiry.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
    }
}

#[tokio::test]
async fn a_succeeded_job_lists_its_artifacts_and_only_its_tenant_gets_urls() {
    let s3 = S3::start().await;
    let secured = auth::secured(|config| {
        store_in(config, &s3);
        // Finished jobs leave Redis at once; the history answers afterwards.
        config.retention = Duration::from_secs(1);
    })
    .await;
    let acme = auth::key(&secured.db, "acme", auth::ALL).await;
    let globex = auth::key(&secured.db, "globex", auth::ALL).await;
    let mut jobs = secured.jobs(Some(&acme)).await;
    let job = jobs
        .submit_job(harness::submit("render", "{}"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let token = auth::worker_token(&secured.db, "render").await;
    let mut worker = Worker::connect_with_token(&secured.server, &token, &["render"], 1).await;
    worker.keep_alive();
    let a = worker.assignment().await;
    let mut watch = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: None,
        })
        .await
        .unwrap()
        .into_inner();
    put_artifact(
        &mut worker,
        &job.id,
        a.token,
        "video.mp4",
        "video/mp4",
        "rendered video",
    )
    .await;
    let folder = s3
        .dir
        .path()
        .join(BUCKET)
        .join(format!("tenant/acme/jobs/{}", job.id));
    assert!(
        folder.join("attempt-1/video.mp4").exists(),
        "under the job's tenant"
    );

    // A Complete naming a file that was never uploaded is refused and changes nothing.
    worker
        .send(complete_with(
            &job.id,
            a.token,
            &["video.mp4", "missing.mp4"],
        ))
        .await;
    let refused = worker.report_result().await;
    assert_eq!(
        refused.code,
        tonic::Code::FailedPrecondition as i32,
        "{refused:?}"
    );
    assert!(
        refused.message.contains("missing.mp4"),
        "{}",
        refused.message
    );
    assert_eq!(
        get_job(&mut jobs, &job.id).await.state,
        proto::JobState::Running as i32
    );

    worker
        .send(complete_with(&job.id, a.token, &["video.mp4"]))
        .await;
    assert_eq!(worker.report_result().await.code, 0);
    let expected = |artifacts: &[proto::Artifact]| {
        assert_eq!(artifacts.len(), 1, "{artifacts:?}");
        let video = &artifacts[0];
        assert_eq!(
            (video.name.as_str(), video.size, video.content_type.as_str()),
            ("video.mp4", 14, "video/mp4")
        );
        assert_eq!(video.checksum.len(), 32, "an MD5 ETag: {}", video.checksum);
    };
    let mut last = None;
    while let Some(event) = tokio_stream::StreamExt::next(&mut watch).await {
        last = event.unwrap().event;
    }
    let last = last.unwrap();
    assert_eq!(last.state, proto::JobState::Succeeded as i32);
    expected(&last.artifacts);
    expected(&get_job(&mut jobs, &job.id).await.artifacts);

    // The URL fetches the bytes; it is the caller's tenant's only.
    let answer = jobs
        .get_artifact_url(url_request(&job.id, "video.mp4", None))
        .await
        .unwrap()
        .into_inner();
    expected(std::slice::from_ref(answer.artifact.as_ref().unwrap()));
    let expires = answer.expires_at.unwrap().seconds - time_now();
    assert!(
        (3590..=3610).contains(&expires),
        "default expiry 1h, got {expires}s"
    );
    let got = http().get(&answer.url).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "video/mp4");
    assert_eq!(got.text().await.unwrap(), "rendered video");
    let mut other = secured.jobs(Some(&globex)).await;
    let status = other
        .get_artifact_url(url_request(&job.id, "video.mp4", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // An input is its uploader's tenant's only, too.
    let input = jobs
        .create_input_upload(input_request("in.mov"))
        .await
        .unwrap()
        .into_inner();
    let put = http().put(&input.url).body("footage").send().await.unwrap();
    assert!(put.status().is_success());
    let naming = || proto::SubmitJobRequest {
        inputs: vec![input.input.clone()],
        ..harness::submit("render", "{}")
    };
    let status = other.submit_job(naming()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let theirs = jobs
        .submit_job(naming())
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(theirs.inputs, std::slice::from_ref(&input.input));
    for (request, code) in [
        (
            url_request(&job.id, "other.mp4", None),
            tonic::Code::NotFound,
        ),
        (
            url_request(&job.id, "../video.mp4", None),
            tonic::Code::InvalidArgument,
        ),
        (
            url_request(&job.id, "video.mp4", Some(Duration::ZERO)),
            tonic::Code::InvalidArgument,
        ),
        (
            url_request(&job.id, "video.mp4", Some(Duration::from_secs(8 * 86400))),
            tonic::Code::InvalidArgument,
        ),
        (
            url_request("not-a-job", "video.mp4", None),
            tonic::Code::InvalidArgument,
        ),
    ] {
        let status = jobs.get_artifact_url(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }

    // Once Redis let the job go, the history still lists its artifacts.
    let key = format!(
        "{}job:{}",
        conveyor::scheduler::keys::prefix("render"),
        job.id
    );
    eventually("the job to leave Redis", || async {
        let reply = secured.redis.command(&["EXISTS", &key]).await;
        reply.is_some_and(|r| r.trim() == ":0").then_some(())
    })
    .await;
    expected(&get_job(&mut jobs, &job.id).await.artifacts);
    let short = jobs
        .get_artifact_url(url_request(
            &job.id,
            "video.mp4",
            Some(Duration::from_secs(2)),
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert_eq!(http().get(&short).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        http().get(&short).send().await.unwrap().status(),
        403,
        "expired"
    );
}

async fn get_job(jobs: &mut conveyor::client::Jobs, id: &str) -> proto::Job {
    let request = proto::GetJobRequest { job_id: id.into() };
    jobs.get_job(request)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_zombie_attempts_upload_never_becomes_the_jobs_artifact() {
    let (_s3, _redis, server) = stored().await;
    let mut jobs = server.jobs().await;
    let job = harness::submit_job(&mut jobs, harness::submit("render", "{}")).await;

    // Attempt 1 uploads, then its worker drops off the network and its lease is released.
    let mut zombie = Worker::connect_with(&server, harness::hello(&["render"], 1, "zombie")).await;
    let first = zombie.assignment().await;
    put_artifact(
        &mut zombie,
        &job.id,
        first.token,
        "video.mp4",
        "video/mp4",
        "zombie frames",
    )
    .await;
    drop(zombie);
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    worker.keep_alive();
    let second = worker.next_assignment().await;
    assert_eq!(second.attempt, 2);
    put_artifact(
        &mut worker,
        &job.id,
        second.token,
        "video.mp4",
        "video/mp4",
        "good frames",
    )
    .await;

    // The zombie comes back and completes with its file: refused.
    let mut back = Worker::connect_with(&server, harness::hello(&["render"], 1, "zombie")).await;
    back.send(complete_with(&job.id, first.token, &["video.mp4"]))
        .await;
    let refused = back.report_result().await;
    assert_eq!(
        refused.code,
        tonic::Code::FailedPrecondition as i32,
        "{refused:?}"
    );

    worker
        .send(complete_with(&job.id, second.token, &["video.mp4"]))
        .await;
    assert_eq!(worker.report_result().await.code, 0);
    let done = harness::get(&mut jobs, &job.id).await;
    assert_eq!(done.artifacts.len(), 1);
    let url = jobs
        .get_artifact_url(url_request(&job.id, "video.mp4", None))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.contains("/attempt-2/"), "{url}");
    assert_eq!(
        http().get(&url).send().await.unwrap().text().await.unwrap(),
        "good frames"
    );
}

/// `yes conveyor | head -c N`: what the worker's command writes, computed here to compare.
fn conveyor_bytes(n: usize) -> sha2::digest::Output<sha2::Sha256> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let line = b"conveyor\n";
    let mut left = n;
    let block: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 1024)
        .collect();
    while left > 0 {
        let take = left.min(block.len());
        hash.update(&block[..take]);
        left -= take;
    }
    hash.finalize()
}

fn sha256_of(path: &std::path::Path) -> sha2::digest::Output<sha2::Sha256> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hash).unwrap();
    hash.finalize()
}

/// A server storing artifacts in a fresh store, with one `render` job submitted and watched
/// from before it runs (`events` collects every event to the end).
struct Watched {
    s3: S3,
    _redis: harness::Redis,
    server: harness::Server,
    jobs: proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job: proto::Job,
    events: tokio::task::JoinHandle<Vec<proto::JobEvent>>,
}

async fn watched_job() -> Watched {
    let (s3, redis, server) = stored().await;
    let mut jobs = server.jobs().await;
    let job = harness::submit_job(&mut jobs, harness::submit("render", "{}")).await;
    let (mut watcher, id) = (jobs.clone(), job.id.clone());
    let events = tokio::spawn(async move { harness::watch_all(&mut watcher, &id, None).await });
    Watched {
        s3,
        _redis: redis,
        server,
        jobs,
        job,
        events,
    }
}

/// The whole path with real processes: `conveyor worker -- CMD` uploads what the command left
/// in its output folder (a 200 MiB video goes up in parts) and what it named on an ARTIFACT
/// line, with upload progress; `conveyor get --download` fetches them all back.
#[tokio::test]
async fn the_worker_runtime_uploads_its_output_folder_and_get_downloads_it() {
    const BIG: usize = 200 << 20;
    let Watched {
        s3: _s3,
        _redis,
        server,
        mut jobs,
        job,
        events,
    } = watched_job().await;

    let scratch = tempfile::tempdir().unwrap();
    let notes = scratch.path().join("notes.txt");
    let outputs = scratch.path().join("outputs");
    let script = format!(
        "yes conveyor | head -c {BIG} > \"$CONVEYOR_OUTPUT_DIR/video.mp4\" && \
         mkdir -p \"$CONVEYOR_OUTPUT_DIR/frames\" && printf frame > \"$CONVEYOR_OUTPUT_DIR/frames/0001.png\" && \
         printf 'render notes' > {notes} && echo 'PROGRESS 85 render done' && \
         echo 'ARTIFACT {notes} notes/readme.txt' && echo 'RESULT {{\"ok\":true}}'",
        notes = notes.display()
    );
    let outputs_arg = outputs.display().to_string();
    let _worker =
        crate::process::worker_with(&server.addr, &["--output-root", &outputs_arg], &script);

    let events = events.await.unwrap();
    let done = harness::get(&mut jobs, &job.id).await;
    assert_eq!(
        done.state,
        proto::JobState::Succeeded as i32,
        "{}",
        done.error
    );
    let listed: Vec<_> = done
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.size, a.content_type.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("notes/readme.txt", 12, "text/plain"),
            ("frames/0001.png", 5, "image/png"),
            ("video.mp4", BIG as u64, "video/mp4"),
        ]
    );
    let video = &done.artifacts[2];
    assert!(
        video.checksum.ends_with("-13"),
        "13 parts of 16 MiB: {}",
        video.checksum
    );
    let uploads: Vec<_> = events
        .iter()
        .filter_map(|e| e.progress.as_ref())
        .filter(|p| p.stage == "upload")
        .collect();
    assert!(uploads.len() >= 3, "upload progress: {uploads:?}");
    assert!(uploads.iter().all(|p| p.percent == 85.0), "{uploads:?}");
    assert!(
        std::fs::read_dir(&outputs).unwrap().next().is_none(),
        "the attempt's output folder is removed"
    );

    let into = scratch.path().join("downloads");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["get", "--addr", &server.addr, &job.id, "--download"])
        .arg(&into)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(into.join("notes/readme.txt")).unwrap(),
        "render notes"
    );
    assert_eq!(
        std::fs::read_to_string(into.join("frames/0001.png")).unwrap(),
        "frame"
    );
    assert_eq!(
        sha256_of(&into.join("video.mp4")),
        conveyor_bytes(BIG),
        "the 200 MiB video, byte for byte"
    );
}

/// Every object in the bucket, as `<job id>/attempt-<n>/<name>`.
fn objects(s3: &S3) -> std::collections::BTreeSet<String> {
    fn walk(
        dir: &std::path::Path,
        root: &std::path::Path,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if !path.to_string_lossy().contains(".s3s") {
                let key = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    key.split_once("/jobs/")
                        .map(|(_, k)| k.to_string())
                        .unwrap_or(key),
                );
            }
        }
    }
    let root = s3.dir.path().join(BUCKET);
    let mut out = std::collections::BTreeSet::new();
    walk(&root, &root, &mut out);
    out
}

/// Runs one job on `worker`: uploads `uploads`, then completes naming `named`.
async fn run_with_files(
    worker: &mut Worker,
    job_id: &str,
    uploads: &[&str],
    named: &[&str],
) -> u64 {
    let a = worker.next_assignment().await;
    assert_eq!(a.job.as_ref().unwrap().id, job_id);
    for name in uploads {
        put_artifact(worker, job_id, a.token, name, "text/plain", name).await;
    }
    worker.send(complete_with(job_id, a.token, named)).await;
    assert_eq!(worker.report_result().await.code, 0);
    a.attempt as u64
}

/// One policy drives Redis, the history and the store: a queue with a short retention loses
/// its jobs everywhere once it passes, a kept job and a queue with the default stay, and files
/// no accepted attempt named (a failed attempt's, one left out of the Complete) go once no URL
/// can still write them, and inputs after the input retention.
#[tokio::test]
async fn retention_deletes_exactly_what_expired_in_redis_the_history_and_the_store() {
    let s3 = S3::start().await;
    let redis = harness::Redis::start().await;
    let mut config = with_storage(&redis, &s3);
    let short = conveyor::scheduler::QueueDefaults {
        retention: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    config.queue_defaults = vec![("short".into(), short)];
    // Also how long after a job ends its unnamed files go: long enough for a PUT under load.
    config.artifact_upload_expiry = Duration::from_secs(3);
    config.input_retention = Duration::from_secs(1);
    config.retention_sweep = Duration::from_millis(200);
    let server = harness::Server::start(config).await;
    let mut jobs = server.jobs().await;
    let mut worker = Worker::connect(&server, &["short", "render"], 1).await;
    worker.keep_alive();

    let gone = harness::submit_job(&mut jobs, harness::submit("short", "{}")).await;
    run_with_files(&mut worker, &gone.id, &["a.txt"], &["a.txt"]).await;
    let kept = harness::submit_job(
        &mut jobs,
        proto::SubmitJobRequest {
            keep: true,
            ..harness::submit("short", "{}")
        },
    )
    .await;
    assert!(kept.keep);
    run_with_files(&mut worker, &kept.id, &["b.txt"], &["b.txt"]).await;
    let long = harness::submit_job(&mut jobs, harness::submit("render", "{}")).await;
    let first = worker.next_assignment().await;
    put_artifact(
        &mut worker,
        &long.id,
        first.token,
        "zombie.txt",
        "text/plain",
        "x",
    )
    .await;
    assert_eq!(
        worker.fail(&long.id, first.token, "oom", true).await.code,
        0
    );
    run_with_files(&mut worker, &long.id, &["c.txt", "extra.txt"], &["c.txt"]).await;
    let input = jobs
        .create_input_upload(input_request("in.mov"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        http()
            .put(&input.url)
            .body("in")
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert_eq!(objects(&s3).len(), 6);

    let left = [
        format!("{}/attempt-1/b.txt", kept.id),
        format!("{}/attempt-2/c.txt", long.id),
    ];
    eventually("the expired and unnamed files to go", || async {
        (objects(&s3) == left.iter().cloned().collect()).then_some(())
    })
    .await;
    // And nothing more goes in later sweeps.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(objects(&s3), left.iter().cloned().collect());

    let status = jobs
        .get_job(proto::GetJobRequest {
            job_id: gone.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "gone from Redis and the history"
    );
    let key = format!(
        "{}job:{}",
        conveyor::scheduler::keys::prefix("short"),
        kept.id
    );
    let exists = redis.command(&["EXISTS", &key]).await.unwrap();
    assert_eq!(
        exists.trim(),
        ":0",
        "Redis let the kept job go too: the history keeps it"
    );
    let kept_now = harness::get(&mut jobs, &kept.id).await;
    assert!(kept_now.keep);
    assert_eq!(kept_now.artifacts[0].name, "b.txt");
    let url = jobs
        .get_artifact_url(url_request(&kept.id, "b.txt", None))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert_eq!(
        http().get(&url).send().await.unwrap().text().await.unwrap(),
        "b.txt"
    );
    assert_eq!(harness::get(&mut jobs, &long.id).await.artifacts.len(), 1);
}

/// With no keys in its configuration, the server takes the store's credentials from the
/// standard AWS chain: here a shared credentials file (what a mounted Secret or `aws
/// configure` leaves), read by a real `conveyor serve` process. Uploads only work when the
/// chain's keys are the store's, which SigV4 checks.
#[tokio::test]
async fn credentials_come_from_the_aws_chain_when_the_config_has_none() {
    let s3 = S3::start().await;
    let redis = harness::Redis::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let profile = scratch.path().join("credentials");
    std::fs::write(
        &profile,
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let port = harness::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let _server = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .arg("serve")
        .env("CONVEYOR_INSECURE", "true")
        .env("CONVEYOR_HTTP_LISTEN", "off")
        .env("REDIS_URL", redis.url())
        .env("DATABASE_URL", "none")
        .env("CONVEYOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONVEYOR_S3_BUCKET", BUCKET)
        .env("CONVEYOR_S3_ENDPOINT", &s3.endpoint)
        .env("CONVEYOR_S3_PATH_STYLE", "true")
        .env_remove("CONVEYOR_S3_ACCESS_KEY")
        .env_remove("CONVEYOR_S3_SECRET_KEY")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", &profile)
        .env("AWS_CONFIG_FILE", scratch.path().join("no-config"))
        // Nothing here answers for instance metadata; do not wait on it.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut jobs = crate::process::answering(&addr).await;
    let input = jobs
        .create_input_upload(input_request("in.mov"))
        .await
        .unwrap()
        .into_inner();
    let put = http()
        .put(&input.url)
        .body("signed by the chain's keys")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{:?}", put.text().await);
}

/// On demand: how fast the worker runtime uploads a big output through presigned multipart
/// PUTs, how fast `conveyor get --download` fetches it, and the worker's peak memory meanwhile.
/// Run: `cargo test --release --test it -- --ignored --nocapture artifact_transfer`
#[tokio::test]
#[ignore = "prints figures; run on demand"]
async fn artifact_transfer() {
    const MIB: usize = 512;
    let Watched {
        s3: _s3,
        _redis,
        server,
        job,
        events,
        ..
    } = watched_job().await;
    let script = format!(
        "head -c {} /dev/zero > \"$CONVEYOR_OUTPUT_DIR/video.mp4\"",
        MIB << 20
    );
    let worker = crate::process::worker_with(&server.addr, &[], &script);
    let events = events.await.unwrap();
    let at = |e: &proto::JobEvent| {
        let t = e.time.as_ref().unwrap();
        t.seconds as f64 + t.nanos as f64 / 1e9
    };
    let start = events
        .iter()
        .find(|e| e.progress.as_ref().is_some_and(|p| p.stage == "upload"))
        .map(at)
        .expect("upload progress");
    let end = at(events.last().unwrap());
    let peak = std::fs::read_to_string(format!("/proc/{}/status", worker.id().unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap();
    let into = tempfile::tempdir().unwrap();
    let began = std::time::Instant::now();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["get", "--addr", &server.addr, &job.id, "--download"])
        .arg(into.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let download = began.elapsed().as_secs_f64();
    let upload = end - start;
    println!("artifact transfer, {MIB} MiB through s3s-fs on loopback:");
    println!(
        "  upload (runtime, multipart, 16 MiB parts)  {upload:.2} s  {:.0} MiB/s",
        MIB as f64 / upload
    );
    println!(
        "  download (conveyor get --download)       {download:.2} s  {:.0} MiB/s",
        MIB as f64 / download
    );
    println!("  worker peak resident memory               {peak}");
}

/// Deletion goes a page at a time and keeps its place in Redis: a sweep that finds the place
/// an earlier one left (it was cut short) goes on from there, and once it reaches the end the
/// next sweep starts over.
#[tokio::test]
async fn a_sweep_cut_short_goes_on_from_where_it_stopped() {
    use conveyor::retention::{CHORE, Policy, Sweeper};
    let s3 = S3::start().await;
    let redis = harness::Redis::start().await;
    let storage = Storage::new(s3.options()).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..7 {
        let key = format!("tenant/acme/inputs/{}/in-{i}", uuid::Uuid::now_v7());
        let url = storage.upload_url(&key, None).await.unwrap();
        assert!(
            http()
                .put(&url)
                .body("x")
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
        keys.push(key);
    }
    keys.sort();
    let client =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis.url()).unwrap())
            .build()
            .unwrap();
    fred::prelude::ClientLike::init(&client).await.unwrap();
    let scheduler = conveyor::scheduler::Handle::new(client, Default::default());
    let sweeper = Sweeper {
        policy: Policy {
            default: Duration::from_secs(30 * 86400),
            queues: Default::default(),
            // Every input is past it.
            inputs: Duration::ZERO,
            unnamed: Duration::from_secs(3600),
        },
        scheduler: scheduler.clone(),
        history: None,
        storage: Some(storage),
        page: 2,
    };
    let listed = |s3: &S3| {
        let mut left: Vec<String> = objects(s3).into_iter().collect();
        left.sort();
        left
    };
    assert_eq!(listed(&s3), keys);

    // An earlier sweep stopped after the third key.
    scheduler
        .set_chore_cursor(CHORE, Some(&keys[2]))
        .await
        .unwrap();
    let now = conveyor::scheduler::now_ms() + 1000;
    let swept = sweeper.sweep(now).await.unwrap();
    assert_eq!(swept.objects, 4, "the four after the place, over two pages");
    assert_eq!(listed(&s3), keys[..3]);
    assert_eq!(
        scheduler.chore_cursor(CHORE).await.unwrap(),
        None,
        "it reached the end"
    );
    assert_eq!(
        sweeper.sweep(now).await.unwrap().objects,
        3,
        "the next starts over"
    );
    assert!(listed(&s3).is_empty());
}
