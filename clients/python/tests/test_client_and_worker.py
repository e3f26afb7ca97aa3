"""The Python client and worker against a real server: submit, watch progress, upload
artifacts (one in parts), download them, inputs, failures with and without retries, and
stopping (`stop`, SIGTERM, and declining what reaches a stopping worker)."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest

from conveyor import Client, Fatal, Worker
from conveyor.v1 import jobs_pb2 as pb


def started(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_a_python_worker_reports_progress_and_its_artifacts_come_back(server, tmp_path):
    queue = f"render-{uuid.uuid4().hex[:8]}"
    big = tmp_path / "video.mp4"
    # Above the server's 64 MiB threshold: uploaded in parts.
    with open(big, "wb") as f:
        f.write(b"frame\n" * (70 * (1 << 20) // 6))
    worker = Worker(queues=[queue], concurrency=2, address=server)

    @worker.job(queue)
    def render(job, progress):
        assert job.json() == {"title": "Weather for Lisbon"}
        for percent, stage in [(30, "bundle"), (40, "composition"), (85, "render")]:
            progress(percent, stage, f"at {percent}")
        notes = tmp_path / f"notes-{job.attempt}.txt"
        notes.write_text("rendered")
        job.upload("notes.txt", str(notes))
        job.upload("video.mp4", str(big))
        return {"video": "video.mp4"}

    thread = None
    try:
        with Client(server) as client:
            job = client.submit(queue, {"title": "Weather for Lisbon"}, tier="premium")
            assert job.state == pb.JOB_STATE_QUEUED
            # The watch is open (its snapshot came) before the worker can report anything.
            watch = client.watch(job.id)
            events = [next(watch)]
            thread = started(worker)
            events += list(watch)
            stages = [e.progress.stage for e in events if e.kind == pb.JobEvent.KIND_PROGRESS]
            assert "render" in stages, stages
            last = events[-1]
            assert last.state == pb.JOB_STATE_SUCCEEDED, last
            assert [a.name for a in last.artifacts] == ["notes.txt", "video.mp4"]
            done = client.get(job.id)
            assert done.result == '{"video": "video.mp4"}'
            video = next(a for a in done.artifacts if a.name == "video.mp4")
            assert video.size == os.path.getsize(big)
            assert video.content_type == "video/mp4"
            assert video.checksum.endswith("-5"), video.checksum  # 5 parts of 16 MiB
            paths = client.download(job.id, str(tmp_path / "out"))
            fetched = {os.path.basename(p): p for p in paths}
            assert open(fetched["notes.txt"]).read() == "rendered"
            assert os.path.getsize(fetched["video.mp4"]) == os.path.getsize(big)
    finally:
        worker.stop()
        if thread:
            thread.join(timeout=10)


def test_inputs_reach_the_handler_and_failures_retry_unless_fatal(server, tmp_path):
    queue = f"edit-{uuid.uuid4().hex[:8]}"
    footage = tmp_path / "clip.mov"
    footage.write_bytes(b"raw footage")
    tries = {}
    worker = Worker(queues=[queue], address=server)

    @worker.job(queue)
    def edit(job, progress):
        kind = job.json()["kind"]
        tries[kind] = tries.get(kind, 0) + 1
        if kind == "fatal":
            raise Fatal("the footage is unusable")
        if kind == "flaky" and job.attempt == 1:
            raise ValueError("out of memory")
        return open(job.input("clip.mov", str(tmp_path))).read() if job.inputs else "ok"

    thread = started(worker)
    try:
        with Client(server) as client:
            clip = client.upload_input(str(footage))
            with_input = client.submit(queue, {"kind": "input"}, inputs=[clip])
            fatal = client.submit(queue, {"kind": "fatal"}, max_attempts=3)
            flaky = client.submit(queue, {"kind": "flaky"}, max_attempts=3)
            assert client.wait(with_input.id).result == "raw footage"
            failed = client.wait(fatal.id)
            assert failed.state == pb.JOB_STATE_FAILED
            assert (failed.attempt, failed.error) == (1, "the footage is unusable")
            retried = client.wait(flaky.id)
            assert (retried.state, retried.attempt) == (pb.JOB_STATE_SUCCEEDED, 2)
            assert tries == {"input": 1, "fatal": 1, "flaky": 2}
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_bad_input_is_refused_with_its_status(server):
    import grpc

    with Client(server) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.submit("bad queue name!", {})
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as missing:
            client.get("render:0190b5a0-0000-7000-8000-000000000000")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_lets_a_running_job_finish_and_report(server):
    queue = f"slow-{uuid.uuid4().hex[:8]}"
    began, release = threading.Event(), threading.Event()
    ran = []
    worker = Worker(queues=[queue], address=server)

    @worker.job(queue)
    def slow(job, progress):
        ran.append(job.id)
        began.set()
        release.wait(10)
        return "done"

    thread = started(worker)
    with Client(server) as client:
        job = client.submit(queue, {})
        assert began.wait(10)
        worker.stop()
        # Its slot frees when the running job ends: the server must not offer it this job.
        later = client.submit(queue, {}, max_attempts=1)
        release.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "run ends once the result is answered"
        done = client.get(job.id)
        assert (done.state, done.result) == (pb.JOB_STATE_SUCCEEDED, "done")
        assert ran == [job.id]
        waiting = client.get(later.id)
        assert (waiting.state, waiting.attempt) == (pb.JOB_STATE_QUEUED, 0), waiting
        # Its one attempt is whole: another worker runs it.
        other = Worker(queues=[queue], address=server)
        other.job(queue)(lambda job, progress: "ran elsewhere")
        other_thread = started(other)
        try:
            ended = client.wait(later.id)
            assert (ended.state, ended.attempt, ended.result) == (
                pb.JOB_STATE_SUCCEEDED, 1, "ran elsewhere"), ended
        finally:
            other.stop()
            other_thread.join(timeout=10)
        assert ran == [job.id]


class States:
    """A job's states (and attempts), its snapshot's then each event's, watched in a thread."""

    def __init__(self, client: Client, job_id: str):
        watch = client.watch(job_id)
        snapshot = next(watch).job
        self.states: list = [(pb.JobState.Name(snapshot.state), snapshot.attempt)]
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(watch,), daemon=True).start()

    def _read(self, watch) -> None:
        try:
            for event in watch:
                if event.kind == pb.JobEvent.KIND_STATE:
                    with self._changed:
                        self.states.append((pb.JobState.Name(event.state), event.attempt))
                        self._changed.notify_all()
        except grpc.RpcError:
            pass  # the test closed its client: the watch ends with it

    def wait_for(self, states: list, timeout: float) -> bool:
        """Whether `states` were seen one after the other (the watch may begin before or after
        the first of them: its snapshot is whatever the job was then)."""
        def seen() -> bool:
            n = len(states)
            return any(self.states[i:i + n] == states for i in range(len(self.states) - n + 1))
        with self._changed:
            return self._changed.wait_for(seen, timeout)


