"""A typed client of Conveyor's JobService: submit, read, watch and cancel jobs, upload inputs,
and fetch artifacts."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.request
import uuid
from typing import Iterator, Mapping, Optional, Sequence, Union

import grpc

from conveyor.v1 import jobs_pb2 as pb
from conveyor.v1 import jobs_pb2_grpc

log = logging.getLogger("conveyor.client")

Payload = Union[bytes, str, Mapping, Sequence, None]

#: One server's address (`host:port`, `https://host:port`), several separated by commas
#: (`"a:50051,b:50051"`: every replica's), or a sequence of them.
Addresses = Union[str, Sequence[str]]

#: A watch whose stream broke tries again after this many seconds, doubling up to WATCH_MAX_WAIT,
#: and gives up once it has had no stream for WATCH_RESUME_FOR.
WATCH_WAIT = 0.2
WATCH_MAX_WAIT = 5.0
WATCH_RESUME_FOR = 120.0

#: The codes of a watch stream that broke because its server went away (as opposed to refusing
#: the watch): the watch resumes on the next address.
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}

TIERS = {
    "free": pb.TIER_FREE,
    "pro": pb.TIER_PRO,
    "premium": pb.TIER_PREMIUM,
    "enterprise": pb.TIER_ENTERPRISE,
}

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def channel(address: str, key: Optional[str] = None) -> grpc.Channel:
    """A channel to `address` (`host:port`, or `https://host:port` for TLS) that presents `key`
    (an API key or a token) on every call."""
    secure = address.startswith("https://")
    target = address.split("://", 1)[-1]
    if secure:
        creds = grpc.ssl_channel_credentials()
        if key:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(key))
        return grpc.secure_channel(target, creds)
    chan = grpc.insecure_channel(target)
    if key:
        chan = grpc.intercept_channel(chan, _Bearer(key))
    return chan


def addresses(address: Optional[Addresses] = None) -> list[str]:
    """The addresses in `address` (a comma-separated string or a sequence; empty or None:
    CONVEYOR_ADDR, else 127.0.0.1:50051), in order, blanks left out."""
    if not address:
        address = os.environ.get("CONVEYOR_ADDR") or "127.0.0.1:50051"
    parts = address.split(",") if isinstance(address, str) else [
        part for a in address for part in a.split(",")]
    found = [part.strip() for part in parts if part.strip()]
    if not found:
        raise ValueError(f"no address in {address!r}")
    return found


class _Dialer:
    """Which of several addresses (every replica's) a client or worker uses: it starts at a
    random one, so clients spread over the replicas, stays on it while it answers, and moves to
    the next once a call there fails UNAVAILABLE or a stream there breaks (`failed`). Keeps one
    channel per address for unary calls and watches (`jobs`); a worker dials its own (`address`).
    Safe from any thread."""

    def __init__(self, address: Optional[Addresses], key: Optional[str]):
        self.addresses = addresses(address)
        self.key = key
        self._at = random.randrange(len(self.addresses))
        self._channels: dict = {}
        self._lock = threading.Lock()
        self.closed = False

    def address(self) -> tuple[int, str]:
        """The address in use, and its place (to hand to `failed`)."""
        with self._lock:
            return self._at, self.addresses[self._at]

    def failed(self, at: int) -> None:
        """The address at `at` failed: the next call goes to the following one. Several calls
        that failed on the same address move on once."""
        with self._lock:
            if self._at == at:
                self._at = (at + 1) % len(self.addresses)

    def jobs(self) -> tuple[int, jobs_pb2_grpc.JobServiceStub]:
        """JobService at the address in use, and its place."""
        with self._lock:
            if self.closed:
                raise ValueError("the client is closed")
            at = self._at
            if at not in self._channels:
                chan = channel(self.addresses[at], self.key)
                self._channels[at] = (chan, jobs_pb2_grpc.JobServiceStub(chan))
            return at, self._channels[at][1]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            channels, self._channels = self._channels, {}
        for chan, _ in channels.values():
            chan.close()


class _WatchLost(grpc.RpcError):
    """A watch that no server gave back for WATCH_RESUME_FOR seconds (UNAVAILABLE)."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


def _terminal(event: pb.JobEvent) -> bool:
    return (event.kind in (pb.JobEvent.KIND_SNAPSHOT, pb.JobEvent.KIND_STATE)
            and event.state in TERMINAL)


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call (insecure channels cannot carry call
    credentials)."""

    def __init__(self, key: str):
        self._header = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)


def _payload(payload: Payload) -> tuple[bytes, str]:
    if payload is None:
        return b"{}", "application/json"
    if isinstance(payload, bytes):
        return payload, "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode(), "application/json"
    return json.dumps(payload).encode(), "application/json"


class Client:
    """JobService for one caller. `address` defaults to CONVEYOR_ADDR or 127.0.0.1:50051, `key`
    to CONVEYOR_KEY.

    `address` may name every replica: comma-separated (`"a:50051,b:50051"`) or a sequence. The
    client starts at a random one and stays on it while it answers; a call answered UNAVAILABLE
    there (the replica is gone, say) sends the next call, and the next try of a submit, to the
    next address. `watch` resumes on the next one when its stream breaks.

    Submits are safe to retry: one without an idempotency key gets one of its own (`py:` and a
    random hex), and a submit answered UNAVAILABLE is tried again with the same request, up to
    `submit_retries` times, the first after `submit_backoff` seconds, doubling. With
    `submit_timeout` (seconds), the tries and the waits between them together take no longer:
    each try's deadline is what is left, and no wait runs past it. The last error is raised."""

    def __init__(self, address: Optional[Addresses] = None, key: Optional[str] = None, *,
                 submit_retries: int = 5, submit_backoff: float = 0.2,
                 submit_timeout: Optional[float] = None):
        if submit_retries < 0:
            raise ValueError("submit_retries must be 0 or more")
        if submit_backoff < 0:
            raise ValueError("submit_backoff must be 0 or more")
        if submit_timeout is not None and submit_timeout <= 0:
            raise ValueError("submit_timeout must be more than 0")
        key = key or os.environ.get("CONVEYOR_KEY")
        self.submit_retries = submit_retries
        self.submit_backoff = submit_backoff
        self.submit_timeout = submit_timeout
        self._dialer = _Dialer(address, key)

    @property
    def addresses(self) -> list[str]:
        """Every address the client may use, in order."""
        return list(self._dialer.addresses)

    @property
    def jobs(self) -> jobs_pb2_grpc.JobServiceStub:
        """The JobService stub of the address in use (calls made on it directly do not move to
        another address when they fail)."""
        return self._dialer.jobs()[1]

    def close(self) -> None:
        self._dialer.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def submit(self, queue: str, payload: Payload = None, *, tier: str = "free",
               priority: Optional[int] = None, labels: Optional[Mapping[str, str]] = None,
               idempotency_key: str = "", inputs: Sequence[str] = (), keep: bool = False,
               **fields) -> pb.Job:
        """Submits a job and answers at once with it (QUEUED, or the first job of a repeated
        idempotency key). Other SubmitJobRequest fields go in `fields` (`on_success` follow-ups
        included: they are sent as given, with no key). Without `idempotency_key` the submit gets
        a key of its own and UNAVAILABLE is retried (see `Client`), so one call is one job."""
        data, content_type = _payload(payload)
        request = pb.SubmitJobRequest(
            queue=queue, payload=data, content_type=content_type, tier=TIERS[tier],
            labels=dict(labels or {}), idempotency_key=idempotency_key, inputs=list(inputs),
            keep=keep, **fields)
        if priority is not None:
            request.priority = priority
        return self.submit_job(request).job

    def submit_job(self, request: pb.SubmitJobRequest,
                   metadata: Optional[Sequence[tuple[str, str]]] = None) -> pb.SubmitJobResponse:
        """SubmitJob with a request built by hand (and call `metadata`, e.g. `traceparent`), made
        safe to retry as `submit` is: an unkeyed request is sent with a key of its own (the
        caller's request is not changed; the answer's `job.idempotency_key` shows the key), and
        UNAVAILABLE is retried with the same request. Follow-ups (`on_success`) get no key: the
        server derives theirs. Under a key of its own, `created` is True even when a later try
        found the job an earlier try made (the server answered that try too late): the call made
        one job. Under the caller's key, `created` is what the server answered."""
        own_key = not request.idempotency_key
        if own_key:
            keyed = pb.SubmitJobRequest()
            keyed.CopyFrom(request)
            keyed.idempotency_key = f"py:{uuid.uuid4().hex}"
            request = keyed
        response = self._retrying("SubmitJob", request, metadata)
        if own_key:
            response.created = True
        return response

    def _retrying(self, method: str, request, metadata):
        """Calls JobService's `method` until it answers something other than UNAVAILABLE, at
        most `submit_retries` times more, waiting `submit_backoff` seconds and doubling, within
        `submit_timeout`; raises the last error. Each retry goes to the next address."""
        deadline = None if self.submit_timeout is None else time.monotonic() + self.submit_timeout
        wait = self.submit_backoff
        retries = 0
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            at, stub = self._dialer.jobs()
            try:
                return getattr(stub, method)(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code == grpc.StatusCode.UNAVAILABLE:
                    self._dialer.failed(at)
                if code != grpc.StatusCode.UNAVAILABLE or retries >= self.submit_retries:
                    raise
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise
            time.sleep(wait)
            wait *= 2
            retries += 1

    def _call(self, method: str, request):
        """One unary call at the address in use; UNAVAILABLE sends the next call to the next
        address (and is raised)."""
        at, stub = self._dialer.jobs()
        try:
            return getattr(stub, method)(request)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE:
                self._dialer.failed(at)
            raise

    def get(self, job_id: str) -> pb.Job:
        return self._call("GetJob", pb.GetJobRequest(job_id=job_id)).job

    def cancel(self, job_id: str) -> pb.Job:
        return self._call("CancelJob", pb.CancelJobRequest(job_id=job_id)).job

    def watch(self, job_id: str, after_seq: Optional[int] = None) -> Iterator[pb.JobEvent]:
        """The job's snapshot, then each event, ending after the terminal one (keep-alives are
        left out). With `after_seq` (the last `seq` seen), no snapshot when nothing happened
        since, and nothing at all when the job ended by then.

        When the stream breaks (UNAVAILABLE, CANCELLED, UNKNOWN: its server went away) or ends
        before the job did, the watch resumes on the next address with `after_seq` the last
        `seq` it yielded, trying again after 0.2 s, doubling up to 5 s; after 120 s without a
        stream it raises UNAVAILABLE. Nothing is yielded twice: a resumed stream starts with
        the events that follow, or, when some were missed, with a fresh snapshot (the job as it
        is now). Other errors (NOT_FOUND, PERMISSION_DENIED) are raised at once."""
        lost_since: Optional[float] = None
        wait = WATCH_WAIT
        while True:
            request = pb.WatchJobRequest(job_id=job_id)
            if after_seq is not None:
                request.after_seq = after_seq
            at, stub = self._dialer.jobs()
            call = stub.WatchJob(request)
            answers = iter(call)
            streamed = False
            error: Optional[grpc.RpcError] = None
            try:
                while True:
                    try:
                        answer = next(answers)
                    except StopIteration:
                        break
                    except grpc.RpcError as e:
                        code = e.code() if isinstance(e, grpc.Call) else None
                        if code not in RESUMABLE or self._dialer.closed:
                            raise
                        error = e
                        break
                    streamed = True
                    event = answer.event
                    if event.kind == pb.JobEvent.KIND_KEEPALIVE:
                        continue
                    if event.seq > 0:
                        after_seq = event.seq
                    yield event
                    if _terminal(event):
                        return
            finally:
                call.cancel()
            if error is None and not streamed and request.HasField("after_seq"):
                # Ended at once, with nothing: the job had ended by `after_seq`.
                return
            why = (f"{error.code().name}: {error.details()}" if error is not None
                   else "the stream ended before the job did")
            if streamed:
                lost_since, wait = None, WATCH_WAIT
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
            elif now - lost_since > WATCH_RESUME_FOR:
                raise _WatchLost(
                    f"no server gave the watch of {job_id} back for {WATCH_RESUME_FOR:.0f}s: "
                    f"{why}")
            self._dialer.failed(at)
            log.info("watch of %s at %s lost (%s); resuming in %.1fs", job_id,
                     self._dialer.addresses[at], why, wait)
            time.sleep(wait)
            wait = min(wait * 2, WATCH_MAX_WAIT)

    def watch_jobs(self, queues: list[str], labels: Optional[dict[str, str]] = None,
                   resume_token: str = "") -> Iterator[pb.WatchJobsResponse]:
        """Every job of yours in `queues` carrying `labels` (a page's room): a snapshot per
        unfinished job, one answer with `synced`, then live events, new jobs included (as
        snapshots of seq 0). Keep-alives are left out. Pass the last `resume_token` seen to
        come back after a disconnect without missing anything Redis still holds."""
        request = pb.WatchJobsRequest(queues=queues, labels=labels or {},
                                      resume_token=resume_token)
        for answer in self.jobs.WatchJobs(request):
            if answer.event.kind != pb.JobEvent.KIND_KEEPALIVE:
                yield answer

    def wait(self, job_id: str) -> pb.Job:
        """Watches the job to its end and returns it as it ended."""
        for _ in self.watch(job_id):
            pass
        return self.get(job_id)

    def upload_input(self, path: str, content_type: str = "") -> str:
        """Uploads a file straight to the store through a presigned URL; returns the reference
        to name in `submit(..., inputs=[...])`."""
        name = os.path.basename(path)
        answer = self._call("CreateInputUpload",
                            pb.CreateInputUploadRequest(name=name, content_type=content_type))
        with open(path, "rb") as f:
            _put(answer.url, f.read(), content_type)
        return answer.input

    def artifact_url(self, job_id: str, name: str) -> str:
        """A presigned GET URL of one of the job's artifacts (an hour, the server's default)."""
        return self._call("GetArtifactUrl",
                          pb.GetArtifactUrlRequest(job_id=job_id, name=name)).url

    def download(self, job_id: str, into: str) -> list[str]:
        """Fetches every artifact of the job into the folder `into`; returns their paths."""
        paths = []
        for artifact in self.get(job_id).artifacts:
            path = os.path.join(into, *artifact.name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with urllib.request.urlopen(self.artifact_url(job_id, artifact.name)) as r, \
                    open(path, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            paths.append(path)
        return paths


def _put(url: str, body: bytes, content_type: str = "") -> str:
    """PUTs `body` to a presigned URL; returns the ETag the store answered."""
    request = urllib.request.Request(url, data=body, method="PUT")
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request) as r:
        return r.headers.get("ETag", "")
