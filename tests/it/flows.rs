//! Flows: follow-ups submitted once when a job succeeds (edit, then upload), and jobs that wait
//! for others (depends_on) and end when one of those does not succeed.

use conveyor::proto::{self, DependencyFailure, JobState, Tier};
use tonic::Code;

use crate::harness::{self, Worker, get, submit, submit_job, wait_state};

fn upload_after_edit() -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        tier: Tier::Premium as i32,
        on_success: vec![proto::SubmitJobRequest {
            queue: "upload".into(),
            labels: [("network".to_string(), "tiktok".to_string())].into(),
            ..Default::default()
        }],
        max_attempts: Some(3),
        ..submit("edit", r#"{"video":"raw.mp4"}"#)
    }
}

#[tokio::test]
async fn an_edit_then_upload_flow_with_a_retried_parent_submits_one_upload() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let edit = submit_job(&mut jobs, upload_after_edit()).await;
    assert_eq!(edit.follow_ups, 1);

    let mut editor = Worker::connect(&server, &["edit"], 1).await;
    editor.keep_alive();
    let first = editor.assignment().await;
    assert_eq!(
        editor
            .fail(&edit.id, first.token, "ffmpeg crashed", true)
            .await
            .code,
        0
    );
    let second = editor.assignment().await;
    let result = r#"{"video":"edited.mp4"}"#;
    assert_eq!(
        editor.complete(&edit.id, second.token, result).await.code,
        0
    );
    // The same completion again (a worker that did not hear the answer): accepted, no effect.
    assert_eq!(
        editor.complete(&edit.id, second.token, result).await.code,
        0
    );

    let mut uploader = Worker::connect(&server, &["upload"], 4).await;
    uploader.keep_alive();
    let a = uploader.assignment().await;
    let upload = a.job.unwrap();
    assert_eq!(upload.parent_id, edit.id);
    assert_eq!(
        upload.payload,
        result.as_bytes(),
        "the parent's result is the payload"
    );
    assert_eq!(upload.content_type, "application/json");
    assert_eq!(upload.tier, Tier::Premium as i32, "the parent's tier");
    assert_eq!(upload.labels["network"], "tiktok");
    assert_eq!(
        uploader.complete(&upload.id, a.token, "posted").await.code,
        0
    );
    assert!(
        uploader
            .assignments(std::time::Duration::from_millis(500))
            .await
            .is_empty(),
        "one upload only"
    );
    let listed = jobs
        .list_jobs(proto::ListJobsRequest {
            queue: "upload".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
}

#[tokio::test]
async fn a_job_waits_for_all_it_depends_on_then_runs() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let render = submit_job(&mut jobs, submit("render", "r")).await;
    let music = submit_job(&mut jobs, submit("music", "m")).await;
    let mix = proto::SubmitJobRequest {
        depends_on: vec![render.id.clone(), music.id.clone()],
        ..submit("mix", "x")
    };
    let mix = submit_job(&mut jobs, mix).await;
    assert_eq!(mix.state, JobState::Waiting as i32);
    let waiting = get(&mut jobs, &mix.id).await;
    assert_eq!(
        waiting.blocked_reason,
        "waiting for 2 of the jobs it depends on"
    );

    let mut worker = Worker::connect(&server, &["render", "music", "mix"], 4).await;
    worker.keep_alive();
    for _ in 0..2 {
        let a = worker.assignment().await;
        let id = a.job.unwrap().id;
        assert_ne!(id, mix.id, "mix waits for both");
        assert_eq!(worker.complete(&id, a.token, "ok").await.code, 0);
    }
    let a = worker.assignment().await;
    assert_eq!(a.job.unwrap().id, mix.id);
    assert_eq!(worker.complete(&mix.id, a.token, "mixed").await.code, 0);

    // A dependency that already succeeded: straight in line.
    let again = proto::SubmitJobRequest {
        depends_on: vec![render.id.clone()],
        ..submit("mix", "y")
    };
    let again = submit_job(&mut jobs, again).await;
    let a = worker.assignment().await;
    assert_eq!(a.job.unwrap().id, again.id);
}

