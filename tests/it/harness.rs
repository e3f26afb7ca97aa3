//! Starts real servers for a test: a private redis-server on a free port and Conveyor
//! in-process on an ephemeral port, and hands out generated gRPC clients.

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::time::Duration;

use conveyor::config::Config;
use conveyor::proto::job_service_client::JobServiceClient;
use conveyor::proto::{
    self, connect_request::Msg as WorkerMsg, connect_response::Msg as ServerMsg,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What a worker stream receives.
pub type Streaming = tonic::Streaming<proto::ConnectResponse>;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, failing the test after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    /// Where an append-only file keeps data across `restart`; `None` keeps nothing.
    dir: Option<std::path::PathBuf>,
    child: tokio::process::Child,
}

fn spawn_redis(port: u16, dir: Option<&std::path::Path>) -> tokio::process::Child {
    let mut command = tokio::process::Command::new("redis-server");
    conveyor::child::die_with_parent(&mut command, nix::sys::signal::Signal::SIGKILL);
    command.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        // DEBUG SLEEP stalls it in the fault tests.
        "--enable-debug-command",
        "local",
    ]);
    match dir {
        Some(dir) => command.args(["--appendonly", "yes", "--dir"]).arg(dir),
        None => command.args(["--appendonly", "no"]),
    };
    command
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)")
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::launch(None).await
    }

    /// A Redis whose data survives `restart` (append-only file under `dir`).
    pub async fn start_persistent(dir: &std::path::Path) -> Redis {
        Redis::launch(Some(dir.to_path_buf())).await
    }

    async fn launch(dir: Option<std::path::PathBuf>) -> Redis {
        let port = free_port();
        let child = spawn_redis(port, dir.as_deref());
        let redis = Redis { port, dir, child };
        eventually("redis-server to answer", || redis.ping()).await;
        redis
    }

    /// Kills the server (SIGKILL, no goodbye).
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.child = spawn_redis(self.port, self.dir.as_deref());
        eventually("redis-server to answer again", || self.ping()).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ping(&self) -> Option<()> {
        let reply = self.command(&["PING"]).await?;
        (reply == "+PONG\r\n").then_some(())
    }

    /// Stalls the server for `how_long` (DEBUG SLEEP): every client waits, as behind a slow disk
    /// or a long command. Returns once the command is sent; the task ends with the stall.
    pub async fn stall(&self, how_long: Duration) -> JoinHandle<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let seconds = format!("{:.3}", how_long.as_secs_f64());
        let command = format!(
            "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{seconds}\r\n",
            seconds.len()
        );
        stream.write_all(command.as_bytes()).await.unwrap();
        tokio::spawn(async move {
            let mut reply = [0u8; 16];
            let _ = stream.read(&mut reply).await;
        })
    }

    /// Sends one command and returns the raw RESP reply (enough for tests).
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(out.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 1 << 20];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// A fresh SQLite history in its own folder (left for the OS to clean with /tmp).
pub fn sqlite_url() -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    format!("sqlite://{}?mode=rwc", dir.join("conveyor.db").display())
}

/// The test defaults: a fresh SQLite history, and short timers so failure paths finish in well
/// under a second.
pub fn config(redis: &Redis) -> Config {
    config_for(redis.url())
}

/// The test defaults on the Redis at `url` (a Cluster's or a Sentinel group's).
pub fn config_for(url: String) -> Config {
    let mut c = Config::with_redis(url);
    c.database_url = Some(sqlite_url());
    c.history_flush = Duration::from_millis(20);
    c.grace = Duration::from_millis(500);
    c.heartbeat = Duration::from_millis(500);
    c.sweep = Duration::from_millis(500);
    c.backoff = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c.redis_timeout = Duration::from_secs(1);
    // Tests submit thousands of jobs at once; the rate limit has its own tests.
    c.submit_rate = [None; 4];
    // Its claim is a Redis key, which tests counting keys would see; retention has its own.
    c.retention_sweep = Duration::ZERO;
    c.health_check = Duration::from_millis(200);
    c.shutdown_timeout = Duration::from_secs(10);
    c
}

