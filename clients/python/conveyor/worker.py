"""A Python worker: dial Conveyor, take jobs of your queues, report progress, upload artifacts.

    worker = Worker(queues=["render"], concurrency=2)

    @worker.job("render")
    def render(job, progress):
        progress(40, "render", "frame 1/10")
        job.upload("video.mp4", "/tmp/out/video.mp4")
        return {"video": "video.mp4"}

    worker.run()

A handler's return value is the job's result (JSON unless it is a str); raising `Fatal` fails the
job for good, any other exception fails the attempt (retried with backoff). The stream is dialed
again after it breaks, presenting the jobs still running so the server keeps their leases.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import queue
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Optional, Sequence

import grpc

from conveyor.client import _put, channel
from conveyor.v1 import jobs_pb2 as jobs_pb
from conveyor.v1 import workers_pb2 as pb
from conveyor.v1 import workers_pb2_grpc

log = logging.getLogger("conveyor.worker")

#: How long an upload question waits for the server's answer.
ASK_TIMEOUT = 60.0


class Fatal(Exception):
    """Raised by a handler: the job fails without another attempt."""


class Job:
    """One attempt of a job, as a handler sees it."""

    def __init__(self, worker: "Worker", assignment: pb.Assignment):
        self._worker = worker
        self.proto: jobs_pb.Job = assignment.job
        self.id: str = assignment.job.id
        self.queue: str = assignment.job.queue
        self.payload: bytes = assignment.job.payload
        self.labels: Dict[str, str] = dict(assignment.job.labels)
        self.attempt: int = assignment.attempt
        self.token: int = assignment.token
        self.inputs: Dict[str, str] = {
            i.input.split("/", 1)[-1]: i.url for i in assignment.inputs
        }
        self.cancelled = threading.Event()
        self.artifacts: list[str] = []
        # The submitter's W3C traceparent (empty: none). Continue the trace in the handler with
        # OpenTelemetry: `propagate.extract({"traceparent": job.traceparent})`.
        self.traceparent: str = assignment.trace_context

    def json(self):
        """The payload, decoded as JSON."""
        return json.loads(self.payload or b"null")

    def input(self, name: str, into: Optional[str] = None) -> str:
        """Downloads input `name` (its file name) into a folder; returns its path."""
        into = into or tempfile.mkdtemp(prefix="conveyor-input-")
        path = os.path.join(into, name)
        with urllib.request.urlopen(self.inputs[name]) as r, open(path, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        return path

    def upload(self, name: str, path: str, content_type: Optional[str] = None) -> None:
        """Uploads the file at `path` as artifact `name` of this attempt (in parts when the
        server says so); it becomes the job's when the attempt succeeds."""
        content_type = content_type or mimetypes.guess_type(name)[0] or ""
        size = os.path.getsize(path)
        answer = self._worker._ask(self.id, name, pb.ConnectRequest(upload=pb.UploadRequest(
            job_id=self.id, token=self.token, name=name, size=size,
            content_type=content_type)))
        if answer.WhichOneof("msg") == "upload_result":
            raise Fatal(f"upload of {name!r} refused: {answer.upload_result.message}")
        url = answer.upload_url
        with open(path, "rb") as f:
            if not url.part_urls:
                _put(url.url, f.read(), content_type)
            else:
                etags = []
                for part_url in url.part_urls:
                    etags.append(_put(part_url, f.read(url.part_size)))
                done = self._worker._ask(self.id, name, pb.ConnectRequest(
                    upload_done=pb.UploadDone(job_id=self.id, token=self.token, name=name,
                                              upload_id=url.upload_id, part_etags=etags)))
                if done.upload_result.code != 0:
                    raise RuntimeError(f"finishing {name!r}: {done.upload_result.message}")
        self.artifacts.append(name)


Handler = Callable[[Job, Callable[..., None]], object]


