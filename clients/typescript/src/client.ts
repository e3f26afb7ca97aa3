// A typed JobService client for Node (gRPC over HTTP/2), with the calls a backend makes most:
// submit, watch, wait, inputs and artifact downloads. Given every replica's address, it goes on
// through another when one dies: calls stay on the replica that answered, UNAVAILABLE moves them
// to the next, and a watch resumes there where it was.

import type { DescMessage, DescMethodStreaming, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type ContextValues,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { bearer } from "./bearer.js";
import { pause, submitJob, submitJobs, type JobServiceClient, type RetryOptions, type SubmitInit, type SubmitOptions } from "./submit.js";

import {
  JobEvent_Kind,
  JobService,
  JobState,
  Tier,
  type Job,
  type JobEvent,
  type SubmitJobRequest,
  type WatchJobResponse,
} from "./gen/conveyor/v1/jobs_pb.js";

export { bearer };
export { submitJob, submitJobs, type JobServiceClient, type RetryOptions, type SubmitInit, type SubmitOptions };

/** Where and as whom: `address` defaults to CONVEYOR_ADDR or http://127.0.0.1:50051. Several
 *  replicas' addresses, as an array or comma-separated (`http://a:50051,http://b:50051`), make
 *  the client and the worker go on through another when one is gone (see `Replicas`). */
export interface Options {
  address?: string | readonly string[];
  key?: string;
}

/** Each address the options give, in order, with `http://` where none is said. */
export function addresses(options: Options = {}): string[] {
  const given = options.address ?? process.env.CONVEYOR_ADDR ?? "http://127.0.0.1:50051";
  const list = (typeof given === "string" ? [given] : [...given])
    .flatMap((a) => a.split(","))
    .map((a) => a.trim())
    .filter((a) => a !== "");
  if (list.length === 0) throw new RangeError("address: no address given");
  return list.map((a) => (a.includes("://") ? a : `http://${a}`));
}

/** The first address the options give (see `addresses`). */
export function address(options: Options = {}): string {
  return addresses(options)[0];
}

/** How an HTTP/2 connection is kept checked (connect-node's options): a PING every
 *  `pingIntervalMs` while calls are open, and a connection whose PING goes unanswered for
 *  `pingTimeoutMs` is closed and its calls broken, so a replica that vanished without closing
 *  its connections is noticed. Off unless given (the Worker's: 10 s and 5 s). */
export interface KeepAlive {
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
}

/** gRPC over HTTP/2 to the server, or to one of its replicas when several addresses are given
 *  (see `Replicas`). */
export function grpcTransport(options: Options = {}, keepAlive: KeepAlive = {}): Replicas {
  const key = options.key ?? process.env.CONVEYOR_KEY;
  return new Replicas(addresses(options), (baseUrl) =>
    createGrpcTransport({
      baseUrl,
      interceptors: key ? [bearer(key)] : [],
      ...keepAlive,
    }),
  );
}

/** A transport to one of several replicas of the server, as `conveyor --addr a,b` dials: calls
 *  start at a random one (so clients spread over them) and stay on the one that answers. A call
 *  answered UNAVAILABLE (the replica gone, or too busy to take it), or a stream broken so,
 *  moves the calls after it to the next address; so does `failed`, which the worker calls when
 *  its stream ends and a watch when its stream breaks. With one address it is that address's
 *  transport. */
export class Replicas implements Transport {
  readonly addresses: readonly string[];
  private readonly transports: Transport[];
  private at: number;

  /** `transport` makes the transport of one address. */
  constructor(addresses: readonly string[], transport: (address: string) => Transport) {
    if (addresses.length === 0) throw new RangeError("Replicas: no address given");
    this.addresses = [...addresses];
    this.transports = this.addresses.map(transport);
    this.at = Math.floor(Math.random() * this.addresses.length);
  }

  /** Where the next call goes. */
  get address(): string {
    return this.addresses[this.at];
  }

  /** A call through `address` found it gone (or its server draining): the next call goes to
   *  the address after it, unless a call has moved on from `address` already. */
  failed(address: string = this.address): void {
    if (this.addresses[this.at] === address) this.at = (this.at + 1) % this.addresses.length;
  }

  async unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: HeadersInit | undefined,
    input: MessageInitShape<I>,
    contextValues?: ContextValues,
  ): Promise<UnaryResponse<I, O>> {
    const at = this.at;
    try {
      return await this.transports[at].unary(method, signal, timeoutMs, header, input, contextValues);
    } catch (e) {
      throw this.note(at, e);
    }
  }

  async stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: HeadersInit | undefined,
    input: AsyncIterable<MessageInitShape<I>>,
    contextValues?: ContextValues,
  ): Promise<StreamResponse<I, O>> {
    const at = this.at;
    let response: StreamResponse<I, O>;
    try {
      response = await this.transports[at].stream(method, signal, timeoutMs, header, input, contextValues);
    } catch (e) {
      throw this.note(at, e);
    }
    const note = (e: unknown) => this.note(at, e);
    // The same response, its messages watched for UNAVAILABLE; a caller that stops early
    // (return) reaches the call's own messages through yield*, which ends the call.
    async function* messages(): AsyncGenerator<MessageShape<O>> {
      try {
        yield* response.message;
      } catch (e) {
        throw note(e);
      }
    }
    return { ...response, message: messages() };
  }

  /** Moves on from the address at `at` when `e` says it is unavailable; returns `e`. */
  private note(at: number, e: unknown): unknown {
    if (e instanceof ConnectError && e.code === Code.Unavailable) this.failed(this.addresses[at]);
    return e;
  }
}

