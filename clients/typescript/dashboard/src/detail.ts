// The job page (`#job=<id>`): one WatchJob stream (resumed after a failure from the last seq
// seen) drawn once per frame, the job's result, error and artifacts, and Cancel / Retry.

import { JobEvent_Kind, JobState, type Job, type JobEvent } from "../../src/web.js";
import { FIRST_BACKOFF_MS, api, isFinal, nextBackoff, sleep } from "./api.js";
import { Bar, byId, h, setText } from "./dom.js";
import { TERMINAL, describe, labelsText, ms, size, stateName, tierName, time } from "./format.js";
import { note, report } from "./status.js";
import { applied, stats } from "./stats.js";

export class JobDetail {
  private id = "";
  private job?: Job;
  /** The last event's seq: stale repeats are dropped, and a resumed watch starts after it. */
  private seq = -1n;
  private abort?: AbortController;
  /** Whether a WatchJob stream is open (it ends after the job's terminal event). */
  private streaming = false;
  private dirty = false;
  /** The artifact names drawn, to redraw the list only when they change. */
  private artifactsDrawn = "";
  private bar = new Bar("bar big");

  constructor() {
    byId("job-progress").prepend(this.bar.el);
    byId("job-cancel").addEventListener("click", () => void this.cancel());
    byId("job-retry").addEventListener("click", () => void this.retry());
  }

  /** Shows job `id`, watching it until the page leaves it. */
  open(id: string): void {
    if (id === this.id && this.abort) return;
    this.close();
    this.id = id;
    this.job = undefined;
    this.seq = -1n;
    this.artifactsDrawn = "";
    setText(byId("job-title"), id);
    this.dirty = true;
    this.watch();
  }

  close(): void {
    this.abort?.abort();
    this.abort = undefined;
    this.id = "";
  }

  private watch(): void {
    this.abort = new AbortController();
    void this.follow(this.id, this.abort.signal);
  }

  private async follow(id: string, signal: AbortSignal): Promise<void> {
    let backoff = FIRST_BACKOFF_MS;
    this.streaming = true;
    this.connection("connecting");
    try {
      while (!signal.aborted) {
        try {
          const afterSeq = this.job ? this.seq : undefined;
          for await (const { event } of api().watchJob({ jobId: id, afterSeq }, { signal })) {
            this.connection("live");
            backoff = FIRST_BACKOFF_MS;
            if (event) this.apply(event);
          }
          this.connection("finished");
          return;
        } catch (e) {
          if (signal.aborted) return;
          if (isFinal(e)) {
            report(`watching ${id}`, e);
            this.connection("stopped");
            return;
          }
          report(`watching ${id} (again in ${(backoff / 1000).toFixed(1)} s)`, e);
          this.connection("retrying");
          await sleep(backoff, signal);
          backoff = nextBackoff(backoff);
        }
      }
    } finally {
      if (!signal.aborted) this.streaming = false;
    }
  }

  private apply(event: JobEvent): void {
    if (event.kind === JobEvent_Kind.KEEPALIVE) return;
    if (event.seq <= this.seq && this.job) {
      stats.eventsDropped++;
      return;
    }
    if (event.kind === JobEvent_Kind.SNAPSHOT && event.job) {
      this.job = event.job;
    } else if (this.job) {
      const job = this.job;
      if (event.attempt) job.attempt = event.attempt;
      if (event.kind === JobEvent_Kind.STATE) {
        job.state = event.state;
        if (event.error) job.error = event.error;
        if (event.result) job.result = event.result;
        if (event.artifacts.length > 0) job.artifacts = event.artifacts;
        if (TERMINAL.has(event.state)) job.finishedAt = event.time;
        void this.details(job.id, event.state);
      } else if (event.kind === JobEvent_Kind.PROGRESS && event.progress) {
        job.progress = event.progress;
      }
    } else {
      return; // nothing to apply an event to before the snapshot
    }
    this.seq = event.seq;
    this.dirty = true;
    applied(ms(event.time));
  }