@pytest.mark.parametrize("busy", [True, False], ids=["running-a-job", "idle"])
def test_an_assignment_that_reaches_a_stopping_worker_is_declined_and_keeps_its_attempt(
        server, busy, caplog):
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    queue = f"late-{uuid.uuid4().hex[:8]}"
    began, release, watching = threading.Event(), threading.Event(), threading.Event()
    ran = []

    class StoppedAsTheJobArrives(Worker):
        """`stop` called while the server was assigning job "late": the assignment reaches a
        stopping worker. Idle, the worker has begun to end its stream by then too."""

        def _start(self, assignment):
            if assignment.job.payload == b'{"name": "late"}':
                assert watching.wait(10)
                self.stop()
            super()._start(assignment)

    worker = StoppedAsTheJobArrives(queues=[queue], concurrency=2, address=server)

    @worker.job(queue)
    def handle(job, progress):
        ran.append(job.json()["name"])
        began.set()
        release.wait(10)
        return "done"

    thread = started(worker)
    try:
        with Client(server) as client:
            if busy:
                held = client.submit(queue, {"name": "held"})
                assert began.wait(10)
            late = client.submit(queue, {"name": "late"}, max_attempts=1)
            states = States(client, late.id)
            watching.set()
            # Handed back, not failed: back in line with its attempt not counted.
            declined = [("JOB_STATE_RUNNING", 1), ("JOB_STATE_QUEUED", 0)]
            assert states.wait_for(declined, 10), states.states
            time.sleep(0.5)  # time enough to be offered again, were the worker's slots offered
            leased = states.states.index(declined[0])
            assert states.states[leased:] == declined, states.states
            release.set()
            thread.join(timeout=15)
            assert not thread.is_alive(), "run ends once the decline is answered"
            assert ran == (["held"] if busy else [])
            # Idle, the worker had closed its side of the stream when the job came: it dialed
            # again (stopping) to hand it back. Busy, the decline went on the stream it had.
            redialed = [r.message for r in caplog.records if "dialing again" in r.message]
            assert redialed == ([] if busy else ["stopping: dialing again to report 1 held job(s)"])
            if busy:
                assert client.get(held.id).state == pb.JOB_STATE_SUCCEEDED
            waiting = client.get(late.id)
            assert (waiting.state, waiting.attempt) == (pb.JOB_STATE_QUEUED, 0), waiting
            # Its one attempt is whole: another worker runs it.
            other = Worker(queues=[queue], address=server)
            other.job(queue)(lambda job, progress: f"attempt {job.attempt}")
            other_thread = started(other)
            try:
                ended = client.wait(late.id)
                assert (ended.state, ended.attempt, ended.result) == (
                    pb.JOB_STATE_SUCCEEDED, 1, "attempt 1"), ended
            finally:
                other.stop()
                other_thread.join(timeout=10)
    finally:
        release.set()
        watching.set()
        worker.stop()
        thread.join(timeout=10)


# A worker process as Kubernetes runs one; its job runs until the file `release` appears.
SIGNALLED_WORKER = """
import logging, os, signal, sys, time
from conveyor import Worker

logging.basicConfig(level=logging.INFO, format="%(message)s")
address, queue = sys.argv[1:]
worker = Worker(queues=[queue], concurrency=2, address=address)


@worker.job(queue)
def slow(job, progress):
    print("started", job.id, job.attempt, flush=True)
    deadline = time.time() + 20
    while not os.path.exists("release") and time.time() < deadline:
        time.sleep(0.05)
    return "done"


before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
worker.run()
after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
print("returned", "restored" if after == before else "not restored", flush=True)
"""