class Worker:
    def __init__(self, queues: Sequence[str], concurrency: int = 1,
                 address: Optional[str] = None, key: Optional[str] = None,
                 worker_id: Optional[str] = None):
        self.queues = list(queues)
        self.concurrency = concurrency
        self.address = address or os.environ.get("CONVEYOR_ADDR", "127.0.0.1:50051")
        self.key = key or os.environ.get("CONVEYOR_KEY")
        self.worker_id = worker_id or str(uuid.uuid4())
        self._handlers: Dict[str, Handler] = {}
        self._pool = ThreadPoolExecutor(max_workers=concurrency)
        self._running: Dict[str, Job] = {}
        self._lock = threading.Lock()
        self._asks: Dict[tuple, Future] = {}
        # What the current stream sends; each stream gets its own (a broken stream's sender
        # may still be reading its queue), and what was left over moves to the next one.
        self._outbox: "queue.Queue[Optional[pb.ConnectRequest]]" = queue.Queue()
        # Completes and Fails not yet answered, sent again on the next stream.
        self._final: Dict[str, pb.ConnectRequest] = {}
        self._stop = threading.Event()
        # Set once stopping is done: no stream is dialed again.
        self._closed = threading.Event()

    def job(self, queue_name: str) -> Callable[[Handler], Handler]:
        """Registers the decorated function as the handler of `queue_name`'s jobs."""
        def register(handler: Handler) -> Handler:
            self._handlers[queue_name] = handler
            return handler
        return register

    def stop(self, grace: float = 30.0) -> None:
        """Takes no new jobs, lets running handlers finish and their results be answered (for
        at most `grace` seconds), then ends `run`."""
        self._stop.set()

        def close() -> None:
            deadline = time.time() + grace
            while time.time() < deadline:
                with self._lock:
                    if not self._running and not self._final:
                        break
                time.sleep(0.05)
            self._closed.set()
            self._send(None)

        threading.Thread(target=close, daemon=True).start()

    def _send(self, message: Optional[pb.ConnectRequest]) -> None:
        with self._lock:
            self._outbox.put(message)

    def run(self) -> None:
        """Serves until `stop`, dialing again (with backoff) whenever the stream breaks."""
        backoff = 0.2
        while not self._closed.is_set():
            try:
                self._serve()
                backoff = 0.2
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                grpc.StatusCode.INVALID_ARGUMENT):
                    raise
                log.info("stream to %s broke (%s); again in %.1fs", self.address, e.code(), backoff)
            if not self._closed.wait(backoff):
                backoff = min(backoff * 2, 5.0)
        self._pool.shutdown(wait=True)

    # One stream: Hello, Welcome, then assignments until it ends.
    def _serve(self) -> None:
        outbox: "queue.Queue[Optional[pb.ConnectRequest]]" = queue.Queue()
        with self._lock:
            held = [pb.HeldLease(job_id=j.id, token=j.token) for j in self._running.values()]
            for ask in self._asks.values():
                ask.cancel()
            self._asks.clear()
            old, self._outbox = self._outbox, outbox
            # Progress made while disconnected follows the Hello; so do unanswered ends. The
            # old stream's sender gets its end last.
            while not old.empty():
                item = old.get_nowait()
                if item is not None and item.WhichOneof("msg") == "progress":
                    outbox.put(item)
            old.put(None)
            for final in self._final.values():
                outbox.put(final)
        hello = pb.Hello(queues=self.queues, concurrency=self.concurrency,
                         worker_id=self.worker_id, version="conveyor-python", held=held)

        def requests():
            yield pb.ConnectRequest(hello=hello)
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        chan = channel(self.address, self.key)
        try:
            stream = workers_pb2_grpc.WorkerServiceStub(chan).Connect(requests())
            beat = None
            for message in stream:
                kind = message.WhichOneof("msg")
                if kind == "welcome":
                    every = message.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5
                    beat = threading.Thread(target=self._heartbeat, args=(every, stream),
                                            daemon=True)
                    beat.start()
                    for lost in message.welcome.lost:
                        with self._lock:
                            job = self._running.get(lost)
                        if job:
                            job.cancelled.set()
                elif kind == "assignment":
                    self._start(message.assignment)
                elif kind == "cancel":
                    with self._lock:
                        job = self._running.get(message.cancel.job_id)
                    if job:
                        job.cancelled.set()
                elif kind in ("upload_url", "upload_result"):
                    answer = getattr(message, kind)
                    with self._lock:
                        ask = self._asks.pop((answer.job_id, answer.name), None)
                    if ask:
                        ask.set_result(message)
                elif kind == "report_result":
                    self._answered(message.report_result)
                elif kind == "drain":
                    return
        finally:
            chan.close()

    def _answered(self, r: pb.ReportResult) -> None:
        with self._lock:
            final = self._final.get(r.job_id)
            ours = final is not None and getattr(final, final.WhichOneof("msg")).token == r.token
            if ours and r.code != grpc.StatusCode.UNAVAILABLE.value[0]:
                del self._final[r.job_id]
        if r.code != 0:
            log.warning("report about %s refused: %s", r.job_id, r.message)

    def _heartbeat(self, every: float, stream) -> None:
        while stream.is_active() and not self._closed.wait(every):
            self._send(pb.ConnectRequest(heartbeat=pb.Heartbeat()))

    def _ask(self, job_id: str, name: str, message: pb.ConnectRequest) -> pb.ConnectResponse:
        for _ in range(5):
            ask: Future = Future()
            with self._lock:
                self._asks[(job_id, name)] = ask
            self._send(message)
            try:
                answer = ask.result(timeout=ASK_TIMEOUT)
            except Exception:  # the stream broke (cancelled) or no answer: ask again
                time.sleep(0.5)
                continue
            kind = answer.WhichOneof("msg")
            if kind == "upload_result" and answer.upload_result.code == grpc.StatusCode.UNAVAILABLE.value[0]:
                time.sleep(0.5)
                continue
            return answer
        raise RuntimeError(f"no answer about {name!r} from the server")

    def _start(self, assignment: pb.Assignment) -> None:
        job = Job(self, assignment)
        if self._stop.is_set():
            self._send_fail(job, "the worker is stopping", True)
            return
        handler = self._handlers.get(job.queue)
        if handler is None:
            self._send_fail(job, f"this worker has no handler for queue {job.queue!r}", False)
            return
        with self._lock:
            self._running[job.id] = job
        self._pool.submit(self._run, handler, job)

    def _run(self, handler: Handler, job: Job) -> None:
        def progress(percent: float, stage: str = "", message: str = "") -> None:
            self._send(pb.ConnectRequest(progress=pb.ProgressReport(
                job_id=job.id, token=job.token,
                progress=jobs_pb.Progress(percent=percent, stage=stage, message=message))))

        try:
            result = handler(job, progress)
            if job.cancelled.is_set():
                return
            text = result if isinstance(result, str) else json.dumps(result)
            self._finish(job, pb.ConnectRequest(complete=pb.Complete(
                job_id=job.id, token=job.token, result=text, artifacts=job.artifacts,
                trace_context=job.traceparent)))
        except Fatal as e:
            self._send_fail(job, str(e), False)
        except Exception as e:  # the attempt failed; the server retries it with backoff
            log.exception("job %s failed", job.id)
            self._send_fail(job, f"{type(e).__name__}: {e}", True)
        finally:
            with self._lock:
                self._running.pop(job.id, None)

    def _send_fail(self, job: Job, error: str, retryable: bool) -> None:
        self._finish(job, pb.ConnectRequest(fail=pb.Fail(
            job_id=job.id, token=job.token, error=error, retryable=retryable,
            trace_context=job.traceparent)))

    def _finish(self, job: Job, message: pb.ConnectRequest) -> None:
        with self._lock:
            self._final[job.id] = message
            self._outbox.put(message)
