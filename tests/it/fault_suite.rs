//! The fault suite: real processes (two `conveyor serve` replicas on a private PostgreSQL and
//! redis-server, two `conveyor worker` processes) run a steady stream of deterministic jobs while
//! one fault strikes, and a history checker says what became of every accepted job: lost, two
//! accepted results (or two jobs for one submission), a finished result thrown away, two
//! executions at once. CI runs each scenario
//! small; `full` (ignored) runs them all at 1,000 jobs each and prints the table (README,
//! "Fault suite").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conveyor::proto::{self, JobState, job_service_client::JobServiceClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::harness::{self, Redis, free_port};
use crate::postgres::Postgres;
use crate::process::{answering, replica_with};
use crate::redis_groups::{Cluster, Sentinels};

const BIN: &str = env!("CARGO_BIN_EXE_conveyor");
const QUEUE: &str = "faults";
/// Submits per second; two workers of four slots finish 80 jobs/s of `JOB_SECONDS`.
const RATE: f64 = 40.0;
const JOB_SECONDS: &str = "0.1";
/// Shorter than the defaults, so that a scenario takes seconds: a worker silent for 3 s is cut
/// off and has 10 s to come back before its jobs go to another; what a killed replica did not
/// write to SQL is repaired within 5 s.
const SETTINGS: &[(&str, &str)] = &[
    ("CONVEYOR_HEARTBEAT", "1s"),
    ("CONVEYOR_GRACE", "10s"),
    ("CONVEYOR_LEASE_TTL", "10s"),
    ("CONVEYOR_REDIS_TIMEOUT", "2s"),
    // A replica killed with history writes unflushed leaves them to the repair.
    ("CONVEYOR_HISTORY_REPAIR", "5s"),
];

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL to a worker with jobs running; it does not come back.
    WorkerKilled,
    /// SIGSTOP to a worker for 5 s (cut off after 3 s, back within the grace), then SIGCONT.
    WorkerStopped,
    /// SIGKILL to the replica both workers are connected to; it does not come back.
    ReplicaKilled,
    /// Redis killed and started again with no data.
    RedisEmptied,
    /// Redis busy (DEBUG SLEEP) for 8 s, past the servers' 2 s timeout.
    RedisStalled,
    /// Every PostgreSQL process stopped (SIGSTOP) for 20 s (6 s in CI), then continued.
    DatabaseDown,
    /// On a 6-node Redis Cluster: the master holding the queue SIGKILLed; its replica takes over.
    ClusterMasterKilled,
    /// On a Redis Cluster: every slot of the queue's master (the queue's among them) moved to
    /// another master with `redis-cli --cluster reshard`.
    ClusterResharded,
    /// On Redis with Sentinel: the master SIGKILLed; the sentinels promote its replica.
    SentinelFailover,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Fault::WorkerKilled,
        Fault::WorkerStopped,
        Fault::ReplicaKilled,
        Fault::RedisEmptied,
        Fault::RedisStalled,
        Fault::DatabaseDown,
        Fault::ClusterMasterKilled,
        Fault::ClusterResharded,
        Fault::SentinelFailover,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::WorkerKilled => "worker killed",
            Fault::WorkerStopped => "worker stopped 5 s",
            Fault::ReplicaKilled => "replica killed",
            Fault::RedisEmptied => "Redis emptied",
            Fault::RedisStalled => "Redis stalled 8 s",
            Fault::DatabaseDown => "database stopped",
            Fault::ClusterMasterKilled => "Cluster master killed",
            Fault::ClusterResharded => "Cluster resharded",
            Fault::SentinelFailover => "Sentinel failover",
        }
    }

    /// The Redis the scenario runs on.
    async fn backing(self) -> Backing {
        match self {
            Fault::ClusterMasterKilled | Fault::ClusterResharded => {
                Backing::Cluster(Cluster::start_with(1).await)
            }
            Fault::SentinelFailover => Backing::Sentinel(Sentinels::start().await),
            _ => Backing::Single(Redis::start().await),
        }
    }
}

/// The Redis the replicas share: one server, a Cluster or a Sentinel group.
enum Backing {
    Single(Redis),
    Cluster(Cluster),
    Sentinel(Sentinels),
}

impl Backing {
    fn url(&self) -> String {
        match self {
            Backing::Single(redis) => redis.url(),
            Backing::Cluster(cluster) => cluster.url(),
            Backing::Sentinel(group) => group.url(),
        }
    }

