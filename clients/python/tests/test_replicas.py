"""Several replicas: a client and a worker given every replica's address (comma-separated, or a
sequence) start at a random one, stay on the one that answers, and move to the next when a call
there is answered UNAVAILABLE or a stream there breaks; a watch resumes there with `after_seq`.

Against fake JobServices (in-process gRPC servers) for the client's rules, and against two real
`conveyor serve` replicas sharing one Redis and one SQLite file, one of them SIGKILLed under a
running job."""

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent import futures

import grpc
import pytest

from conveyor import Client, Worker
from conveyor.v1 import jobs_pb2 as pb
from conveyor.v1 import jobs_pb2_grpc

#: No wait in these tests is longer.
BOUND = 20.0

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def test_several_addresses_are_taken_comma_separated_or_as_a_sequence():
    with Client(" 127.0.0.1:1, 127.0.0.1:2 ,") as client:
        assert client.addresses == ["127.0.0.1:1", "127.0.0.1:2"]
    with Client(["127.0.0.1:1", "127.0.0.1:2,127.0.0.1:3"]) as client:
        assert client.addresses == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    worker = Worker(queues=["render"], address=("127.0.0.1:1", "127.0.0.1:2"))
    assert worker.addresses == ["127.0.0.1:1", "127.0.0.1:2"]
    worker = Worker(queues=["render"], address="127.0.0.1:1,127.0.0.1:2")
    assert worker.addresses == ["127.0.0.1:1", "127.0.0.1:2"]


class Script:
    """What the fake replicas answer, shared by them all: every WatchJob call (which replica,
    its after_seq) and what each call in turn streams; every SubmitJob (which replica)."""

    def __init__(self, watches=(), unavailable=()):
        self.watches = list(watches)
        self.unavailable = set(unavailable)
        self.calls = []
        self.submits = []
        self.lock = threading.Lock()


class FakeReplica(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, name, script):
        self.name = name
        self.script = script

    def SubmitJob(self, request, context):
        with self.script.lock:
            self.script.submits.append(self.name)
        if self.name in self.script.unavailable:
            context.abort(UNAVAILABLE, "replica going away")
        job = pb.Job(id="job-1", queue=request.queue, idempotency_key=request.idempotency_key,
                     state=pb.JOB_STATE_QUEUED)
        return pb.SubmitJobResponse(job=job, created=True)

    def WatchJob(self, request, context):
        with self.script.lock:
            after = request.after_seq if request.HasField("after_seq") else None
            self.script.calls.append((self.name, after))
            turn = self.script.watches.pop(0) if self.script.watches else ([], None)
        events, end = turn
        for event in events:
            yield pb.WatchJobResponse(event=event)
        if end is not None:
            context.abort(end, "the stream broke")