class Lines:
    """What a child writes to one pipe, line by line as it comes."""

    def __init__(self, pipe):
        self.lines: list = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        for line in pipe:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines),
                                          timeout)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_running_job_takes_no_new_one_and_exits_0(server, tmp_path, signum):
    queue = f"drain-{uuid.uuid4().hex[:8]}"
    (tmp_path / "worker.py").write_text(SIGNALLED_WORKER)
    process = subprocess.Popen([sys.executable, "worker.py", server, queue], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        with Client(server) as client:
            first = client.submit(queue, {})
            assert out.wait_for(f"started {first.id} 1", 20), (out.lines, err.lines)
            process.send_signal(signum)
            signalled = time.time()
            # The worker told the server it is stopping (Stopping, on the same stream): its
            # idle second slot is no longer offered.
            assert err.wait_for("stopping: 1 running", 10), (out.lines, err.lines)
            second = client.submit(queue, {})
            time.sleep(0.5)  # time enough to be assigned, were a slot free
            assert client.get(second.id).state == pb.JOB_STATE_QUEUED
            # The running job ends after the signal; its slot must not take the new job either.
            (tmp_path / "release").touch()
            assert process.wait(timeout=15) == 0, (out.lines, err.lines)
            assert time.time() - signalled < 15
            done = client.get(first.id)
            assert (done.state, done.attempt, done.result) == (pb.JOB_STATE_SUCCEEDED, 1, "done")
            waiting = client.get(second.id)
            assert (waiting.state, waiting.attempt) == (pb.JOB_STATE_QUEUED, 0), waiting
            starts = [line for line in out.lines if line.startswith("started")]
            assert starts == [f"started {first.id} 1"], out.lines
            assert out.lines[-1] == "returned restored", out.lines
            # All on the stream it had: no second stream was needed to stop.
            assert not [line for line in err.lines if "dialing again" in line], err.lines
            client.cancel(second.id)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_worker_in_another_thread_leaves_signal_handlers_alone(server):
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    queue = f"render-{uuid.uuid4().hex[:8]}"
    worker = Worker(queues=[queue], address=server)
    worker.job(queue)(lambda job, progress: "ok")
    thread = started(worker)
    try:
        with Client(server) as client:
            # `run` is serving: a job went through.
            assert client.wait(client.submit(queue, {}).id).state == pb.JOB_STATE_SUCCEEDED
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_room_of_one_users_jobs_follows_new_jobs_to_their_end(server):
    queue = f"render-{uuid.uuid4().hex[:8]}"
    worker = Worker(queues=[queue], concurrency=2, address=server)

    @worker.job(queue)
    def render(job, progress):
        progress(50, "render")
        return "ok"

    with Client(server) as client:
        old = client.submit(queue, {"name": "a"}, labels={"user": "42"})
        client.submit(queue, {"name": "b"}, labels={"user": "7"})
        room = client.watch_jobs([queue], {"user": "42"})
        first = next(room)
        assert first.event.job.id == old.id and not first.event.job.payload
        assert next(room).synced
        new = client.submit(queue, {"name": "c"}, labels={"user": "42"})
        thread = started(worker)
        try:
            ended, token = set(), ""
            for answer in room:
                token = answer.resume_token or token
                event = answer.event
                assert event.job_id in (old.id, new.id) or event.job.id == new.id, event
                if event.kind == pb.JobEvent.KIND_STATE and event.state == pb.JOB_STATE_SUCCEEDED:
                    ended.add(event.job_id)
                if ended == {old.id, new.id}:
                    break
            assert token.startswith("r1.")
            # Back with the token: both ended jobs are in the snapshot.
            again = client.watch_jobs([queue], {"user": "42"}, resume_token=token)
            snapshot = set()
            for answer in again:
                if answer.synced:
                    break
                snapshot.add(answer.event.job.id)
            assert snapshot == {old.id, new.id}
        finally:
            worker.stop()
            thread.join()


def test_a_handler_gets_the_submitters_trace_context(server):
    queue = f"render-{uuid.uuid4().hex[:8]}"
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    worker = Worker(queues=[queue], concurrency=1, address=server)
    seen = []

    @worker.job(queue)
    def render(job, progress):
        seen.append(job.traceparent)
        return "ok"

    with Client(server) as client:
        # What an OpenTelemetry-instrumented backend sends with its call.
        request = pb.SubmitJobRequest(queue=queue, payload=b"{}", tier=pb.TIER_FREE)
        job = client.jobs.SubmitJob(request, metadata=[("traceparent", traceparent)]).job
        thread = started(worker)
        try:
            assert client.wait(job.id).state == pb.JOB_STATE_SUCCEEDED
        finally:
            worker.stop()
            thread.join()
    # This server exports no traces, so it hands the caller's context on as it came.
    assert seen == [traceparent]