/// A Conveyor server running in this process.
pub struct Server {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        Server::start_at(config, "127.0.0.1:0").await
    }

    /// Starts on a given address, e.g. where a stopped server listened before.
    pub async fn start_at(config: Config, addr: &str) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            conveyor::server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server failed");
        });
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    /// Stops the server the way SIGTERM would (workers get Drain) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.take().unwrap().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Server logs go to the test's output (shown for failing tests); RUST_LOG filters them.
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Redis plus one server: what most tests need.
pub async fn start() -> (Redis, Server) {
    logs();
    let redis = Redis::start().await;
    let server = Server::start(config(&redis)).await;
    (redis, server)
}

pub fn submit(queue: &str, payload: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        queue: queue.into(),
        payload: payload.as_bytes().to_vec(),
        tier: proto::Tier::Free as i32,
        ..Default::default()
    }
}

pub async fn submit_job(
    jobs: &mut JobServiceClient<Channel>,
    req: proto::SubmitJobRequest,
) -> proto::Job {
    jobs.submit_job(req)
        .await
        .expect("submit")
        .into_inner()
        .job
        .unwrap()
}

pub async fn get(jobs: &mut JobServiceClient<Channel>, id: &str) -> proto::Job {
    jobs.get_job(proto::GetJobRequest { job_id: id.into() })
        .await
        .expect("get")
        .into_inner()
        .job
        .unwrap()
}

pub async fn wait_state(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
    state: proto::JobState,
) -> proto::Job {
    eventually(&format!("job {id} to be {state:?}"), || {
        let mut jobs = jobs.clone();
        async move {
            let job = get(&mut jobs, id).await;
            (job.state == state as i32).then_some(job)
        }
    })
    .await
}

/// Drives the worker protocol by hand, so tests can say exactly what a worker sends.
pub struct Worker {
    pub tx: mpsc::Sender<proto::ConnectRequest>,
    pub rx: tonic::Streaming<proto::ConnectResponse>,
    pub welcome: proto::Welcome,
}

pub fn hello(queues: &[&str], concurrency: u32, worker_id: &str) -> proto::Hello {
    proto::Hello {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        concurrency,
        worker_id: worker_id.into(),
        version: "test".into(),
        ..Default::default()
    }
}

impl Worker {
    /// Opens a stream whose first message is `first` and returns the stream's two ends.
    pub async fn open(
        server: &Server,
        first: WorkerMsg,
    ) -> Result<(mpsc::Sender<proto::ConnectRequest>, Streaming), tonic::Status> {
        Worker::open_on(server.channel().await, None, first).await
    }