export const TIERS = {
  free: Tier.FREE,
  pro: Tier.PRO,
  premium: Tier.PREMIUM,
  enterprise: Tier.ENTERPRISE,
} as const;

export const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

/** What `submit` takes: the queue, a payload (JSON-encoded unless bytes), and any other field
 *  of SubmitJobRequest. */
export type Submit = Omit<Partial<SubmitJobRequest>, "payload" | "tier" | "$typeName"> & {
  queue: string;
  payload?: unknown;
  tier?: keyof typeof TIERS;
};

/** How long a watch goes on trying to get its stream back, on any replica, before it gives up: a
 *  replica that died is seconds, a rolling restart minutes. */
const RESUME_FOR_MS = 120_000;

/** How a broken watch stream ends, as opposed to a refusal (NOT_FOUND...): the replica went
 *  away (UNAVAILABLE; connect-node says CANCELED when the connection closes under the stream, and
 *  ABORTED when it is reset), or the call failed for a reason it does not know (UNKNOWN). */
const RESUMABLE = new Set([Code.Unavailable, Code.Canceled, Code.Aborted, Code.Unknown]);

/** What `watch` takes besides the job. */
export interface WatchOptions {
  /** Ends the watch, a wait between streams included: it throws CANCELED. */
  signal?: AbortSignal;
}

/** JobService with conveniences; `rpc` is the generated client for everything else. `retry`
 *  is how `submit` and `submitMany` try again after UNAVAILABLE (5 retries from 200 ms,
 *  doubling, unless given); a call's own options override it. Through a transport to several
 *  replicas (`grpcTransport({ address: [a, b] })`), each try goes to the next replica, and
 *  `watch` resumes on another when its replica is gone. */
export class Conveyor {
  readonly rpc: JobServiceClient;
  readonly retry: RetryOptions;
  /** The transport, when it can be told to move on to another replica. */
  private readonly replicas?: Replicas;

  constructor(transport: Transport = grpcTransport(), retry: RetryOptions = {}) {
    this.rpc = createClient(JobService, transport);
    this.retry = retry;
    if (transport instanceof Replicas) this.replicas = transport;
  }

  /** Submits one job and returns it. Safe to try again: without `idempotencyKey` the call
   *  makes up its own (`ts:<uuid>`) and sends it on every try, and UNAVAILABLE is tried again
   *  (see RetryOptions) before the last error is thrown; the job returned is the one job,
   *  whichever try made it. `submitJob(client.rpc, ...)` also says whether it was created. */
  async submit(job: Submit, options: SubmitOptions = {}): Promise<Job> {
    return (await submitJob(this.rpc, request(job), { ...this.retry, ...options })).job!;
  }

  /** Submits jobs of one queue in one call (SubmitJobs: up to 1,000, all or none), in order;
   *  keyed and tried again as `submit` is, each job without a key getting its own. */
  async submitMany(jobs: Submit[], options: SubmitOptions = {}): Promise<Job[]> {
    const answer = await submitJobs(this.rpc, jobs.map(request), { ...this.retry, ...options });
    return answer.results.map((r) => r.job!);
  }

  async get(jobId: string): Promise<Job> {
    return (await this.rpc.getJob({ jobId })).job!;
  }

