// A typed JobService client for Node (gRPC over HTTP/2), with the calls a backend makes most:
// submit, watch, wait, inputs and artifact downloads.

import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { bearer } from "./bearer.js";
import { submitJob, submitJobs, type JobServiceClient, type RetryOptions, type SubmitInit, type SubmitOptions } from "./submit.js";

import {
  JobEvent_Kind,
  JobService,
  JobState,
  Tier,
  type Job,
  type JobEvent,
  type SubmitJobRequest,
} from "./gen/conveyor/v1/jobs_pb.js";

export { bearer };
export { submitJob, submitJobs, type JobServiceClient, type RetryOptions, type SubmitInit, type SubmitOptions };

/** Where and as whom: `address` defaults to CONVEYOR_ADDR or http://127.0.0.1:50051. */
export interface Options {
  address?: string;
  key?: string;
}

export function address(options: Options = {}): string {
  const addr = options.address ?? process.env.CONVEYOR_ADDR ?? "http://127.0.0.1:50051";
  return addr.includes("://") ? addr : `http://${addr}`;
}

/** gRPC over HTTP/2 to the server. */
export function grpcTransport(options: Options = {}): Transport {
  const key = options.key ?? process.env.CONVEYOR_KEY;
  return createGrpcTransport({
    baseUrl: address(options),
    interceptors: key ? [bearer(key)] : [],
  });
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

/** JobService with conveniences; `rpc` is the generated client for everything else. `retry`
 *  is how `submit` and `submitMany` try again after UNAVAILABLE (5 retries from 200 ms,
 *  doubling, unless given); a call's own options override it. */
export class Conveyor {
  readonly rpc: JobServiceClient;
  readonly retry: RetryOptions;

  constructor(transport: Transport = grpcTransport(), retry: RetryOptions = {}) {
    this.rpc = createClient(JobService, transport);
    this.retry = retry;
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

  /** The job's snapshot, then each event, to the terminal one (keep-alives left out). */
  async *watch(jobId: string, afterSeq?: bigint): AsyncGenerator<JobEvent> {
    for await (const answer of this.rpc.watchJob({ jobId, afterSeq })) {
      const event = answer.event;
      if (event && event.kind !== JobEvent_Kind.KEEPALIVE) yield event;
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
