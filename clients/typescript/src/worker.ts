// A Node worker: dial Conveyor over one bidirectional gRPC stream, take jobs of your queues,
// report progress, upload artifacts, and dial again when the stream breaks. Given every
// replica's address (`address: [a, b]` or "a,b"), it dials the next one whenever its stream
// ends, and presents the jobs it holds there.
//
//   const worker = new Worker({ queues: ["render"], concurrency: 2 });
//   worker.job("render", async (job, progress) => {
//     await progress(40, "render", "frame 1/10");
//     await job.upload("video.mp4", "/tmp/out/video.mp4");
//     return { video: "video.mp4" };
//   });
//   await worker.run();
//
// A handler's return value is the job's result (JSON unless a string); throwing `Fatal` fails
// the job for good, any other error fails the attempt (the server retries it with backoff).
//
// In the main thread, `run` stops on SIGTERM (how Kubernetes stops a pod) and SIGINT the way
// `stop` does: running jobs finish and are reported, no new ones are taken, then `run` returns.

import { randomUUID } from "node:crypto";
import { open, stat } from "node:fs/promises";
import { isMainThread } from "node:worker_threads";

import { create } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";

import { Replicas, grpcTransport, put, type Options } from "./client.js";
import { ProgressSchema, type Job as JobMessage } from "./gen/conveyor/v1/jobs_pb.js";
import {
  CompleteSchema,
  ConnectRequestSchema,
  DeclineSchema,
  FailSchema,
  HeartbeatSchema,
  HelloSchema,
  ProgressReportSchema,
  StoppingSchema,
  UploadDoneSchema,
  UploadRequestSchema,
  WorkerService,
  type Assignment,
  type ConnectRequest,
  type ConnectResponse,
} from "./gen/conveyor/v1/workers_pb.js";

/** Thrown by a handler: the job fails without another attempt. */
export class Fatal extends Error {}

type Request = ConnectRequest["msg"];
type Progress = (percent: number, stage?: string, message?: string) => Promise<void>;
export type Handler = (job: Job, progress: Progress) => Promise<unknown>;

/** Requests for one stream, as an async iterable the transport reads. */
class Outbox implements AsyncIterable<ConnectRequest> {
  private items: ConnectRequest[] = [];
  private waiting?: () => void;
  private closed = false;

  push(msg: Request): void {
    if (this.closed) return;
    this.items.push(create(ConnectRequestSchema, { msg }));
    this.waiting?.();
  }

  close(): void {
    this.closed = true;
    this.waiting?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ConnectRequest> {
    for (;;) {
      const item = this.items.shift();
      if (item) {
        yield item;
        continue;
      }
      if (this.closed) return;
      await new Promise<void>((resolve) => (this.waiting = resolve));
      this.waiting = undefined;
    }
  }
}

/** One attempt of a job, as a handler sees it. */
export class Job {
  readonly id: string;
  readonly queue: string;
  readonly payload: Uint8Array;
  readonly attempt: number;
  readonly token: bigint;
  readonly proto: JobMessage;
  /** Set when the job is cancelled or its lease is lost, or the grace of `stop` ran out. */
  cancelled = false;
  readonly artifacts: string[] = [];
  /** Input file name → download URL. */
  readonly inputs: Map<string, string>;
  /** The submitter's W3C traceparent ("" for none); continue the trace with OpenTelemetry's
   *  `propagation.extract(context.active(), { traceparent: job.traceparent })`. */
  readonly traceparent: string;

  constructor(private worker: Worker, a: Assignment) {
    this.proto = a.job!;
    this.id = a.job!.id;
    this.queue = a.job!.queue;
    this.payload = a.job!.payload;
    this.attempt = a.attempt;
    this.token = a.token;
    this.traceparent = a.traceContext;
    this.inputs = new Map(a.inputs.map((i) => [i.input.split("/").slice(1).join("/"), i.url]));
  }

  json<T = unknown>(): T {
    return JSON.parse(new TextDecoder().decode(this.payload) || "null") as T;
  }

  /** The bytes of input `name` (its file name). */
  async input(name: string): Promise<Uint8Array> {
    const url = this.inputs.get(name);
    if (!url) throw new Error(`no input ${name}`);
    return new Uint8Array(await (await fetch(url)).arrayBuffer());
  }

