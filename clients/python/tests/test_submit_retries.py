"""The client's submits are safe to retry, against a fake JobService (an in-process gRPC server
that implements only SubmitJob and answers what each test tells it): an unkeyed submit gets a
key of its own, the same on every try; UNAVAILABLE is tried again with backoff, a bounded number
of times and within the client's submit_timeout; other errors are raised at once."""

import threading
import time
from concurrent import futures

import grpc
import pytest

from conveyor import Client
from conveyor.v1 import jobs_pb2 as pb
from conveyor.v1 import jobs_pb2_grpc


class FakeJobs(jobs_pb2_grpc.JobServiceServicer):
    """Answers each SubmitJob with the next of `answers` (a status code to abort with, or "ok"),
    the last one again once they run out; keeps every request, and each call's deadline. Like
    the server, a keyed submit answered UNAVAILABLE still got through: a later one with its key
    finds that job (created=false)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        self.remaining = []
        self.metadata = []
        self.keys = set()
        self.lock = threading.Lock()

    def SubmitJob(self, request, context):
        with self.lock:
            self.requests.append(request)
            self.remaining.append(context.time_remaining())
            self.metadata.append(dict(context.invocation_metadata()))
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            key = request.idempotency_key
            created = not key or key not in self.keys
            if key:
                self.keys.add(key)
        if answer != "ok":
            context.abort(answer, "redis did not answer in time")
        job = pb.Job(id=f"job-{len(self.keys)}", queue=request.queue, idempotency_key=key,
                     state=pb.JOB_STATE_QUEUED)
        return pb.SubmitJobResponse(job=job, created=created)


@pytest.fixture
def fake():
    servers = []

    def start(*answers):
        jobs = FakeJobs(answers)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return jobs, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None).wait()


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def test_client_defaults_retry_submits_five_times_from_200_ms():
    client = Client("127.0.0.1:1")
    try:
        assert (client.submit_retries, client.submit_backoff, client.submit_timeout) == (5, 0.2,
                                                                                          None)
    finally:
        client.close()


def test_an_unkeyed_submit_retries_unavailable_with_one_key_of_its_own(fake):
    jobs, address = fake(UNAVAILABLE, UNAVAILABLE, "ok")
    with Client(address, submit_backoff=0.05) as client:
        started = time.monotonic()
        job = client.submit("render", {"title": "Lisbon"})
        elapsed = time.monotonic() - started
    assert job.id == "job-1"
    assert len(jobs.requests) == 3
    keys = {r.idempotency_key for r in jobs.requests}
    assert len(keys) == 1, keys
    (key,) = keys
    assert key.startswith("py:") and len(key) > len("py:"), key
    assert job.idempotency_key == key
    # Every try is the same request.
    assert all(r == jobs.requests[0] for r in jobs.requests)
    # Waited 0.05 s, then 0.1 s.
    assert elapsed >= 0.15, elapsed


def test_each_call_gets_a_key_of_its_own(fake):
    jobs, address = fake("ok")
    with Client(address) as client:
        client.submit("render", {})
        client.submit("render", {})
    first, second = (r.idempotency_key for r in jobs.requests)
    assert first and second and first != second


def test_a_retried_submit_under_its_own_key_is_reported_as_created(fake):
    # The first try got through but its answer did not: the retry finds that job (created=false
    # from the server), and the call made exactly that one job.
    jobs, address = fake(UNAVAILABLE, "ok")
    request = pb.SubmitJobRequest(queue="render", payload=b"{}", tier=pb.TIER_FREE)
    with Client(address, submit_backoff=0.01) as client:
        response = client.submit_job(request, metadata=[("traceparent", "00-ab-cd-01")])
    assert len(jobs.requests) == 2
    assert [m.get("traceparent") for m in jobs.metadata] == ["00-ab-cd-01"] * 2
    assert response.created is True
    assert response.job.id == "job-1"
    assert response.job.idempotency_key == jobs.requests[0].idempotency_key
    # The caller's request is left as it was.
    assert request.idempotency_key == ""


def test_a_callers_key_is_sent_as_is_and_created_is_what_the_server_said(fake):
    jobs, address = fake(UNAVAILABLE, "ok")
    request = pb.SubmitJobRequest(queue="render", tier=pb.TIER_FREE, idempotency_key="order-42")
    with Client(address, submit_backoff=0.01) as client:
        response = client.submit_job(request)
        assert [r.idempotency_key for r in jobs.requests] == ["order-42", "order-42"]
        # The caller's own key: an earlier submit with it (here, the first try) made the job.
        assert response.created is False
        job = client.submit("render", {}, idempotency_key="order-42")
        assert job.idempotency_key == "order-42" and job.id == response.job.id
        assert jobs.requests[-1].idempotency_key == "order-42"


def test_follow_ups_are_sent_without_a_key(fake):
    jobs, address = fake(UNAVAILABLE, "ok")
    upload = pb.SubmitJobRequest(queue="upload", tier=pb.TIER_FREE)
    with Client(address, submit_backoff=0.01) as client:
        client.submit("edit", {}, on_success=[upload])
    for request in jobs.requests:
        assert request.idempotency_key.startswith("py:")
        assert [f.idempotency_key for f in request.on_success] == [""]
        assert request.on_success[0].queue == "upload"


def test_a_non_retryable_error_is_raised_at_once(fake):
    jobs, address = fake(grpc.StatusCode.INVALID_ARGUMENT, "ok")
    with Client(address, submit_backoff=0.01) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.submit("render", {})
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(jobs.requests) == 1
    assert jobs.requests[0].idempotency_key.startswith("py:")


def test_unavailable_past_the_retries_raises_the_last_error(fake):
    jobs, address = fake(UNAVAILABLE)
    with Client(address, submit_retries=2, submit_backoff=0.01) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.submit("render", {})
    assert raised.value.code() == UNAVAILABLE
    assert len(jobs.requests) == 3  # the first try and 2 retries
    assert len({r.idempotency_key for r in jobs.requests}) == 1


def test_retries_stay_within_the_clients_submit_timeout(fake):
    jobs, address = fake(UNAVAILABLE)
    with Client(address, submit_retries=10, submit_backoff=0.1, submit_timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            client.submit("render", {})
        elapsed = time.monotonic() - started
    # Tries at 0, 0.1 and 0.3 s; the next wait (0.4 s) would end past 0.5 s: no fourth try.
    assert raised.value.code() == UNAVAILABLE
    assert len(jobs.requests) == 3, len(jobs.requests)
    assert elapsed < 0.5, elapsed
    # Each try's deadline is what was left of the submit's.
    assert all(r is not None and r <= 0.5 for r in jobs.remaining), jobs.remaining
    assert jobs.remaining[-1] < jobs.remaining[0]