#[tokio::test]
async fn a_job_ends_failed_or_cancelled_when_a_dependency_fails() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let render = submit_job(&mut jobs, submit("render", "r")).await;
    let fails = proto::SubmitJobRequest {
        depends_on: vec![render.id.clone()],
        ..submit("upload", "u")
    };
    let fails = submit_job(&mut jobs, fails).await;
    let cancels = proto::SubmitJobRequest {
        depends_on: vec![render.id.clone()],
        if_dependency_fails: DependencyFailure::Cancel as i32,
        ..submit("notify", "n")
    };
    let cancels = submit_job(&mut jobs, cancels).await;
    let mut worker = Worker::connect(&server, &["render", "upload", "notify"], 4).await;
    worker.keep_alive();
    let a = worker.assignment().await;
    assert_eq!(
        worker
            .fail(&render.id, a.token, "bad input", false)
            .await
            .code,
        0
    );
    let failed = wait_state(&mut jobs, &fails.id, JobState::Failed).await;
    assert_eq!(
        failed.error,
        format!("dependency {} ended FAILED", render.id)
    );
    wait_state(&mut jobs, &cancels.id, JobState::Cancelled).await;
    assert_eq!(failed.attempt, 0, "it never ran");
}

#[tokio::test]
async fn flows_that_cannot_be_are_refused() {
    let (redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let before = crate::bad_inputs::dbsize(&redis).await;
    let mut keyed = upload_after_edit();
    keyed.on_success[0].idempotency_key = "mine".into();
    let mut deep = submit("q", "leaf");
    for _ in 0..6 {
        deep = proto::SubmitJobRequest {
            on_success: vec![deep],
            ..submit("q", "level")
        };
    }
    let mut bad_child = upload_after_edit();
    bad_child.on_success[0].queue = "no spaces".into();
    let cases = [
        (keyed, "on_success[0].idempotency_key"),
        (deep, "5 levels"),
        (bad_child, "on_success[0].queue"),
        (
            proto::SubmitJobRequest {
                depends_on: vec!["not-a-job".into()],
                ..submit("q", "x")
            },
            "not a job id",
        ),
        (
            proto::SubmitJobRequest {
                depends_on: vec!["q:0190b5a0-0000-7000-8000-000000000000".into()],
                ..submit("q", "x")
            },
            "depends_on: no job",
        ),
        (
            proto::SubmitJobRequest {
                if_dependency_fails: 9,
                ..submit("q", "x")
            },
            "if_dependency_fails",
        ),
    ];
    for (request, says) in cases {
        let status = jobs.submit_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    assert_eq!(
        crate::bad_inputs::dbsize(&redis).await,
        before,
        "nothing written"
    );
}

/// After a Redis loss the history restores a WAITING job (still waiting, and told when its
/// dependency ends), a parent's follow-ups and a job's limit key.
pub async fn flows_and_limit_keys_survive_a_redis_loss(backend: crate::history::Backend) {
    let (mut redis, server, _url) = crate::history::start(backend).await;
    let mut jobs = server.jobs().await;
    let kept = proto::SubmitJobRequest {
        keep: true,
        ..submit("render", "r")
    };
    let render = submit_job(&mut jobs, kept).await;
    let mix = proto::SubmitJobRequest {
        depends_on: vec![render.id.clone()],
        ..submit("mix", "m")
    };
    let mix = submit_job(&mut jobs, mix).await;
    let edit = proto::SubmitJobRequest {
        limit_key: "acct:1".into(),
        ..upload_after_edit()
    };
    let edit = submit_job(&mut jobs, edit).await;

    redis.kill().await;
    redis.restart().await;
    let key = format!("cv:{{mix}}:job:{}", mix.id);
    harness::eventually("the restore", || {
        let (redis, key) = (&redis, key.clone());
        async move { (redis.command(&["EXISTS", &key]).await? == ":1\r\n").then_some(()) }
    })
    .await;
    assert_eq!(
        get(&mut jobs, &mix.id).await.state,
        JobState::Waiting as i32
    );
    assert!(
        get(&mut jobs, &render.id).await.keep,
        "keep survives the loss"
    );

    let mut worker = Worker::connect(&server, &["render", "mix", "edit", "upload"], 4).await;
    worker.keep_alive();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let a = worker.assignment().await;
        let job = a.job.unwrap();
        if job.id == edit.id {
            assert_eq!(job.limit_key, "acct:1");
        }
        if job.queue == "upload" {
            assert_eq!(job.parent_id, edit.id);
        }
        assert_eq!(worker.complete(&job.id, a.token, "{}").await.code, 0);
        seen.push(job.queue);
    }
    seen.sort();
    assert_eq!(seen, ["edit", "mix", "render", "upload"]);
}
