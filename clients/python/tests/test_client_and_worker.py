"""The Python client and worker against a real server: submit, watch progress, upload
artifacts (one in parts), download them, inputs, and failures with and without retries."""

import os
import threading
import uuid

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
    worker = Worker(queues=[queue], address=server)

    @worker.job(queue)
    def slow(job, progress):
        began.set()
        release.wait(10)
        return "done"

    thread = started(worker)
    with Client(server) as client:
        job = client.submit(queue, {})
        assert began.wait(10)
        worker.stop()
        release.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "run ends once the result is answered"
        done = client.get(job.id)
        assert (done.state, done.result) == (pb.JOB_STATE_SUCCEEDED, "done")


def test_a_room_of_one_users_jobs_follows_new_jobs_to_their_end(server):
    queue = f"render-{uuid.uuid4().hex[:8]}"
    worker = Worker(queues=[queue], concurrency=2, address=server)

    @worker.job(queue)
    def render(job, progress):
        progress(50, "render")
        return "ok"

    with Client(server) as client:
        old = client.submit(queue, "a", labels={"user": "42"})
        client.submit(queue, "b", labels={"user": "7"})
        room = client.watch_jobs([queue], {"user": "42"})
        first = next(room)
        assert first.event.job.id == old.id and not first.event.job.payload
        assert next(room).synced
        new = client.submit(queue, "c", labels={"user": "42"})
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
