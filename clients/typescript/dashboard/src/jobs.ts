// The jobs list: the watched room's jobs in a Map by id, changed by WatchJobs events as they
// arrive and drawn once per frame (only the rows that changed). Finished jobs stay in the list,
// up to MAX_ROWS; past that the ones that finished longest ago go first.

import type { Job, JobEvent } from "../../src/web.js";
import { JobEvent_Kind, JobState } from "../../src/web.js";
import { api } from "./api.js";
import { byId, setText } from "./dom.js";
import { Follow, type Room } from "./follow.js";
import { TERMINAL, count, ms, stateName } from "./format.js";
import { RowView, applyEvent, fromId, fromJob, type Held } from "./rows.js";
import { report } from "./status.js";
import { applied, stats } from "./stats.js";

const MAX_ROWS = 5_000;
/** Finished jobs fetched from the history per queue when a watch starts, so the list does not
 *  open empty on a quiet queue. */
const HISTORY_PAGE = 100;
const AGE_EVERY_MS = 5_000;

interface Entry {
  held: Held;
  /** Made by the first frame that draws the job. */
  view?: RowView;
}

/** "" (every job), "active" (unfinished) or a state name. */
export type StateFilter = string;

export class JobsList {
  private entries = new Map<string, Entry>();
  private dirty = new Set<Entry>();
  /** Ids of finished jobs, in the order they finished: the first go when the list is full. */
  private finished = new Set<string>();
  private follow?: Follow;
  private room?: Room;
  /** The room as text, to tell whether a new filter is a new room. */
  private roomKey = "";
  private filter: StateFilter = "";
  private summaryStale = true;
  /** Set when the rows' order must be made newest-first again (after a snapshot). */
  private resort = false;
  private agesAt = 0;
  private visible = true;
  private body = byId("jobs-body");

  constructor() {
    this.body.addEventListener("click", (e) => {
      const target = e.target as Element;
      const row = target.closest<HTMLElement>("[data-job-id]");
      if (row && !target.closest("a")) location.hash = `job=${encodeURIComponent(row.dataset.jobId!)}`;
    });
  }

  /** Watches `room`, starting with an empty list when it is not the room already watched. */
  watch(room: Room | undefined): void {
    const key = room ? JSON.stringify([room.queues, Object.entries(room.labels).sort()]) : "";
    if (key === this.roomKey) return;
    this.follow?.stop();
    this.follow = undefined;
    this.clear();
    this.room = room;
    this.roomKey = key;
    stats.synced = false;
    if (!room || room.queues.length === 0) {
      this.connection("choose a queue", false);
      return;
    }
    this.follow = new Follow(room, {
      event: (event) => this.apply(event),
      synced: (resumed) => this.synced(room, key, resumed),
      connection: (text, live) => this.connection(text, live),
    });
  }

  /** Watches the same room from scratch (the API key changed). */
  restart(): void {
    const room = this.room;
    this.roomKey = "";
    this.watch(room);
  }

  setFilter(filter: StateFilter): void {
    if (filter === this.filter) return;
    this.filter = filter;
    for (const entry of this.entries.values()) this.dirty.add(entry);
    this.summaryStale = true;
  }

  /** A hidden list keeps taking events; it draws them when shown again. */
  setVisible(visible: boolean): void {
    this.visible = visible;
  }

  private apply(event: JobEvent): void {
    if (event.kind === JobEvent_Kind.KEEPALIVE || !event.jobId) return;
    let entry = this.entries.get(event.jobId);
    // Each job's events carry increasing seqs; a snapshot after a reconnect may repeat one.
    if (entry && event.seq <= entry.held.seq) {
      stats.eventsDropped++;
      return;
    }
    if (event.kind === JobEvent_Kind.SNAPSHOT) {
      if (!event.job) return;
      const held = fromJob(event.job, event.seq);
      if (entry) entry.held = held;
      else entry = this.add(held);
    } else {
      // A job not held (dropped from a full list, then retried): what its events tell.
      entry ??= this.add(fromId(event.jobId));
      applyEvent(entry.held, event);
    }
    this.changed(entry);
    applied(ms(event.time));
  }

  private add(held: Held): Entry {
    const entry: Entry = { held };
    this.entries.set(held.id, entry);
    return entry;
  }

  private changed(entry: Entry): void {
    const id = entry.held.id;
    this.finished.delete(id);
    if (TERMINAL.has(entry.held.state)) this.finished.add(id);
    this.dirty.add(entry);
    this.summaryStale = true;
  }