  /** Uploads the file at `path` as artifact `name` of this attempt (in parts when the server
   *  says so); it becomes the job's when the handler returns. */
  async upload(name: string, path: string, contentType = ""): Promise<void> {
    const size = (await stat(path)).size;
    const answer = await this.worker.ask(this.id, name, {
      case: "upload",
      value: create(UploadRequestSchema, { jobId: this.id, token: this.token, name, size: BigInt(size), contentType }),
    });
    if (answer.msg.case === "uploadResult") {
      throw new Fatal(`upload of ${name} refused: ${answer.msg.value.message}`);
    }
    if (answer.msg.case !== "uploadUrl") throw new Error(`unexpected answer ${answer.msg.case}`);
    const url = answer.msg.value;
    const file = await open(path);
    try {
      if (url.partUrls.length === 0) {
        await put(url.url, await file.readFile(), contentType);
      } else {
        const etags: string[] = [];
        const partSize = Number(url.partSize);
        for (const [i, partUrl] of url.partUrls.entries()) {
          const length = Math.min(partSize, size - i * partSize);
          const part = new Uint8Array(length);
          await file.read(part, 0, length, i * partSize);
          etags.push(await put(partUrl, part));
        }
        const done = await this.worker.ask(this.id, name, {
          case: "uploadDone",
          value: create(UploadDoneSchema, { jobId: this.id, token: this.token, name, uploadId: url.uploadId, partEtags: etags }),
        });
        if (done.msg.case !== "uploadResult" || done.msg.value.code !== 0) {
          throw new Error(`finishing ${name}: ${done.msg.case === "uploadResult" ? done.msg.value.message : done.msg.case}`);
        }
      }
    } finally {
      await file.close();
    }
    this.artifacts.push(name);
  }
}

/** `address` may list every replica (see `Options`): the worker starts at a random one, stays
 *  on it while its stream lasts, and dials the next whenever the stream ends (the replica gone,
 *  or draining). `transport` replaces the one made from `address` and `key`; a `Replicas` one
 *  is moved on the same way. */
export interface WorkerOptions extends Options {
  queues: string[];
  concurrency?: number;
  workerId?: string;
  transport?: Transport;
}

/** How the worker's connection is checked (see KeepAlive): a replica gone without closing it
 *  is noticed in seconds, as the Rust worker does. */
const KEEP_ALIVE = { pingIntervalMs: 10_000, pingTimeoutMs: 5_000 };

/** What `run` takes. */
export interface RunOptions {
  /** In the main thread, SIGTERM and SIGINT call `stop(graceMs)` while `run` runs (default:
   *  true). The listeners are added next to any the application has, and removed at the first
   *  signal, so a second one gets what was there before (Node's default: the process ends, as
   *  on Ctrl-C twice), and when `run` returns. False: call `stop` from your own handler. */
  handleSignals?: boolean;
  /** How long a stop by signal lets running jobs finish: 30 s unless given. */
  graceMs?: number;
}

/** What a stopping worker tells the server, in Stopping and in each Decline. */
const STOPPING = "shutting down";

/** The reports the server must answer with a ReportResult. */
type End = Extract<Request, { case: "complete" | "fail" | "decline" }>;

export class Worker {
  readonly workerId: string;
  private handlers = new Map<string, Handler>();
  private running = new Map<string, Job>();
  /** Completes, Fails and Declines not yet answered, by job id: sent again on the next stream
   *  (whose Hello holds their leases), dropped once answered. */
  private final = new Map<string, End>();
  private asks = new Map<string, (answer: ConnectResponse) => void>();
  private outbox = new Outbox();
  /** Cuts the current stream, should it outlive the end of a stop. */
  private call?: AbortController;
  /** Set by `stop`: no new jobs, and the server knows (Stopping; Hello.stopping on a reconnect). */
  private stopping = false;
  /** The end of the grace `stop` gives, counted from the stop across reconnects. */
  private deadline?: NodeJS.Timeout;
  /** Set once a stop is done (or out of time): no stream is dialed again. */
  private stopped = false;
  /** Ends the wait before the next dial early. */
  private wake?: () => void;
  private transport: Transport;
  /** The transport, when it can be told to move on to another replica. */
  private replicas?: Replicas;
  /** The current stream got its Welcome: it was up, so the next dial needs no long wait. */
  private welcomed = false;

  constructor(private options: WorkerOptions) {
    this.workerId = options.workerId ?? randomUUID();
    this.transport = options.transport ?? grpcTransport(options, KEEP_ALIVE);
    if (this.transport instanceof Replicas) this.replicas = this.transport;
  }

  job(queue: string, handler: Handler): this {
    this.handlers.set(queue, handler);
    return this;
  }