    fn single(&mut self) -> &mut Redis {
        match self {
            Backing::Single(redis) => redis,
            _ => panic!("this fault needs a single Redis"),
        }
    }

    fn cluster(&mut self) -> &mut Cluster {
        match self {
            Backing::Cluster(cluster) => cluster,
            _ => panic!("this fault needs a Redis Cluster"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What the servers, workers and stores of one scenario are.
struct Rig {
    dir: tempfile::TempDir,
    redis: Backing,
    postgres: Postgres,
    ports: [u16; 2],
    replicas: Vec<Child>,
    workers: Vec<Child>,
    clients: Vec<JobServiceClient<Channel>>,
}

impl Rig {
    async fn start(fault: Fault) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let redis = fault.backing().await;
        let postgres = Postgres::start();
        let ports = [free_port(), free_port()];
        let mut rig = Rig {
            dir,
            redis,
            postgres,
            ports,
            replicas: Vec::new(),
            workers: Vec::new(),
            clients: Vec::new(),
        };
        // One after the other: the first one migrates the database.
        for (i, port) in ports.into_iter().enumerate() {
            let log = std::fs::File::create(rig.file(&format!("replica-{i}.log"))).unwrap();
            let url = rig.postgres.url("");
            let replica = replica_with(&rig.redis.url(), &url, port, SETTINGS, log);
            rig.replicas.push(replica);
            // A replica that does not come up fails the test with what it wrote, which goes
            // with the rig's folder otherwise.
            let addr = rig.addr(i);
            if tokio::spawn(async move { answering(&addr).await })
                .await
                .is_err()
            {
                let log = std::fs::read_to_string(rig.file(&format!("replica-{i}.log")));
                panic!(
                    "replica {i} did not answer; its log:\n{}",
                    log.unwrap_or_default()
                );
            }
            let endpoint = Endpoint::from_shared(rig.addr(i)).unwrap();
            rig.clients
                .push(JobServiceClient::new(endpoint.connect_lazy()));
        }
        let addrs = format!("{},{}", rig.addr(0), rig.addr(1));
        for i in 0..2 {
            let id = format!("w{i}");
            let log = std::fs::File::create(rig.file(&format!("{id}.log"))).unwrap();
            let worker = Command::new(BIN)
                .args([
                    "worker",
                    "--addr",
                    &addrs,
                    "--queue",
                    QUEUE,
                    "--concurrency",
                    "4",
                ])
                .args(["--worker-id", &id, "--", "sh", "-c", &rig.script(&id)])
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            rig.workers.push(worker);
        }
        rig
    }

    fn addr(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Each execution logs its start and its end (`ok`, or `term` when it was stopped) with the
    /// time, and answers a result naming itself: `worker.pid.start`.
    fn script(&self, worker: &str) -> String {
        let log = self.file("executions").display().to_string();
        r#"t0=$(date +%s%3N); tok=WID.$$.$t0
trap 'echo "end $CONVEYOR_JOB_ID $tok $(date +%s%3N) term" >> LOG; exit 143' TERM
echo "start $CONVEYOR_JOB_ID $tok $t0" >> LOG
cat > /dev/null
sleep SECONDS
echo "end $CONVEYOR_JOB_ID $tok $(date +%s%3N) ok" >> LOG
echo "RESULT {\"run\":\"$tok\"}""#
            .replace("WID", worker)
            .replace("LOG", &log)
            .replace("SECONDS", JOB_SECONDS)
    }

    fn signal(child: &Child, signal: Signal) {
        let pid = Pid::from_raw(child.id().expect("the process is running") as i32);
        kill(pid, signal).unwrap();
    }

    /// Strikes, and returns once the fault is over (or, for a kill, once it is done).
    async fn strike(&mut self, fault: Fault, full: bool) {
        match fault {
            Fault::WorkerKilled => Rig::signal(&self.workers[0], Signal::SIGKILL),
            Fault::WorkerStopped => {
                Rig::signal(&self.workers[0], Signal::SIGSTOP);
                tokio::time::sleep(Duration::from_secs(5)).await;
                Rig::signal(&self.workers[0], Signal::SIGCONT);
            }
            Fault::ReplicaKilled => Rig::signal(&self.replicas[0], Signal::SIGKILL),
            Fault::RedisEmptied => {
                self.redis.single().kill().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.redis.single().restart().await;
            }
            Fault::RedisStalled => {
                let stall = self.redis.single().stall(Duration::from_secs(8)).await;
                stall.await.unwrap();
            }
            Fault::DatabaseDown => {
                self.postgres.freeze();
                let down = if full { 20 } else { 6 };
                tokio::time::sleep(Duration::from_secs(down)).await;
                self.postgres.thaw();
            }
            Fault::ClusterMasterKilled => {
                let cluster = self.redis.cluster();
                let master = cluster.owner(&format!("cv:{{{QUEUE}}}:ok")).await;
                cluster.kill(master).await;
            }
            Fault::ClusterResharded => {
                let cluster = self.redis.cluster();
                let home = cluster.owner(&format!("cv:{{{QUEUE}}}:ok")).await;
                let away = cluster.other_master(home).await;
                cluster.reshard_all(home, away).await;
            }
            Fault::SentinelFailover => match &mut self.redis {
                Backing::Sentinel(group) => group.kill_master().await,
                _ => unreachable!("a Sentinel fault runs on Sentinel"),
            },
        }
    }

    /// The worker whose executions the fault cut short for good (its results died with it).
    fn killed_worker(fault: Fault) -> Option<&'static str> {
        matches!(fault, Fault::WorkerKilled).then_some("w0")
    }

    /// The last lines of every process's log, for a scenario that went wrong.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["replica-0.log", "replica-1.log", "w0.log", "w1.log"] {
            let text = std::fs::read_to_string(self.file(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}\n"));
            for line in &lines[lines.len().saturating_sub(25)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// One accepted submit.
struct Accepted {
    id: String,
    /// Answers other than OK before it (each retried with the same idempotency key).
    retries: u32,
}

/// Submits `count` jobs at `RATE` through both replicas in turn, each with its own idempotency
/// key, retrying an unanswered or failed call elsewhere as a client should. Returns what was
/// accepted, and what was refused for good (a scenario with any refusal fails).
async fn submit_all(
    clients: Vec<JobServiceClient<Channel>>,
    count: usize,
    started: Arc<Mutex<usize>>,
) -> (Vec<Accepted>, Vec<String>) {
    let mut calls = Vec::new();
    let pace = Duration::from_secs_f64(1.0 / RATE);
    let begin = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(begin + pace * i as u32).await;
        *started.lock().unwrap() += 1;
        let clients = clients.clone();
        calls.push(tokio::spawn(async move {
            let request = proto::SubmitJobRequest {
                queue: QUEUE.into(),
                payload: format!(r#"{{"n":{i}}}"#).into_bytes(),
                tier: proto::Tier::Free as i32,
                idempotency_key: format!("fault-{i}"),
                ..Default::default()
            };
            let give_up = Instant::now() + Duration::from_secs(90);
            let mut retries = 0;
            loop {
                let mut client = clients[(i + retries as usize) % clients.len()].clone();
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(Duration::from_secs(3));
                let why = match client.submit_job(call).await {
                    Ok(answer) => {
                        let id = answer.into_inner().job.unwrap().id;
                        return Ok(Accepted { id, retries });
                    }
                    Err(status) => status,
                };
                let retryable = matches!(
                    why.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown
                        | Code::Aborted
                );
                if !retryable || Instant::now() > give_up {
                    return Err(format!("job {i}: {why}"));
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(a) => accepted.push(a),
            Err(e) => refused.push(e),
        }
    }
    (accepted, refused)
}

/// One run of a job's command, from the executions log.
#[derive(Debug)]
struct Execution {
    job: String,
    token: String,
    worker: String,
    pid: i32,
    start: i64,
    /// When it ended, and whether it finished (`ok`) or was stopped.
    end: Option<(i64, bool)>,
}

fn executions(log: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: Vec<Execution> = Vec::new();
    let mut by_token = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["start", job, token, t0] => {
                let mut parts = token.split('.');
                let worker = parts.next().unwrap().to_string();
                let pid = parts.next().unwrap().parse().unwrap();
                by_token.insert(token.to_string(), runs.len());
                runs.push(Execution {
                    job: job.to_string(),
                    token: token.to_string(),
                    worker,
                    pid,
                    start: t0.parse().unwrap(),
                    end: None,
                });
            }
            ["end", _, token, t1, how] => {
                let run = &mut runs[by_token[*token]];
                run.end = Some((t1.parse().unwrap(), *how == "ok"));
            }
            _ => panic!("a line the job command did not write: {line:?}"),
        }
    }
    runs
}

/// Still running (a command that outlived what should have stopped it)?
fn still_running(run: &Execution, log: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.pid)).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(&*log.to_string_lossy())
}

/// What the checker found; every count but the totals must be 0.
#[derive(Debug, Default)]
struct Verdict {
    jobs: usize,
    accepted: usize,
    refused: usize,
    retried_submits: usize,
    succeeded: usize,
    failed: usize,
    lost: usize,
    two_results: usize,
    discarded: usize,
    concurrent: usize,
    run_again: usize,
    running_at_fault: usize,
    /// The longest time, from the fault on, with no job finishing (ms).
    longest_pause: i64,
    /// From the fault until the last job it interrupted had finished (ms).
    rerun_done: Option<i64>,
    notes: Vec<String>,
}

impl Verdict {
    fn header() -> String {
        "| scenario | accepted | succeeded | failed | lost | two results | results discarded \
         | run twice at once | run again | submits retried | longest pause | interrupted jobs done |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
            .to_string()
    }

    fn row(&self, fault: Fault) -> String {
        let rerun = match self.rerun_done {
            Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
            None => "-".into(),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} |",
            fault.name(),
            self.accepted,
            self.succeeded,
            self.failed,
            self.lost,
            self.two_results,
            self.discarded,
            self.concurrent,
            self.run_again,
            self.retried_submits,
            self.longest_pause as f64 / 1000.0,
            rerun,
        )
    }

    fn holds(&self) -> bool {
        self.refused == 0
            && self.accepted == self.jobs
            && self.lost == 0
            && self.two_results == 0
            && self.discarded == 0
            && self.concurrent == 0
            && self.running_at_fault > 0
    }
}

/// The job as any replica still up tells it; `None` when none knows it.
async fn job_state(clients: &[JobServiceClient<Channel>], id: &str) -> Option<proto::Job> {
    for client in clients {
        let mut client = client.clone();
        let mut call = tonic::Request::new(proto::GetJobRequest { job_id: id.into() });
        call.set_timeout(Duration::from_secs(3));
        match client.get_job(call).await {
            Ok(answer) => return answer.into_inner().job,
            Err(status) if status.code() == Code::NotFound => return None,
            Err(_) => continue,
        }
    }
    None
}

fn terminal(job: &proto::Job) -> bool {
    [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        .iter()
        .any(|s| *s as i32 == job.state)
}

/// Runs one scenario: jobs flow, the fault strikes a third of the way in, everything settles,
/// and the checker reads the history.
async fn scenario(fault: Fault, count: usize, full: bool) -> Verdict {
    let mut rig = Rig::start(fault).await;
    let started = Arc::new(Mutex::new(0));
    let submitting = tokio::spawn(submit_all(rig.clients.clone(), count, started.clone()));
    let log = rig.file("executions");
    harness::eventually("a third of the jobs submitted, and some running", || {
        let submitted = *started.lock().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let running = text.matches("start ").count() > text.matches("end ").count();
        async move { (submitted >= count / 3 && running).then_some(()) }
    })
    .await;
    let fault_at = now_ms();
    rig.strike(fault, full).await;
    let (accepted, refused) = submitting.await.unwrap();

    let mut verdict = Verdict {
        jobs: count,
        accepted: accepted.len(),
        refused: refused.len(),
        retried_submits: accepted.iter().filter(|a| a.retries > 0).count(),
        ..Default::default()
    };
    verdict.notes.extend(refused.into_iter().take(5));

    // Every accepted job to end, as the replicas still up say it.
    let settle = if full { 300 } else { 120 };
    let until = Instant::now() + Duration::from_secs(settle);
    let mut pending: Vec<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    let mut ended: HashMap<String, proto::Job> = HashMap::new();
    let alive: Vec<_> = match fault {
        Fault::ReplicaKilled => rig.clients[1..].to_vec(),
        _ => rig.clients.clone(),
    };
    while !pending.is_empty() && Instant::now() < until {
        let mut still = Vec::new();
        for id in pending {
            match job_state(&alive, id).await {
                Some(job) if terminal(&job) => {
                    ended.insert(id.to_string(), job);
                }
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    verdict.lost += pending.len();
    for id in pending.iter().take(5) {
        let job = job_state(&alive, id).await;
        let state = job.map(|j| format!("{:?}", JobState::try_from(j.state)));
        verdict.notes.push(format!(
            "job {id} did not end: {}",
            state.unwrap_or("NOT_FOUND".into())
        ));
    }
    for job in ended.values() {
        match JobState::try_from(job.state).unwrap() {
            JobState::Succeeded => verdict.succeeded += 1,
            _ => verdict.failed += 1,
        }
    }

    // The system of record: every accepted job ended there too, with at most one accepted result.
    let ids: Vec<String> = accepted.iter().map(|a| format!("'{}'", a.id)).collect();
    let in_list = ids.join(",");
    let sql = format!(
        "SELECT count(*) FROM jobs WHERE id IN ({in_list}) \
         AND state IN ('SUCCEEDED','FAILED','CANCELLED')"
    );
    let recorded = |postgres: &Postgres| -> usize { postgres.query(&sql)[0].parse().unwrap() };
    let until = Instant::now() + Duration::from_secs(60);
    while recorded(&rig.postgres) < ended.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let missing = ended.len().saturating_sub(recorded(&rig.postgres));
    if missing > 0 {
        verdict.lost += missing;
        verdict
            .notes
            .push(format!("{missing} ended jobs not ended in SQL"));
        let done: std::collections::HashSet<String> = rig
            .postgres
            .query(&format!(
                "SELECT id FROM jobs WHERE id IN ({in_list}) \
                 AND state IN ('SUCCEEDED','FAILED','CANCELLED')"
            ))
            .into_iter()
            .collect();
        for id in ended.keys().filter(|id| !done.contains(*id)).take(5) {
            let row = rig.postgres.query(&format!(
                "SELECT state, attempt, finished_ms, idempotency_key FROM jobs WHERE id = '{id}'"
            ));
            let attempts = rig.postgres.query(&format!(
                "SELECT attempt, worker, outcome FROM job_attempts WHERE job_id = '{id}'"
            ));
            let key = format!("cv:{{{QUEUE}}}:job:{id}");
            let fields = [
                "HMGET", &key, "idem", "created", "attempt", "state", "token",
            ];
            let redis = match &rig.redis {
                Backing::Single(redis) => redis.command(&fields).await.unwrap_or_default(),
                _ => String::new(),
            };
            let idem = redis.split("\r\n").nth(2).unwrap_or_default().to_string();
            let same_key = rig.postgres.query(&format!(
                "SELECT id, state, created_ms FROM jobs WHERE idempotency_key = '{idem}'"
            ));
            verdict.notes.push(format!(
                "SQL of {id}: {row:?}; attempts {attempts:?}; Redis {redis:?}; rows of its key {same_key:?}"
            ));
        }
    }
    let doubles = rig.postgres.query(
        "SELECT job_id FROM job_attempts WHERE outcome = 'SUCCEEDED' \
         GROUP BY job_id HAVING count(*) > 1",
    );
    verdict.two_results = doubles.len();
    for id in doubles.iter().take(5) {
        verdict
            .notes
            .push(format!("job {id}: two accepted results"));
    }
    // One submission (one idempotency key) that became two jobs ran twice as well. (Rows of
    // submit calls refused while Redis was out of reach go once Redis can say it has none of
    // them: a few seconds are given.)
    let twins_sql = format!(
        "SELECT idempotency_key FROM jobs WHERE queue = '{QUEUE}' \
         GROUP BY idempotency_key HAVING count(*) > 1"
    );
    let until = Instant::now() + Duration::from_secs(15);
    let mut twins = rig.postgres.query(&twins_sql);
    while !twins.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        twins = rig.postgres.query(&twins_sql);
    }
    verdict.two_results += twins.len();
    for key in twins.iter().take(5) {
        let rows = rig.postgres.query(&format!(
            "SELECT id, state, created_ms, attempt FROM jobs WHERE idempotency_key = '{key}'"
        ));
        verdict
            .notes
            .push(format!("submission {key}: two jobs {rows:?}"));
    }

    // Executions: which one's result each job kept, which finished and were not kept, which
    // overlapped another of the same job.
    let runs = executions(&log);
    let killed = Rig::killed_worker(fault);
    let mut per_job: HashMap<&str, Vec<&Execution>> = HashMap::new();
    for run in &runs {
        per_job.entry(&run.job).or_default().push(run);
    }
    let mut completions = Vec::new();
    let mut interrupted_done = None;
    for (id, job) in &ended {
        let kept = serde_json::from_str::<serde_json::Value>(&job.result)
            .ok()
            .and_then(|v| v["run"].as_str().map(str::to_string));
        let runs = per_job.get(id.as_str()).cloned().unwrap_or_default();
        if runs.len() > 1 {
            verdict.run_again += 1;
        }
        for run in &runs {
            let finished = matches!(run.end, Some((_, true)));
            let is_kept = kept.as_deref() == Some(run.token.as_str());
            if is_kept {
                let at = run.end.map(|(t, _)| t).unwrap_or(run.start);
                completions.push(at);
                // Run again after a run the fault cut short: how long until it was done.
                if runs.len() > 1 && runs.iter().any(|r| r.start <= fault_at) {
                    interrupted_done = Some(interrupted_done.unwrap_or(0).max(at - fault_at));
                }
            } else if finished && Some(run.worker.as_str()) != killed {
                verdict.discarded += 1;
                verdict.notes.push(format!(
                    "job {id}: the result of {} was thrown away (kept {kept:?})",
                    run.token
                ));
            }
        }
    }
    verdict.rerun_done = interrupted_done;
    // Two executions of one job at once: intervals that overlap. A run with no end line was
    // SIGKILLed: with its worker (it ended by then, plus the guard's 2 s), or it is still running.
    for (id, runs) in &per_job {
        let interval = |r: &Execution| {
            let end = match r.end {
                Some((t, _)) => t,
                None if still_running(r, &log) => i64::MAX,
                None if Some(r.worker.as_str()) == killed => fault_at + 2_000,
                None => i64::MAX,
            };
            (r.start, end)
        };
        let mut spans: Vec<(i64, i64)> = runs.iter().map(|r| interval(r)).collect();
        spans.sort();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            verdict.concurrent += 1;
            verdict
                .notes
                .push(format!("job {id}: two executions at once: {runs:?}"));
        }
    }
    verdict.running_at_fault = runs
        .iter()
        .filter(|r| r.start <= fault_at && r.end.is_none_or(|(t, _)| t > fault_at))
        .count();
    completions.sort();
    let mut last = fault_at;
    for at in completions.into_iter().filter(|t| *t > fault_at) {
        verdict.longest_pause = verdict.longest_pause.max(at - last);
        last = at;
    }
    if !verdict.holds() {
        verdict.notes.push(rig.logs());
    }
    if std::env::var_os("CONVEYOR_FAULT_KEEP").is_some() {
        eprintln!(
            "{}: logs kept in {}",
            fault.name(),
            rig.dir.keep().display()
        );
    }
    verdict
}

fn jobs_asked(default: usize) -> usize {
    std::env::var("CONVEYOR_FAULT_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

async fn short(fault: Fault) {
    harness::logs();
    let verdict = scenario(fault, jobs_asked(60), false).await;
    println!("{}\n{}", Verdict::header(), verdict.row(fault));
    assert!(
        verdict.holds(),
        "{}: {verdict:#?}\n{}",
        fault.name(),
        verdict.notes.join("\n")
    );
}

#[tokio::test]
async fn a_killed_worker_loses_nothing() {
    short(Fault::WorkerKilled).await;
}

#[tokio::test]
async fn a_stopped_worker_loses_nothing() {
    short(Fault::WorkerStopped).await;
}

#[tokio::test]
async fn a_killed_replica_loses_nothing() {
    short(Fault::ReplicaKilled).await;
}

#[tokio::test]
async fn an_emptied_redis_loses_nothing() {
    short(Fault::RedisEmptied).await;
}

#[tokio::test]
async fn a_stalled_redis_loses_nothing() {
    short(Fault::RedisStalled).await;
}

#[tokio::test]
async fn a_stopped_database_loses_nothing() {
    short(Fault::DatabaseDown).await;
}

#[tokio::test]
async fn a_killed_cluster_master_loses_nothing() {
    short(Fault::ClusterMasterKilled).await;
}

#[tokio::test]
async fn a_cluster_reshard_loses_nothing() {
    short(Fault::ClusterResharded).await;
}

#[tokio::test]
async fn a_sentinel_failover_loses_nothing() {
    short(Fault::SentinelFailover).await;
}

/// The whole suite at 1,000 jobs per scenario (`CONVEYOR_FAULT_JOBS` for another count), one
/// scenario after the other, and the table:
/// `cargo test --release --test it fault_suite::full -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "minutes long; run on demand (README, Fault suite)"]
async fn full() {
    harness::logs();
    let count = jobs_asked(1_000);
    let mut rows = Vec::new();
    let mut broken = Vec::new();
    for fault in Fault::ALL {
        let verdict = scenario(fault, count, true).await;
        eprintln!("{}", verdict.row(fault));
        rows.push(verdict.row(fault));
        if !verdict.holds() {
            broken.push(format!("{}: {}", fault.name(), verdict.notes.join("\n")));
        }
    }
    println!("\n{count} jobs per scenario\n{}", Verdict::header());
    for row in rows {
        println!("{row}");
    }
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
}
