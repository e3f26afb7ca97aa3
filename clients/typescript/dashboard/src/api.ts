// The page's JobService client: same origin as the page (the server serves both), with the API
// key the user saved, if any (`conveyor dev` needs none; `conveyor serve` does); and how its
// streams retry.

import { Code, ConnectError, type Client } from "@connectrpc/connect";

import { jobService, type JobService } from "../../src/web.js";

export type Api = Client<typeof JobService>;

const KEY = "conveyor.apiKey";

let client: Api | undefined;

export function savedKey(): string {
  try {
    return localStorage.getItem(KEY) ?? "";
  } catch {
    return ""; // storage disabled (a privacy mode): the key lasts for this page only
  }
}

/** Keeps `key` (empty forgets it) and makes the next `api()` use it. */
export function saveKey(key: string): void {
  try {
    if (key) localStorage.setItem(KEY, key);
    else localStorage.removeItem(KEY);
  } catch {
    // As above: without storage the key still works until the page closes.
  }
  client = jobService(location.origin, key || undefined);
}

export function api(): Api {
  client ??= jobService(location.origin, savedKey() || undefined);
  return client;
}

/** Refusals that asking again will not change: the user must change something first (the
 *  filters, the key). Anything else (UNAVAILABLE, a dropped connection) is worth a retry. */
const FINAL = new Set([
  Code.InvalidArgument,
  Code.FailedPrecondition,
  Code.Unimplemented,
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.NotFound,
]);

export const isFinal = (error: unknown): boolean => FINAL.has(ConnectError.from(error).code);

export const FIRST_BACKOFF_MS = 250;

/** Doubles up to 10 s: a server that restarts is found again within seconds. */
export const nextBackoff = (ms: number): number => Math.min(ms * 2, 10_000);

/** Waits `ms`, or less when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((done) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      done();
    });
  });
}