  /** Takes no new jobs, lets running handlers finish and their results be answered (for at
   *  most `graceMs`), then ends `run`. The server is told at once, so it offers this worker no
   *  more jobs; an assignment already on its way is handed back (Decline), which costs the job
   *  no attempt. The grace counts from this call, across reconnects; when it runs out, `run`
   *  ends anyway, handlers still running see `job.cancelled`, and their jobs go back to their
   *  queues once the server gives up on this worker. A second call does nothing. */
  stop(graceMs = 30_000): void {
    if (this.stopping) return;
    this.stopping = true;
    // On the current stream; between two streams the outbox is closed, and the next Hello says so.
    this.outbox.push({ case: "stopping", value: create(StoppingSchema, { reason: STOPPING }) });
    this.deadline = setTimeout(() => {
      console.warn(
        `conveyor worker: not done ${graceMs} ms after stop (${this.running.size} running, ` +
          `${this.final.size} reports unanswered); stopping anyway`,
      );
      for (const job of this.running.values()) job.cancelled = true;
      this.close();
    }, graceMs);
    this.endIfDone();
  }

  /** Serves until `stop`, dialing again (with backoff; the next replica, when there are several)
   *  whenever the stream ends. Unless `handleSignals` is false, SIGTERM and SIGINT stop the
   *  worker (see RunOptions). */
  async run({ handleSignals = true, graceMs = 30_000 }: RunOptions = {}): Promise<void> {
    const untrap = handleSignals ? this.trapSignals(graceMs) : undefined;
    try {
      let backoff = 200;
      while (!this.stopped) {
        const via = this.replicas?.address;
        try {
          await this.serve();
          backoff = 200;
        } catch (e) {
          if (this.stopped) break;
          // A stream that was up broke (its replica gone): the next one is dialed soon.
          if (this.welcomed) backoff = 200;
          const to = via === undefined ? "" : ` to ${via}`;
          const next = this.replicas && this.replicas.addresses.length > 1 ? ", on the next address" : "";
          console.warn(`conveyor worker: stream${to} broke (${(e as Error).message}); again in ${backoff} ms${next}`);
        }
        // Drained or broken, the next stream starts at the next replica, if there is one.
        if (via !== undefined) this.replicas!.failed(via);
        if (this.stopped) break;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, backoff);
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = undefined;
        backoff = Math.min(backoff * 2, 5000);
      }
    } finally {
      untrap?.();
    }
  }

