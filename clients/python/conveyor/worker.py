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

`address` may name every replica (`"a:50051,b:50051"`, or a sequence): the worker starts at a
random one, and whenever its stream ends (the replica drains, dies or the connection breaks) it
dials the next, where the same Hello re-attaches the jobs it holds.

`stop` tells the server the worker takes no new jobs (Stopping), hands back any assignment that
still arrives (Decline: the job goes back to its place in line, its attempt not counted), lets
the running jobs finish and be reported, then `run` returns. In the main thread, SIGTERM (how
Kubernetes stops a pod) and SIGINT do the same.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import queue
import signal
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import Future
from typing import Callable, Dict, Optional, Sequence

import grpc

from conveyor.client import Addresses, _Dialer, _put, channel
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
                 address: Optional[Addresses] = None, key: Optional[str] = None,
                 worker_id: Optional[str] = None):
        self.queues = list(queues)
        self.concurrency = concurrency
        self.key = key or os.environ.get("CONVEYOR_KEY")
        # Every address given, in order; each stream dials the one in use.
        self._dialer = _Dialer(address, self.key)
        self.addresses = list(self._dialer.addresses)
        self.address = ",".join(self.addresses)
        self.worker_id = worker_id or str(uuid.uuid4())
        self._handlers: Dict[str, Handler] = {}
        # One thread per running handler. A cancelled job's handler may run on after the server
        # has freed its slot (it stops when it checks `job.cancelled`); it holds no slot here
        # either, so the slot goes to the next job as the server means it to.
        self._threads: set = set()
        self._running: Dict[str, Job] = {}
        self._lock = threading.Lock()
        self._asks: Dict[tuple, Future] = {}
        # What the current stream sends; each stream gets its own (a broken stream's sender
        # may still be reading its queue), and what was left over moves to the next one.
        self._outbox: "queue.Queue[Optional[pb.ConnectRequest]]" = queue.Queue()
        # Completes, Fails and Declines not yet answered, by job id: sent again on the next
        # stream (whose Hello still holds their leases), dropped once a ReportResult answers.
        self._final: Dict[str, pb.ConnectRequest] = {}
        self._stop = threading.Event()
        # Set once stopping is done: no stream is dialed again. Cleared again when an assignment
        # reaches a stream that was already ending, whose Decline then needs one more stream.
        self._closed = threading.Event()
        # The grace of `stop` ran out: nothing opens the worker again.
        self._gave_up = False
        # Set when `run` returns.
        self._finished = threading.Event()
        # The current stream, cancelled when the grace runs out.
        self._call = None

    def job(self, queue_name: str) -> Callable[[Handler], Handler]:
        """Registers the decorated function as the handler of `queue_name`'s jobs."""
        def register(handler: Handler) -> Handler:
            self._handlers[queue_name] = handler
            return handler
        return register

    def stop(self, grace: float = 30.0) -> None:
        """Takes no new jobs, lets running handlers finish and their results be answered (for
        at most `grace` seconds from now, across reconnects), then ends `run`. Safe from any
        thread; a second call does nothing.

        The server hears it at once (Stopping) and stops offering this worker's slots; an
        assignment already on its way is handed back (Decline), so its attempt does not count.
        A stream dialed again while stopping says so in its Hello (`stopping`)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            running = len(self._running)
            self._outbox.put(pb.ConnectRequest(stopping=pb.Stopping(reason="shutting down")))
        log.info("stopping: %d running, taking no new jobs", running)
        self._end_if_done()

        def deadline() -> None:
            if self._finished.wait(grace):
                return
            with self._lock:
                self._gave_up = True
                if self._closed.is_set():
                    return
                self._closed.set()
                self._outbox.put(None)
                call = self._call
            log.warning("jobs still running after %.0fs; stopping anyway", grace)
            if call is not None:
                call.cancel()

        threading.Thread(target=deadline, daemon=True).start()

    def _end_if_done(self) -> None:
        """Ends `run` once a stopping worker runs nothing and every end it sent is answered."""
        with self._lock:
            if (self._stop.is_set() and not self._running and not self._final
                    and not self._closed.is_set()):
                self._closed.set()
                self._outbox.put(None)

    def _send(self, message: Optional[pb.ConnectRequest]) -> None:
        with self._lock:
            self._outbox.put(message)

    def run(self, handle_signals: bool = True, grace: float = 30.0) -> None:
        """Serves until `stop`, dialing again (with backoff) whenever the stream breaks, and
        dialing the next address (when there are several) whenever the stream ends.

        In the main thread (and unless `handle_signals` is false), SIGTERM and SIGINT call
        `stop(grace)`; a second signal gets the handler that was there before (Ctrl-C twice:
        KeyboardInterrupt), and `run` puts the previous handlers back when it returns."""
        restore = self._trap_signals(grace) if handle_signals else None
        try:
            backoff = 0.2
            while not self._closed.is_set():
                at, address = self._dialer.address()
                began = time.monotonic()
                try:
                    self._serve(address)
                    backoff = 0.2
                except grpc.RpcError as e:
                    if e.code() in (grpc.StatusCode.PERMISSION_DENIED,
                                    grpc.StatusCode.UNAUTHENTICATED,
                                    grpc.StatusCode.INVALID_ARGUMENT):
                        raise
                    # A stream that served a while broke: its replica went away, not a
                    # server that keeps refusing.
                    if time.monotonic() - began > 10.0:
                        backoff = 0.2
                    log.info("stream to %s broke (%s); again in %.1fs", address, e.code(),
                             backoff)
                # Whatever ended the stream, the next one starts at the next address.
                self._dialer.failed(at)
                if not self._closed.wait(backoff):
                    backoff = min(backoff * 2, 5.0)
        finally:
            if restore:
                restore()
            # Handlers still running (cancelled ones, or past the grace) finish first.
            with self._lock:
                threads = list(self._threads)
            for thread in threads:
                thread.join()
            self._finished.set()

    def _trap_signals(self, grace: float) -> Optional[Callable[[], None]]:
        """Installs the SIGTERM and SIGINT handlers (only the main thread may); returns what
        puts the previous ones back."""
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        got: list = []
        signalled = threading.Event()

        def restore() -> None:
            for s, handler in previous.items():
                # None: a handler not set from Python, which cannot be put back from here.
                if handler is not None and signal.getsignal(s) is on_signal:
                    signal.signal(s, handler)

        def on_signal(signum, frame) -> None:
            # Only this here: the main thread may be inside the worker's lock when it runs.
            restore()
            got.append(signum)
            signalled.set()

        def stopper() -> None:
            signalled.wait()
            if got:
                log.info("%s: finishing the running jobs, taking no new ones",
                         signal.Signals(got[0]).name)
                self.stop(grace)

        for s in previous:
            signal.signal(s, on_signal)
        threading.Thread(target=stopper, daemon=True).start()

        def done() -> None:
            restore()
            signalled.set()  # ends the stopper

        return done

    # One stream: Hello, Welcome, then assignments until it ends.
    def _serve(self, address: str) -> None:
        outbox: "queue.Queue[Optional[pb.ConnectRequest]]" = queue.Queue()
        with self._lock:
            if self._closed.is_set():
                return
            stopping = self._stop.is_set()
            leases = {j.id: j.token for j in self._running.values()}
            # Ends not yet answered too: a lease the Hello leaves out goes back to its queue at
            # once with its attempt counted, before the end sent again below lands (a Decline
            # would then come too late to spare the attempt).
            for final in self._final.values():
                end = getattr(final, final.WhichOneof("msg"))
                leases.setdefault(end.job_id, end.token)
            held = [pb.HeldLease(job_id=i, token=t) for i, t in leases.items()]
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
        # A stopping worker says so: the server offers this stream no job, and takes the
        # reports of the jobs the worker holds.
        if stopping:
            log.info("stopping: dialing again to report %d held job(s)", len(held))
        hello = pb.Hello(queues=self.queues, concurrency=self.concurrency,
                         worker_id=self.worker_id, version="conveyor-python", held=held,
                         stopping=stopping)

        def requests():
            yield pb.ConnectRequest(hello=hello)
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        chan = channel(address, self.key)
        try:
            stream = workers_pb2_grpc.WorkerServiceStub(chan).Connect(requests())
            with self._lock:
                self._call = stream
                if self._gave_up:
                    stream.cancel()
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
                    self._end_if_done()
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
            with self._lock:
                if self._call is stream:
                    self._call = None
            chan.close()

    def _answered(self, r: pb.ReportResult) -> None:
        unavailable = r.code == grpc.StatusCode.UNAVAILABLE.value[0]
        with self._lock:
            final = self._final.get(r.job_id)
            ours = final is not None and getattr(final, final.WhichOneof("msg")).token == r.token
            if ours and not unavailable:
                del self._final[r.job_id]
        if ours and unavailable:
            # The server could not store it now: again in a moment.
            log.info("report about %s not stored yet (%s); sending it again", r.job_id,
                     r.message)
            timer = threading.Timer(1.0, self._resend, args=(r.job_id, r.token))
            timer.daemon = True
            timer.start()
        elif r.code != 0:
            log.warning("report about %s refused: %s", r.job_id, r.message)
        self._end_if_done()

    def _resend(self, job_id: str, token: int) -> None:
        with self._lock:
            final = self._final.get(job_id)
            if final is not None and getattr(final, final.WhichOneof("msg")).token == token:
                self._outbox.put(final)

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
        handler = self._handlers.get(job.queue)
        with self._lock:
            busy = sum(1 for j in self._running.values() if not j.cancelled.is_set())
            if self._stop.is_set():
                refusal: Optional[str] = "the worker is stopping"
            elif busy >= self.concurrency:
                refusal = f"no free slot ({busy} of {self.concurrency} running)"
            else:
                refusal = None
            if refusal is None and handler is not None:
                self._running[job.id] = job
                thread = threading.Thread(target=self._run, args=(handler, job),
                                          name=f"conveyor-job-{job.id}")
                self._threads.add(thread)
                thread.start()
                return
        if refusal is not None:
            # Never a Fail: that would count the attempt of a job that never ran.
            self._decline(job, refusal)
        else:
            self._send_fail(job, f"this worker has no handler for queue {job.queue!r}", False)

    def _decline(self, job: Job, reason: str) -> None:
        """Hands the assignment back: the job goes back to its place in line, and the attempt
        does not count. Kept, like an end, until a ReportResult answers it."""
        message = pb.ConnectRequest(decline=pb.Decline(job_id=job.id, token=job.token,
                                                      reason=reason))
        with self._lock:
            self._final[job.id] = message
            self._outbox.put(message)
            if self._closed.is_set() and not self._gave_up:
                # It came on a stream this worker was already ending: dial once more (stopping)
                # to hand it back.
                self._closed.clear()
        log.info("declined %s: %s", job.id, reason)

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
                # Not a later assignment of the same job (this one may have been cancelled).
                if self._running.get(job.id) is job:
                    del self._running[job.id]
                self._threads.discard(threading.current_thread())
            self._end_if_done()

    def _send_fail(self, job: Job, error: str, retryable: bool) -> None:
        self._finish(job, pb.ConnectRequest(fail=pb.Fail(
            job_id=job.id, token=job.token, error=error, retryable=retryable,
            trace_context=job.traceparent)))

    def _finish(self, job: Job, message: pb.ConnectRequest) -> None:
        with self._lock:
            self._final[job.id] = message
            self._outbox.put(message)
