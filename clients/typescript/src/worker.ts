// A Node worker: dial Conveyor over one bidirectional gRPC stream, take jobs of your queues,
// report progress, upload artifacts, and dial again when the stream breaks.
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

import { randomUUID } from "node:crypto";
import { open, stat } from "node:fs/promises";

import { create } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";

import { grpcTransport, put, type Options } from "./client.js";
import type { Job as JobMessage } from "./gen/conveyor/v1/jobs_pb.js";
import {
  ConnectRequestSchema,
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
  /** Set when the job is cancelled or its lease is lost. */
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
      value: { $typeName: "conveyor.v1.UploadRequest", jobId: this.id, token: this.token, name, size: BigInt(size), contentType },
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
          value: { $typeName: "conveyor.v1.UploadDone", jobId: this.id, token: this.token, name, uploadId: url.uploadId, partEtags: etags },
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

export interface WorkerOptions extends Options {
  queues: string[];
  concurrency?: number;
  workerId?: string;
  transport?: Transport;
}

export class Worker {
  readonly workerId: string;
  private handlers = new Map<string, Handler>();
  private running = new Map<string, Job>();
  /** Completes and Fails not yet answered, sent again on the next stream. */
  private final = new Map<string, Request>();
  private asks = new Map<string, (answer: ConnectResponse) => void>();
  private outbox = new Outbox();
  private stopping = false;
  private stopped = false;
  private transport: Transport;

  constructor(private options: WorkerOptions) {
    this.workerId = options.workerId ?? randomUUID();
    this.transport = options.transport ?? grpcTransport(options);
  }

  job(queue: string, handler: Handler): this {
    this.handlers.set(queue, handler);
    return this;
  }

  /** Takes no new jobs, lets running handlers finish and their results be answered (for at
   *  most `graceMs`), then ends `run`. */
  stop(graceMs = 30_000): void {
    this.stopping = true;
    const deadline = Date.now() + graceMs;
    const close = () => {
      if ((this.running.size > 0 || this.final.size > 0) && Date.now() < deadline) {
        setTimeout(close, 50);
        return;
      }
      this.stopped = true;
      this.outbox.close();
    };
    close();
  }

  /** Serves until `stop`, dialing again (with backoff) whenever the stream breaks. */
  async run(): Promise<void> {
    let backoff = 200;
    while (!this.stopped) {
      try {
        await this.serve();
        backoff = 200;
      } catch (e) {
        if (this.stopped) break;
        console.warn(`conveyor worker: stream broke (${(e as Error).message}); again in ${backoff} ms`);
      }
      if (this.stopped) break;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 5000);
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

  private async serve(): Promise<void> {
    const outbox = new Outbox();
    this.outbox = outbox;
    const held = [...this.running.values()].map((j) => ({ jobId: j.id, token: j.token }));
    outbox.push({
      case: "hello",
      value: {
        $typeName: "conveyor.v1.Hello",
        queues: this.options.queues,
        concurrency: this.options.concurrency ?? 1,
        labels: {},
        version: "conveyor-typescript",
        workerId: this.workerId,
        held: held.map((h) => ({ $typeName: "conveyor.v1.HeldLease", ...h })),
      },
    });
    for (const msg of this.final.values()) outbox.push(msg);
    let beat: NodeJS.Timeout | undefined;
    try {
      const stream = createClient(WorkerService, this.transport).connect(outbox);
      for await (const message of stream) {
        const msg = message.msg;
        switch (msg.case) {
          case "welcome": {
            const every = Number(msg.value.heartbeatInterval?.seconds ?? 5n) * 1000 || 5000;
            beat = setInterval(() => outbox.push({ case: "heartbeat", value: { $typeName: "conveyor.v1.Heartbeat" } }), every);
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
            const final = this.final.get(r.jobId);
            if (final && final.value && "token" in final.value && final.value.token === r.token && r.code !== 14) {
              this.final.delete(r.jobId);
            }
            if (r.code !== 0) console.warn(`conveyor worker: report about ${r.jobId} refused: ${r.message}`);
            break;
          }
          case "drain":
            return;
        }
      }
    } finally {
      if (beat) clearInterval(beat);
      outbox.close();
      // Questions asked on this stream are asked again on the next.
      for (const answer of this.asks.values()) answer(undefined as unknown as ConnectResponse);
      this.asks.clear();
    }
  }

  private start(a: Assignment): void {
    const job = new Job(this, a);
    if (this.stopping) {
      this.finish(job, { case: "fail", value: { $typeName: "conveyor.v1.Fail", jobId: job.id, token: job.token, error: "the worker is stopping", retryable: true, traceContext: job.traceparent } });
      return;
    }
    const handler = this.handlers.get(job.queue);
    if (!handler) {
      this.finish(job, { case: "fail", value: { $typeName: "conveyor.v1.Fail", jobId: job.id, token: job.token, error: `this worker has no handler for queue ${job.queue}`, retryable: false, traceContext: job.traceparent } });
      return;
    }
    this.running.set(job.id, job);
    const progress: Progress = async (percent, stage = "", message = "") => {
      this.outbox.push({
        case: "progress",
        value: {
          $typeName: "conveyor.v1.ProgressReport",
          jobId: job.id,
          token: job.token,
          progress: { $typeName: "conveyor.v1.Progress", percent, stage, message },
        },
      });
    };
    handler(job, progress)
      .then((result) => {
        if (job.cancelled) return;
        const text = typeof result === "string" ? result : JSON.stringify(result ?? null);
        this.finish(job, { case: "complete", value: { $typeName: "conveyor.v1.Complete", jobId: job.id, token: job.token, result: text, artifacts: job.artifacts, traceContext: job.traceparent } });
      })
      .catch((e: Error) => {
        const retryable = !(e instanceof Fatal);
        const error = retryable ? `${e.name}: ${e.message}` : e.message;
        this.finish(job, { case: "fail", value: { $typeName: "conveyor.v1.Fail", jobId: job.id, token: job.token, error, retryable, traceContext: job.traceparent } });
      })
      .finally(() => this.running.delete(job.id));
  }

  private finish(job: Job, msg: Request): void {
    this.final.set(job.id, msg);
    this.outbox.push(msg);
  }
}