@pytest.fixture
def replicas():
    servers = []

    def start(script, names=("a", "b")):
        addresses = []
        for name in names:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            jobs_pb2_grpc.add_JobServiceServicer_to_server(FakeReplica(name, script), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            servers.append(server)
            addresses.append(f"127.0.0.1:{port}")
        return addresses

    yield start
    for server in servers:
        server.stop(None).wait()


def snapshot(seq, state):
    return pb.JobEvent(job_id="job-1", seq=seq, kind=pb.JobEvent.KIND_SNAPSHOT, state=state,
                       job=pb.Job(id="job-1", state=state))


def change(seq, state):
    return pb.JobEvent(job_id="job-1", seq=seq, kind=pb.JobEvent.KIND_STATE, state=state)


def progress(seq):
    return pb.JobEvent(job_id="job-1", seq=seq, kind=pb.JobEvent.KIND_PROGRESS,
                       progress=pb.Progress(percent=50))


KEEPALIVE = pb.JobEvent(job_id="job-1", kind=pb.JobEvent.KIND_KEEPALIVE)


def test_a_submit_answered_unavailable_is_tried_again_at_the_next_address(replicas):
    # Whichever replica a client starts at, its submits reach the one that answers, and stay
    # there: at most one try goes to the one that is going away.
    for _ in range(6):
        script = Script(unavailable={"a"})
        addresses = replicas(script)
        with Client(",".join(addresses), submit_retries=1, submit_backoff=0.01) as client:
            for _ in range(3):
                assert client.submit("render", {}).id == "job-1"
        assert script.submits.count("b") == 3, script.submits
        assert script.submits.count("a") <= 1, script.submits


def test_a_broken_watch_resumes_at_the_next_address_after_the_last_seq(replicas):
    script = Script(watches=[
        ([snapshot(3, pb.JOB_STATE_RUNNING), KEEPALIVE, progress(4)], UNAVAILABLE),
        # Nothing happened since: no snapshot, the events that follow.
        ([progress(5), change(6, pb.JOB_STATE_SUCCEEDED)], None),
    ])
    addresses = replicas(script)
    with Client(addresses) as client:
        events = list(client.watch("job-1"))
    assert [(e.kind, e.seq) for e in events] == [
        (pb.JobEvent.KIND_SNAPSHOT, 3), (pb.JobEvent.KIND_PROGRESS, 4),
        (pb.JobEvent.KIND_PROGRESS, 5), (pb.JobEvent.KIND_STATE, 6)]
    (first, _), (second, after) = script.calls
    assert first != second, script.calls
    assert after == 4


def test_a_watch_that_ends_early_resumes_and_yields_the_fresh_snapshot(replicas):
    script = Script(watches=[
        ([snapshot(3, pb.JOB_STATE_RUNNING)], None),  # ended before the job did
        ([], grpc.StatusCode.CANCELLED),
        # Events were missed: the job as it is now.
        ([snapshot(7, pb.JOB_STATE_SUCCEEDED)], None),
    ])
    addresses = replicas(script)
    with Client(addresses) as client:
        started = time.monotonic()
        events = list(client.watch("job-1"))
        elapsed = time.monotonic() - started
    assert [(e.seq, e.state) for e in events] == [(3, pb.JOB_STATE_RUNNING),
                                                  (7, pb.JOB_STATE_SUCCEEDED)]
    assert [after for _, after in script.calls] == [None, 3, 3]
    names = [name for name, _ in script.calls]
    assert names[0] != names[1] and names[1] != names[2], names
    # Resumed after 0.2 s, then 0.4 s.
    assert elapsed >= 0.6, elapsed


def test_a_watch_refused_is_raised_and_one_past_the_end_yields_nothing(replicas):
    script = Script(watches=[([], grpc.StatusCode.NOT_FOUND), ([], None)])
    addresses = replicas(script)
    with Client(addresses) as client:
        with pytest.raises(grpc.RpcError) as raised:
            list(client.watch("job-1"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        # After the seq of the job's end: the stream ends at once, and so does the watch.
        assert list(client.watch("job-1", after_seq=9)) == []
    assert [after for _, after in script.calls] == [None, 9]


# Two real replicas.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what, check, timeout=BOUND):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.05)


def answering(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as chan:
            jobs_pb2_grpc.JobServiceStub(chan).ListQueues(pb.ListQueuesRequest(), timeout=1)
        return True
    except grpc.RpcError:
        return False


def ended(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def redis(tmp_path):
    """A private redis-server; yields a function running redis-cli commands against it."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cli(*args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip()

    cli.url = f"redis://127.0.0.1:{port}"
    try:
        until("redis-server to answer", lambda: process.poll() is None and cli("PING") == "PONG",
              timeout=10)
        yield cli
    finally:
        ended(process)


@pytest.fixture
def cluster(redis, tmp_path):
    """Starts `conveyor serve` replicas sharing the Redis and one SQLite file; kills them all
    at the end."""
    binary = os.environ.get("CONVEYOR_BIN", os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "target", "debug", "conveyor"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONVEYOR_S3_BUCKET", "CONVEYOR_KEY", "CONVEYOR_ADDR")}
    env.update(CONVEYOR_INSECURE="true", REDIS_URL=redis.url,
               DATABASE_URL=f"sqlite://{tmp_path}/c.db?mode=rwc", CONVEYOR_HTTP_LISTEN="off")
    processes = []

    def start(port: int) -> subprocess.Popen:
        with open(tmp_path / f"replica-{port}.log", "wb") as log:
            process = subprocess.Popen([binary, "serve"],
                                       env={**env, "CONVEYOR_LISTEN": f"127.0.0.1:{port}"},
                                       stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        until(f"the replica on {port} to answer",
              lambda: process.poll() is None and answering(f"127.0.0.1:{port}"))
        return process

    try:
        yield start
    finally:
        for process in processes:
            ended(process)


def test_a_worker_and_a_watch_go_on_through_another_replica_when_one_dies(cluster, redis):
    queue = f"render-{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    # Only the first replica is up when the worker and the watch start: both are on it.
    first = cluster(ports[0])
    worker = Worker(queues=[queue], address=",".join(addresses), worker_id="w")
    runs = []
    running = threading.Event()
    release = threading.Event()

    @worker.job(queue)
    def render(job, progress):
        runs.append(job.attempt)
        running.set()
        release.wait(BOUND)
        return {"attempt": job.attempt}

    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False},
                              daemon=True)
    events = []
    errors = []
    watching = None
    client = Client(addresses)
    try:
        thread.start()
        job = client.submit(queue, {})
        until("the handler to start", lambda: running.wait(0.1))

        def watch():
            try:
                for event in client.watch(job.id):
                    events.append(event)
            except Exception as e:  # noqa: BLE001 (said below)
                errors.append(e)

        watching = threading.Thread(target=watch, daemon=True)
        watching.start()
        until("the watch to see the job running",
              lambda: any(e.state == pb.JOB_STATE_RUNNING for e in events))
        key = f"cv:{{{queue}}}:job:{job.id}"
        before = redis("HGET", key, "session")
        assert len(before) > 8, before

        cluster(ports[1])
        first.send_signal(signal.SIGKILL)  # no drain, no goodbye
        first.wait(timeout=10)
        # The worker dials the second replica and its Hello re-attaches the running job there.
        until("the worker to re-attach its job",
              lambda: (lambda now: now != before and len(now) > 8)(
                  redis("HGET", key, "session")))
        release.set()

        watching.join(BOUND)
        assert not watching.is_alive(), "the watch did not end with the job"
        assert not errors, errors
        last = events[-1]
        assert (last.kind, last.state) == (pb.JobEvent.KIND_STATE, pb.JOB_STATE_SUCCEEDED), last
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)), f"an event came twice: {seqs}"
        done = client.get(job.id)
        assert (done.state, done.attempt, done.result) == (
            pb.JOB_STATE_SUCCEEDED, 1, '{"attempt": 1}'), done
        assert runs == [1], "the same attempt carried on"
    finally:
        release.set()
        worker.stop(grace=5)
        thread.join(BOUND)
        client.close()
        if watching is not None:
            watching.join(BOUND)