  private synced(room: Room, key: string, resumed: boolean): void {
    stats.synced = true;
    this.resort = true;
    if (!resumed) void this.history(room, key);
  }

  /** Adds the room's recently finished jobs from the history (ListJobs), oldest first so they
   *  are the first to go when the list fills. Jobs the stream already gave are left alone. */
  private async history(room: Room, key: string): Promise<void> {
    await Promise.all(
      room.queues.map(async (queue) => {
        let jobs: Job[];
        try {
          jobs = (await api().listJobs({ queue, labels: room.labels, pageSize: HISTORY_PAGE })).jobs;
        } catch (e) {
          report(`listing the recent jobs of ${queue}`, e);
          return;
        }
        if (key !== this.roomKey) return;
        for (const job of jobs.reverse()) {
          // Without a database the server may not filter by labels: filter here as well.
          const matches = Object.entries(room.labels).every(([k, v]) => job.labels[k] === v);
          if (!TERMINAL.has(job.state) || this.entries.has(job.id) || !matches) continue;
          this.changed(this.add(fromJob(job, -1n)));
        }
        this.resort = true;
      }),
    );
  }

  private clear(): void {
    this.entries.clear();
    this.dirty.clear();
    this.finished.clear();
    this.body.replaceChildren();
    this.summaryStale = true;
  }

  private shows(held: Held): boolean {
    if (this.filter === "") return true;
    if (this.filter === "active") return !TERMINAL.has(held.state);
    return stateName(held.state) === this.filter;
  }

  /** This frame's share: new rows, changed rows, the summary, and (every few seconds) ages. */
  render(): boolean {
    if (!this.visible) return false;
    const now = Date.now();
    const wrote = this.dirty.size > 0 || this.resort || this.summaryStale;
    if (this.dirty.size > 0) this.drawRows(now);
    if (this.resort) this.sortRows();
    if (this.summaryStale) this.drawSummary();
    if (now - this.agesAt >= AGE_EVERY_MS) {
      this.agesAt = now;
      for (const entry of this.entries.values()) entry.view?.updateAge(entry.held, now);
    }
    return wrote;
  }

  private drawRows(now: number): void {
    this.trim();
    const fresh: Entry[] = [];
    for (const entry of this.dirty) {
      if (!entry.view) {
        entry.view = new RowView(entry.held);
        entry.view.updateAge(entry.held, now);
        fresh.push(entry);
      }
      entry.view.update(entry.held, this.shows(entry.held));
    }
    this.dirty.clear();
    if (fresh.length > 0) {
      fresh.sort(newestFirst);
      this.body.prepend(...fresh.map((e) => e.view!.el));
    }
  }

  /** Drops the longest-finished jobs while the list holds more than MAX_ROWS. */
  private trim(): void {
    for (const id of this.finished) {
      if (this.entries.size <= MAX_ROWS) return;
      const entry = this.entries.get(id)!;
      entry.view?.el.remove();
      this.entries.delete(id);
      this.dirty.delete(entry);
      this.finished.delete(id);
    }
  }

  private sortRows(): void {
    this.resort = false;
    const drawn = [...this.entries.values()].filter((e) => e.view).sort(newestFirst);
    this.body.append(...drawn.map((e) => e.view!.el));
  }

  private drawSummary(): void {
    this.summaryStale = false;
    const states = new Map<JobState, number>();
    let shown = 0;
    for (const { held } of this.entries.values()) {
      states.set(held.state, (states.get(held.state) ?? 0) + 1);
      if (this.shows(held)) shown++;
    }
    stats.rows = this.entries.size;
    const parts = [...states.entries()]
      .sort(([a], [b]) => a - b)
      .map(([state, n]) => `${count(n)} ${stateName(state).toLowerCase()}`);
    const total = shown === this.entries.size ? `${count(shown)} jobs` : `${count(shown)} of ${count(this.entries.size)} jobs shown`;
    const summary = byId("jobs-summary");
    summary.dataset.rows = String(this.entries.size);
    setText(summary, parts.length > 0 ? `${total} · ${parts.join(" · ")}` : "No unfinished or recent jobs here yet.");
  }

  private connection(text: string, live: boolean): void {
    const el = byId("jobs-connection");
    el.dataset.live = String(live);
    setText(el, text);
  }
}

const newestFirst = (a: Entry, b: Entry) => b.held.createdMs - a.held.createdMs || (a.held.id < b.held.id ? 1 : -1);
