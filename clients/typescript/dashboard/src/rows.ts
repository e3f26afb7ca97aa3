// One job of the jobs list: what the page holds about it (`Held`, changed by events) and its
// row (`RowView`, built once, then only the cells whose text changed are written). Rows are
// fixed-height grid boxes rather than table rows, so that a cell's change lays out one row,
// and rows scrolled out of view are not laid out or painted at all (content-visibility).

import type { Job, JobEvent } from "../../src/web.js";
import { JobEvent_Kind, type JobState, type Tier } from "../../src/web.js";
import { Bar, h, setText } from "./dom.js";
import { labelsText, ms, span, stateName, tierName } from "./format.js";

/** What the list shows of a job. */
export interface Held {
  id: string;
  queue: string;
  tier: Tier;
  state: JobState;
  percent: number;
  stage: string;
  message: string;
  attempt: number;
  maxAttempts: number;
  labels: string;
  createdMs: number;
  /** The last event's seq; -1 for a job known only from the history (ListJobs), which any
   *  event supersedes. */
  seq: bigint;
}

export function fromJob(job: Job, seq: bigint): Held {
  return {
    id: job.id,
    queue: job.queue,
    tier: job.tier,
    state: job.state,
    percent: job.progress?.percent ?? 0,
    stage: job.progress?.stage ?? "",
    message: job.progress?.message ?? "",
    attempt: job.attempt,
    maxAttempts: job.maxAttempts,
    labels: labelsText(job.labels),
    createdMs: ms(job.createdAt) ?? 0,
    seq,
  };
}

/** A job first heard of by an event rather than a snapshot: what its id tells. */
export function fromId(id: string): Held {
  return {
    id,
    queue: id.slice(0, id.lastIndexOf(":")),
    tier: 0,
    state: 0,
    percent: 0,
    stage: "",
    message: "",
    attempt: 0,
    maxAttempts: 0,
    labels: "",
    // A UUID v7 opens with its creation time in ms.
    createdMs: parseInt(id.slice(id.lastIndexOf(":") + 1).replace(/-/g, "").slice(0, 12), 16) || 0,
    seq: -1n,
  };
}

/** Applies a state or progress event (a snapshot replaces the whole `Held` instead). */
export function applyEvent(held: Held, event: JobEvent): void {
  held.seq = event.seq;
  if (event.attempt) held.attempt = event.attempt;
  if (event.kind === JobEvent_Kind.STATE) {
    held.state = event.state;
  } else if (event.kind === JobEvent_Kind.PROGRESS && event.progress) {
    held.percent = event.progress.percent;
    held.stage = event.progress.stage;
    held.message = event.progress.message;
  }
}

/** The row of one job: `.row[data-job-id][data-state]`. */
export class RowView {
  readonly el: HTMLDivElement;
  private state: HTMLElement;
  private bar = new Bar();
  private percent: HTMLElement;
  private stage: HTMLElement;
  private attempt: HTMLElement;
  private age: HTMLElement;

  constructor(held: Held) {
    this.state = h("span", { class: "badge" });
    this.percent = h("span", { class: "pct" });
    this.stage = cell("stage");
    this.attempt = cell("num attempt");
    this.age = cell("num age");
    this.el = h(
      "div",
      { class: "row", role: "row", "data-job-id": held.id },
      cell("id", h("a", { href: `#job=${encodeURIComponent(held.id)}`, title: held.id }, shortId(held.id))),
      cell("queue", held.queue),
      cell("tier", tierName(held.tier)),
      cell("state", this.state),
      cell("progress", this.bar.el, this.percent),
      this.stage,
      this.attempt,
      cell("labels", held.labels),
      this.age,
    );
  }

  update(held: Held, visible: boolean): void {
    const state = stateName(held.state);
    if (this.el.dataset.state !== state) this.el.dataset.state = state;
    setText(this.state, state);
    this.bar.set(held.percent, held.state);
    setText(this.percent, `${Math.round(held.percent)}%`);
    setText(this.stage, held.stage);
    if (this.stage.title !== held.message) this.stage.title = held.message;
    setText(this.attempt, held.maxAttempts ? `${held.attempt}/${held.maxAttempts}` : `${held.attempt}`);
    if (this.el.hidden === visible) this.el.hidden = !visible;
  }

  updateAge(held: Held, now: number): void {
    setText(this.age, held.createdMs ? span(now - held.createdMs) : "");
  }
}

const cell = (className: string, ...children: (Node | string)[]) => h("span", { class: className, role: "cell" }, ...children);

/** `render:0190b5a0-…-8000-00000000abcd` → `0190b5a0…00abcd`: the time it was made, then enough
 *  random digits to tell rows apart; the whole id is the link's title. */
function shortId(id: string): string {
  const uuid = id.slice(id.lastIndexOf(":") + 1);
  return uuid.length > 16 ? `${uuid.slice(0, 8)}…${uuid.slice(-6)}` : uuid;
}
