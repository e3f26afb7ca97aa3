// Submits that are safe to try again, for the Node and the browser clients alike. When Redis
// does not answer in time the server says UNAVAILABLE, yet keeps the job and finishes the submit
// in the background; a second try with the same idempotency key returns that one job. So each
// request without a key gets one of its own (`ts:<uuid>`), kept for every try of the call, and
// UNAVAILABLE is tried again a few times with a doubling wait.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";

import {
  JobService,
  SubmitJobRequestSchema,
  type SubmitJobRequest,
  type SubmitJobResponse,
  type SubmitJobsResponse,
} from "./gen/conveyor/v1/jobs_pb.js";

export type JobServiceClient = Client<typeof JobService>;

/** How a submit answered UNAVAILABLE is tried again. */
export interface RetryOptions {
  /** Tries after the first: 5 unless given; 0 tries once. */
  retries?: number;
  /** The wait before the first retry, in milliseconds, doubling after each: 200 unless given. */
  backoffMs?: number;
}

/** A call's options (`signal`, `timeoutMs`, `headers`...) and its retries. `timeoutMs` bounds
 *  the whole call, every try and wait included; `signal` ends it, waits included. */
export type SubmitOptions = CallOptions & RetryOptions;

export type SubmitInit = MessageInitShape<typeof SubmitJobRequestSchema>;

/** SubmitJob, safe to try again: a request without an idempotency key gets one of its own
 *  (`ts:<uuid>`; its follow-ups get none, the server derives theirs), and UNAVAILABLE is tried
 *  again with that same key (see RetryOptions); any other refusal, or the last UNAVAILABLE, is
 *  thrown. Under a key of its own the job is this call's: `created` is true even when a later
 *  try found the job an earlier one made. Under the caller's key, `created` is the server's
 *  (false: a job with that key existed, whether an earlier try of this call or another call
 *  made it). */
export async function submitJob(
  rpc: JobServiceClient,
  request: SubmitInit,
  options: SubmitOptions = {},
): Promise<SubmitJobResponse> {
  const { message, own } = keyed(request);
  const answer = await retrying((call) => rpc.submitJob(message, call), options);
  return own ? { ...answer, created: true } : answer;
}

/** SubmitJobs (up to 1,000 jobs of one queue, all or none), safe to try again as `submitJob`
 *  is: each job without a key gets one of its own, the same on every try, and `created` is
 *  true for each of those. */
export async function submitJobs(
  rpc: JobServiceClient,
  requests: SubmitInit[],
  options: SubmitOptions = {},
): Promise<SubmitJobsResponse> {
  const jobs = requests.map(keyed);
  const answer = await retrying((call) => rpc.submitJobs({ jobs: jobs.map((j) => j.message) }, call), options);
  return {
    ...answer,
    results: answer.results.map((result, i) => (jobs[i]?.own ? { ...result, created: true } : result)),
  };
}

/** The request as a message, with a key of its own if it had none; the caller's is untouched. */
function keyed(init: SubmitInit): { message: SubmitJobRequest; own: boolean } {
  const message = create(SubmitJobRequestSchema, init);
  if (message.idempotencyKey !== "") return { message, own: false };
  return { message: { ...message, idempotencyKey: `ts:${uuid()}` }, own: true };
}

/** Runs `call` until it answers something other than UNAVAILABLE, the retries are spent, the
 *  caller's deadline leaves no time for another try, or the caller's signal aborts. */
async function retrying<T>(call: (options: CallOptions) => Promise<T>, options: SubmitOptions): Promise<T> {
  const { retries = 5, backoffMs = 200, ...callOptions } = options;
  if (!Number.isInteger(retries) || retries < 0) throw new RangeError(`retries: ${retries} is not a whole number >= 0`);
  if (!(backoffMs >= 0)) throw new RangeError(`backoffMs: ${backoffMs} is not a number >= 0`);
  const timeout = callOptions.timeoutMs;
  const deadline = timeout !== undefined && timeout > 0 ? Date.now() + timeout : undefined;
  let wait = backoffMs;
  for (let retry = 0; ; retry++) {
    // Each try gets what is left of the caller's time.
    const timeoutMs = deadline === undefined ? timeout : Math.max(1, deadline - Date.now());
    try {
      return await call({ ...callOptions, timeoutMs });
    } catch (e) {
      if (ConnectError.from(e).code !== Code.Unavailable || retry >= retries) throw e;
      // No try could start before the deadline: the last answer is the answer.
      if (deadline !== undefined && Date.now() + wait >= deadline) throw e;
      await pause(wait, callOptions.signal);
      wait *= 2;
    }
  }
}

/** Waits `ms`; an abort of `signal` ends the wait with Canceled, as it ends a call. */
export function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const aborted = () => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason ?? new Error("This operation was aborted"), Code.Canceled));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    if (signal?.aborted) aborted();
    else signal?.addEventListener("abort", aborted, { once: true });
  });
}

/** A random (v4) UUID; pages served over plain http have crypto.getRandomValues but not
 *  crypto.randomUUID. */
function uuid(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