    /// Opens a stream on `channel`, presenting `token` when given, whose first message is
    /// `first`; the server's refusal, if it refuses the call.
    pub async fn open_on(
        channel: Channel,
        token: Option<&str>,
        first: WorkerMsg,
    ) -> Result<(mpsc::Sender<proto::ConnectRequest>, Streaming), tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(proto::ConnectRequest { msg: Some(first) })
            .await
            .unwrap();
        let target = conveyor::client::Target {
            token: token.map(str::to_string),
            ..Default::default()
        };
        let mut client = conveyor::client::workers(channel, target.bearer().unwrap());
        let response = client.connect(ReceiverStream::new(rx)).await?;
        Ok((tx, response.into_inner()))
    }

    /// The worker once its Welcome has arrived.
    pub async fn welcomed(tx: mpsc::Sender<proto::ConnectRequest>, mut rx: Streaming) -> Worker {
        let welcome = match rx.next().await {
            Some(Ok(proto::ConnectResponse {
                msg: Some(ServerMsg::Welcome(w)),
            })) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        Worker { tx, rx, welcome }
    }

    pub async fn connect_with(server: &Server, hello: proto::Hello) -> Worker {
        let (tx, rx) = Worker::open(server, WorkerMsg::Hello(hello))
            .await
            .expect("connect");
        Worker::welcomed(tx, rx).await
    }

    pub async fn connect(server: &Server, queues: &[&str], concurrency: u32) -> Worker {
        Worker::connect_with(server, hello(queues, concurrency, "")).await
    }

    /// Connects presenting `token` (a worker token, or any credential of a role that may).
    pub async fn connect_with_token(
        server: &Server,
        token: &str,
        queues: &[&str],
        concurrency: u32,
    ) -> Worker {
        let hello = WorkerMsg::Hello(hello(queues, concurrency, ""));
        let (tx, rx) = Worker::open_on(server.channel().await, Some(token), hello)
            .await
            .expect("connect");
        Worker::welcomed(tx, rx).await
    }

    /// Sends heartbeats in the background, as a live worker does, for tests that wait longer
    /// than the server's silence limit.
    pub fn keep_alive(&self) -> JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let beat = || proto::ConnectRequest {
                msg: Some(WorkerMsg::Heartbeat(proto::Heartbeat {})),
            };
            while tx.send(beat()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    pub async fn send(&self, msg: WorkerMsg) {
        self.tx
            .send(proto::ConnectRequest { msg: Some(msg) })
            .await
            .unwrap();
    }

    /// The next message other than a heartbeat.
    pub async fn recv(&mut self) -> ServerMsg {
        loop {
            let next = tokio::time::timeout(DEADLINE, self.rx.next())
                .await
                .expect("server message in time");
            match next {
                Some(Ok(proto::ConnectResponse {
                    msg: Some(ServerMsg::Heartbeat(_)),
                })) => continue,
                Some(Ok(proto::ConnectResponse { msg: Some(m) })) => return m,
                other => panic!("worker stream ended: {other:?}"),
            }
        }
    }

    /// Assignments that arrive within `quiet` (after the first, each within `quiet`).
    pub async fn assignments(&mut self, quiet: Duration) -> Vec<proto::Assignment> {
        let mut got = Vec::new();
        while let Ok(m) = tokio::time::timeout(quiet, self.recv()).await {
            if let ServerMsg::Assignment(a) = m {
                got.push(a);
            }
        }
        got
    }

    /// The next assignment, passing over report results on the way.
    pub async fn next_assignment(&mut self) -> proto::Assignment {
        loop {
            if let ServerMsg::Assignment(a) = self.recv().await {
                return a;
            }
        }
    }

    pub async fn assignment(&mut self) -> proto::Assignment {
        match self.recv().await {
            ServerMsg::Assignment(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    pub async fn report_result(&mut self) -> proto::ReportResult {
        match self.recv().await {
            ServerMsg::ReportResult(r) => r,
            other => panic!("expected a report result, got {other:?}"),
        }
    }

    pub async fn progress(&self, a: &proto::Assignment, percent: f32, stage: &str) {
        let job_id = a.job.as_ref().unwrap().id.clone();
        let progress = Some(proto::Progress {
            percent,
            stage: stage.into(),
            message: String::new(),
        });
        self.send(WorkerMsg::Progress(proto::ProgressReport {
            job_id,
            token: a.token,
            progress,
        }))
        .await;
    }

    pub async fn complete(
        &mut self,
        job_id: &str,
        token: u64,
        result: &str,
    ) -> proto::ReportResult {
        let c = proto::Complete {
            job_id: job_id.into(),
            token,
            result: result.into(),
            ..Default::default()
        };
        self.send(WorkerMsg::Complete(c)).await;
        self.report_result().await
    }

    pub async fn fail(
        &mut self,
        job_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
    ) -> proto::ReportResult {
        let f = proto::Fail {
            job_id: job_id.into(),
            token,
            error: error.into(),
            retryable,
            ..Default::default()
        };
        self.send(WorkerMsg::Fail(f)).await;
        self.report_result().await
    }
}

/// Collects a WatchJob stream to its end.
pub async fn watch_all(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
    after_seq: Option<u64>,
) -> Vec<proto::JobEvent> {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.into(),
            after_seq,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("event in time")
    {
        events.push(
            event
                .expect("event")
                .event
                .expect("an event in every answer"),
        );
    }
    events
}
