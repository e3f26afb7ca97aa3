// How the page writes values: state and tier names, ages, durations, sizes, labels, and errors
// (a gRPC code a person can look up, then the server's message).

import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { JobState, Tier } from "../../src/web.js";

export const TERMINAL: ReadonlySet<JobState> = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

export const stateName = (state: JobState): string => JobState[state] ?? `STATE_${state}`;

export const tierName = (tier: Tier): string => (tier ? (Tier[tier] ?? `${tier}`).toLowerCase() : "");

export const ms = (t: Timestamp | undefined): number | undefined => (t ? timestampMs(t) : undefined);

/** "42s", "3m 05s", "2h 10m", "4d 3h". */
export function span(millis: number): string {
  const s = Math.max(0, Math.floor(millis / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export const duration = (d: Duration | undefined): string => (d ? span(durationMs(d)) : "—");

export function time(t: Timestamp | undefined): string {
  const at = ms(t);
  return at === undefined || at === 0 ? "—" : new Date(at).toLocaleString();
}

export function size(bytes: bigint): string {
  const n = Number(bytes);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

export const count = (n: bigint | number): string => Number(n).toLocaleString("en");

/** "env=prod team=video", sorted so the same labels always read the same. */
export const labelsText = (labels: Record<string, string>): string =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(" ");

/** Parses "env=prod, team=video" (commas or spaces between pairs); throws on a pair without `=`. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of text.split(/[\s,]+/).filter(Boolean)) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new Error(`label filter "${pair}" is not key=value`);
    labels[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return labels;
}

/** "NOT_FOUND: no such job", or the error's own message when it is not a gRPC one. */
export function describe(error: unknown): string {
  const e = ConnectError.from(error);
  const code = (Code[e.code] ?? `${e.code}`).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  return `${code}: ${e.rawMessage}`;
}
