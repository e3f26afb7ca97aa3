// One WatchJobs stream kept open: reconnects with backoff after a failure, presenting the last
// resume_token so the server sends what changed meanwhile (fresh snapshots, then `synced`).
// It hands events on as they come; deciding which are stale (by seq) is the list's job.

import { Code, ConnectError } from "@connectrpc/connect";

import type { JobEvent } from "../../src/web.js";
import { FIRST_BACKOFF_MS, api, isFinal, nextBackoff, sleep } from "./api.js";
import { report } from "./status.js";

/** What the list watches: WatchJobsRequest's filters. */
export interface Room {
  queues: string[];
  labels: Record<string, string>;
}

export interface Listener {
  event(event: JobEvent): void;
  /** The snapshot is complete; `resumed` when this was a reconnect with a token. */
  synced(resumed: boolean): void;
  /** For the connection indicator: "connecting", "live", "retrying in 2 s", "stopped". */
  connection(text: string, live: boolean): void;
}


export class Follow {
  private abort = new AbortController();
  /** Where to resume; empty until the first `synced`. */
  private token = "";

  constructor(
    private room: Room,
    private on: Listener,
  ) {
    void this.run();
  }

  stop(): void {
    this.abort.abort();
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let backoff = FIRST_BACKOFF_MS;
    while (!signal.aborted) {
      try {
        this.on.connection("connecting", false);
        await this.stream(signal, () => (backoff = FIRST_BACKOFF_MS));
        // WatchJobs runs until the client leaves: an end is a lost connection like any other.
        throw new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (e) {
        if (signal.aborted) return;
        const error = ConnectError.from(e);
        if (isFinal(error)) {
          report("watching jobs (stopped; change the filters or the API key to try again)", error);
          this.on.connection("stopped", false);
          return;
        }
        report(`watching jobs (again in ${(backoff / 1000).toFixed(1)} s)`, error);
        this.on.connection(`retrying in ${(backoff / 1000).toFixed(1)} s`, false);
        await sleep(backoff, signal);
        backoff = nextBackoff(backoff);
      }
    }
  }

  private async stream(signal: AbortSignal, healthy: () => void): Promise<void> {
    const resumed = this.token !== "";
    const request = { queues: this.room.queues, labels: this.room.labels, resumeToken: this.token };
    for await (const answer of api().watchJobs(request, { signal })) {
      if (answer.resumeToken) this.token = answer.resumeToken;
      if (answer.synced) {
        healthy();
        this.on.connection("live", true);
        this.on.synced(resumed);
      } else if (answer.event) {
        this.on.event(answer.event);
      }
    }
  }
}