  /** The job's snapshot (none when `afterSeq` is its last event), then each event, to the
   *  terminal one (keep-alives left out). A stream that breaks (UNAVAILABLE, CANCELED, ABORTED,
   *  UNKNOWN) or ends before the terminal event is watched again, on the next replica, after
   *  the last event yielded (WatchJob's `afterSeq`): the server sends the events that follow,
   *  or, when some were missed, a fresh snapshot of the job first, which is yielded too. It
   *  tries again after 200 ms, doubling to 5 s, for 120 s without a stream, then throws
   *  UNAVAILABLE; a refusal (NOT_FOUND, PERMISSION_DENIED...) is thrown at once. */
  async *watch(jobId: string, afterSeq?: bigint, options: WatchOptions = {}): AsyncGenerator<JobEvent> {
    const { signal } = options;
    // Since when the watch has had no stream, and the wait before the next try.
    let lost: number | undefined;
    let wait = 200;
    for (;;) {
      const via = this.replicas?.address;
      // Anything at all, keep-alives too: the stream is back.
      let received = false;
      let broken: unknown;
      const stream = this.rpc.watchJob({ jobId, afterSeq }, { signal })[Symbol.asyncIterator]();
      try {
        for (;;) {
          let next: IteratorResult<WatchJobResponse>;
          try {
            next = await stream.next();
          } catch (e) {
            if (signal?.aborted || !RESUMABLE.has(ConnectError.from(e).code)) throw e;
            broken = e;
            break;
          }
          if (next.done) break;
          received = true;
          lost = undefined;
          wait = 200;
          const event = next.value.event;
          if (!event || event.kind === JobEvent_Kind.KEEPALIVE) continue;
          if (event.seq > 0n) afterSeq = event.seq;
          yield event;
          if (ends(event)) return;
        }
      } finally {
        // Ends the call when the caller stops early or the job ended (and does nothing to a
        // stream that ended).
        await stream.return?.();
      }
      if (broken === undefined) {
        // Resumed after the job's last event, and it has ended: nothing more will come.
        if (!received && afterSeq !== undefined && (await this.ended(jobId, signal))) return;
        broken = new ConnectError("the stream ended before the job did", Code.Unavailable);
      }
      lost ??= Date.now();
      if (Date.now() - lost > RESUME_FOR_MS) {
        const why = ConnectError.from(broken).message;
        throw new ConnectError(`no server gave the watch of ${jobId} back for ${RESUME_FOR_MS / 1000} s: ${why}`, Code.Unavailable, undefined, undefined, broken);
      }
      if (via !== undefined) this.replicas!.failed(via);
      await pause(wait, signal);
      wait = Math.min(wait * 2, 5000);
    }
  }

  /** Whether the job has ended, as far as a GetJob that answers says. */
  private async ended(jobId: string, signal?: AbortSignal): Promise<boolean> {
    try {
      return TERMINAL.has((await this.rpc.getJob({ jobId }, { signal })).job!.state);
    } catch {
      return false;
    }
  }

  /** Watches the job to its end and returns it as it ended. */
  async wait(jobId: string): Promise<Job> {
    for await (const _ of this.watch(jobId)) {
      // Only the end matters here.
    }
    return this.get(jobId);
  }

  /** Uploads `body` as an input through a presigned URL; returns the reference to name in
   *  `submit({ inputs: [ref] })`. */
  async uploadInput(name: string, body: Uint8Array, contentType = ""): Promise<string> {
    const answer = await this.rpc.createInputUpload({ name, contentType });
    await put(answer.url, body, contentType);
    return answer.input;
  }

  /** The bytes of one of the job's artifacts, through a presigned GET URL. */
  async artifact(jobId: string, name: string): Promise<Uint8Array> {
    const { url } = await this.rpc.getArtifactUrl({ jobId, name });
    const response = await fetch(url);
    if (!response.ok) throw new Error(`fetching ${name}: ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  }
}

/** Whether `event` is the job's last: a terminal state, or a snapshot of an ended job. */
function ends(event: JobEvent): boolean {
  if (event.kind === JobEvent_Kind.SNAPSHOT) return event.job !== undefined && TERMINAL.has(event.job.state);
  return event.kind === JobEvent_Kind.STATE && TERMINAL.has(event.state);
}

/** A `Submit` as the request the server takes. */
function request(job: Submit): SubmitInit {
  const { payload, tier, ...fields } = job;
  const bytes =
    payload instanceof Uint8Array
      ? payload
      : new TextEncoder().encode(JSON.stringify(payload ?? {}));
  return {
    ...fields,
    payload: bytes,
    contentType: payload instanceof Uint8Array ? "application/octet-stream" : "application/json",
    tier: TIERS[tier ?? "free"],
  };
}

/** PUTs `body` to a presigned URL; returns the store's ETag. */
export async function put(url: string, body: Uint8Array, contentType = ""): Promise<string> {
  const headers: Record<string, string> = contentType ? { "content-type": contentType } : {};
  // The DOM typings want an ArrayBuffer-backed view; a Node Buffer or file part is one.
  const response = await fetch(url, { method: "PUT", body: body as Uint8Array<ArrayBuffer>, headers });
  if (!response.ok) {
    throw new Error(`the store refused the upload (${response.status}): ${await response.text()}`);
  }
  return response.headers.get("etag") ?? "";
}