  /** Sends `msg` and waits for the server's answer about artifact `name` of job `jobId`. */
  async ask(jobId: string, name: string, msg: Request): Promise<ConnectResponse> {
    for (let i = 0; i < 5; i++) {
      const answer = await new Promise<ConnectResponse | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), 60_000);
        this.asks.set(`${jobId}\n${name}`, (a) => {
          clearTimeout(timer);
          resolve(a);
        });
        this.outbox.push(msg);
      });
      const unavailable = answer?.msg.case === "uploadResult" && answer.msg.value.code === 14;
      if (answer && !unavailable) return answer;
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`no answer about ${name} from the server`);
  }

  /** SIGTERM and SIGINT call `stop(graceMs)`; returns what removes the listeners. Only the main
   *  thread gets signals. */
  private trapSignals(graceMs: number): (() => void) | undefined {
    if (!isMainThread) return undefined;
    const signals = ["SIGTERM", "SIGINT"] as const;
    const untrap = () => signals.forEach((s) => process.removeListener(s, onSignal));
    const onSignal = (signal: NodeJS.Signals) => {
      // A second signal gets what was there before: the application's listeners, or (none)
      // Node's default, which ends the process.
      untrap();
      console.warn(`conveyor worker: ${signal}: finishing the running jobs, taking no new ones`);
      this.stop(graceMs);
    };
    signals.forEach((s) => process.on(s, onSignal));
    return untrap;
  }

  /** Ends `run` once a stopping worker runs nothing and every report it sent is answered. */
  private endIfDone(): void {
    if (this.stopping && this.running.size === 0 && this.final.size === 0) this.close();
  }

  private close(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.deadline);
    // Our end of the stream ends, and the server ends its end; a call still open after that
    // (a server that does not answer) is cut.
    this.outbox.close();
    const call = this.call;
    if (call) setTimeout(() => call.abort(), 2000).unref();
    this.wake?.();
  }

  private async serve(): Promise<void> {
    const outbox = new Outbox();
    this.outbox = outbox;
    this.welcomed = false;
    const call = new AbortController();
    this.call = call;
    // The leases this worker holds: its running jobs, and those whose end is not answered yet
    // (a lease the Hello leaves out goes back to its queue at once, the attempt counted, before
    // the end sent again below lands).
    const held = new Map<string, bigint>();
    for (const job of this.running.values()) held.set(job.id, job.token);
    for (const end of this.final.values()) {
      if (!held.has(end.value.jobId)) held.set(end.value.jobId, end.value.token);
    }
    // create() fills what is not given, so a field added to Hello does not break this.
    outbox.push({
      case: "hello",
      value: create(HelloSchema, {
        queues: this.options.queues,
        concurrency: this.options.concurrency ?? 1,
        version: "conveyor-typescript",
        workerId: this.workerId,
        held: [...held].map(([jobId, token]) => ({ jobId, token })),
        // A stopping worker is back only to report the jobs it holds: it gets no new ones.
        stopping: this.stopping,
      }),
    });
    for (const end of this.final.values()) outbox.push(end);
    let beat: NodeJS.Timeout | undefined;
    try {
      const stream = createClient(WorkerService, this.transport).connect(outbox, { signal: call.signal });
      for await (const message of stream) {
        const msg = message.msg;
        switch (msg.case) {
          case "welcome": {
            this.welcomed = true;
            const every = Number(msg.value.heartbeatInterval?.seconds ?? 5n) * 1000 || 5000;
            beat = setInterval(() => outbox.push({ case: "heartbeat", value: create(HeartbeatSchema) }), every);
            for (const lost of msg.value.lost) {
              const job = this.running.get(lost);
              if (job) job.cancelled = true;
            }
            break;
          }
          case "assignment":
            this.start(msg.value);
            break;
          case "cancel": {
            const job = this.running.get(msg.value.jobId);
            if (job) job.cancelled = true;
            break;
          }
          case "uploadUrl":
          case "uploadResult": {
            const key = `${msg.value.jobId}\n${msg.value.name}`;
            const answer = this.asks.get(key);
            this.asks.delete(key);
            answer?.(message);
            break;
          }
          case "reportResult": {
            const r = msg.value;
            const end = this.final.get(r.jobId);
            const ours = end !== undefined && end.value.token === r.token;
            if (ours && r.code === 14) {
              // The server could not store it now; the report is still good: again in a moment.
              setTimeout(() => {
                if (this.outbox === outbox && this.final.get(r.jobId) === end) outbox.push(end);
              }, 1000).unref();
              break;
            }
            if (ours) this.final.delete(r.jobId);
            if (r.code !== 0) console.warn(`conveyor worker: report about ${r.jobId} refused: ${r.message}`);
            this.endIfDone();
            break;
          }
          case "drain":
            return;
        }
      }
    } finally {
      if (beat) clearInterval(beat);
      outbox.close();
      if (this.call === call) this.call = undefined;
      // Questions asked on this stream are asked again on the next.
      for (const answer of this.asks.values()) answer(undefined as unknown as ConnectResponse);
      this.asks.clear();
    }
  }

  private start(a: Assignment): void {
    const job = new Job(this, a);
    const full = this.running.size >= (this.options.concurrency ?? 1);
    if (this.stopping || full) {
      // Handed back, not failed: the job goes back to its place in line, and the attempt does
      // not count.
      const reason = this.stopping ? STOPPING : "the worker has no free slot";
      this.finish({ case: "decline", value: create(DeclineSchema, { jobId: job.id, token: job.token, reason }) });
      return;
    }
    const handler = this.handlers.get(job.queue);
    if (!handler) {
      const error = `this worker has no handler for queue ${job.queue}`;
      this.finish({ case: "fail", value: create(FailSchema, { jobId: job.id, token: job.token, error, retryable: false, traceContext: job.traceparent }) });
      return;
    }
    this.running.set(job.id, job);
    const progress: Progress = async (percent, stage = "", message = "") => {
      this.outbox.push({
        case: "progress",
        value: create(ProgressReportSchema, {
          jobId: job.id,
          token: job.token,
          progress: create(ProgressSchema, { percent, stage, message }),
        }),
      });
    };
    handler(job, progress)
      .then((result) => {
        if (job.cancelled) return;
        const text = typeof result === "string" ? result : JSON.stringify(result ?? null);
        this.finish({ case: "complete", value: create(CompleteSchema, { jobId: job.id, token: job.token, result: text, artifacts: job.artifacts, traceContext: job.traceparent }) });
      })
      .catch((e: Error) => {
        const retryable = !(e instanceof Fatal);
        const error = retryable ? `${e.name}: ${e.message}` : e.message;
        this.finish({ case: "fail", value: create(FailSchema, { jobId: job.id, token: job.token, error, retryable, traceContext: job.traceparent }) });
      })
      .finally(() => {
        this.running.delete(job.id);
        this.endIfDone();
      });
  }

  /** Sends the end of an assignment, kept until the server answers it. */
  private finish(end: End): void {
    this.final.set(end.value.jobId, end);
    this.outbox.push(end);
  }
}