  /** Who runs the job, since when, and why it waits are not in state events: after a change
   *  of state they come from GetJob, taken only if the job is still in that state (else a
   *  newer event has said more). */
  private async details(jobId: string, state: JobState): Promise<void> {
    let fresh: Job | undefined;
    try {
      fresh = (await api().getJob({ jobId })).job;
    } catch (e) {
      report(`reading ${jobId}`, e);
      return;
    }
    const job = this.job;
    if (!fresh || !job || job.id !== jobId || job.state !== state || fresh.state !== state) return;
    job.workerId = fresh.workerId;
    job.startedAt = fresh.startedAt;
    job.finishedAt = fresh.finishedAt ?? job.finishedAt;
    job.blockedReason = fresh.blockedReason;
    this.dirty = true;
  }

  /** This frame's share: the whole page of one job, when it changed. */
  render(): boolean {
    if (!this.dirty || !this.id) return false;
    this.dirty = false;
    const job = this.job;
    const view = byId("job-view");
    if (!job) {
      view.dataset.state = "";
      return true;
    }
    const state = stateName(job.state);
    view.dataset.state = state;
    this.bar.set(job.progress?.percent ?? 0, job.state);
    setText(byId("job-percent"), `${Math.round(job.progress?.percent ?? 0)}%`);
    const fields: Record<string, string> = {
      state,
      attempt: job.maxAttempts ? `${job.attempt} of ${job.maxAttempts}` : `${job.attempt}`,
      stage: job.progress?.stage || "—",
      message: job.progress?.message || "—",
      queue: job.queue,
      tier: tierName(job.tier) || "—",
      priority: String(job.priority || "—"),
      labels: labelsText(job.labels) || "—",
      blocked: job.blockedReason || "—",
      created: time(job.createdAt),
      started: time(job.startedAt),
      finished: time(job.finishedAt),
      worker: job.workerId || "—",
    };
    for (const [name, text] of Object.entries(fields)) setText(byId(`job-${name}`), text);
    byId("job-state").dataset.state = state;
    this.drawOutcome(job);
    (byId("job-cancel") as HTMLButtonElement).disabled = TERMINAL.has(job.state);
    (byId("job-retry") as HTMLButtonElement).disabled = job.state !== JobState.FAILED;
    return true;
  }

  private drawOutcome(job: Job): void {
    setText(byId("job-error"), job.error);
    byId("job-error-box").hidden = !job.error;
    setText(byId("job-result"), job.result);
    byId("job-result-box").hidden = !job.result;
    const names = job.artifacts.map((a) => a.name).join("\n");
    if (names === this.artifactsDrawn) return;
    this.artifactsDrawn = names;
    byId("job-artifacts-box").hidden = job.artifacts.length === 0;
    byId("job-artifacts").replaceChildren(
      ...job.artifacts.map((a) => {
        const link = h("a", { "data-artifact": a.name, target: "_blank", rel: "noopener" }, a.name);
        void this.link(job.id, a.name, link);
        return h("li", {}, link, ` ${size(a.size)}${a.contentType ? ` · ${a.contentType}` : ""}`);
      }),
    );
  }

  /** Points `link` at a presigned URL of the artifact (it expires: the server's default, 1 h). */
  private async link(jobId: string, name: string, link: HTMLAnchorElement): Promise<void> {
    try {
      link.href = (await api().getArtifactUrl({ jobId, name })).url;
    } catch (e) {
      link.title = describe(e);
      report(`getting a link to ${name}`, e);
    }
  }

  private async cancel(): Promise<void> {
    const button = byId<HTMLButtonElement>("job-cancel");
    button.disabled = true;
    try {
      await api().cancelJob({ jobId: this.id });
    } catch (e) {
      report(`cancelling ${this.id}`, e);
      button.disabled = false;
    }
  }

  private async retry(): Promise<void> {
    const button = byId<HTMLButtonElement>("job-retry");
    button.disabled = true;
    try {
      const { jobs } = await api().retryJob({ jobId: this.id });
      note(`retried ${this.id}: ${jobs[0] ? stateName(jobs[0].state) : "nothing to retry"}`);
      // The stream ended with the failure; a new one picks up after the seq we have.
      if (!this.streaming && this.abort) this.watch();
    } catch (e) {
      report(`retrying ${this.id}`, e);
      button.disabled = false;
    }
  }

  private connection(text: string): void {
    const el = byId("job-connection");
    el.dataset.live = String(text === "live");
    setText(el, text);
  }
}
