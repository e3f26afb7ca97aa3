// The queues table: ListQueues and each queue's GetQueueStats every 2 s, with Pause / Resume,
// and a checkbox per queue that chooses what the jobs list watches. Without a database
// GetQueueStats refuses (FAILED_PRECONDITION), and the table shows what ListQueues tells.

import { Code, ConnectError } from "@connectrpc/connect";

import type { GetQueueStatsResponse, QueueSummary } from "../../src/web.js";
import { api } from "./api.js";
import { byId, h, setText } from "./dom.js";
import { count, describe, duration } from "./format.js";
import { report } from "./status.js";

const REFRESH_MS = 2_000;

/** How the table and the jobs list agree on what is watched. */
export interface Watching {
  /** Whether the jobs list watches `queue`. */
  has(queue: string): boolean;
  /** The user ticked or unticked `queue`. */
  toggle(queue: string, on: boolean): void;
  /** The queues the server listed, newest answer. */
  listed(queues: string[]): void;
}

class QueueRow {
  readonly tr: HTMLTableRowElement;
  private watch = h("input", { type: "checkbox", class: "watch" });
  private status = h("span", { class: "badge" });
  private cells = {
    waiting: h("td", { class: "num" }),
    running: h("td", { class: "num" }),
    succeeded: h("td", { class: "num" }),
    failed: h("td", { class: "num" }),
    cancelled: h("td", { class: "num" }),
    deps: h("td", { class: "num" }),
    oldest: h("td", { class: "num" }),
    perMinute: h("td", { class: "num" }),
  };
  private toggle = h("button", { type: "button" });

  constructor(
    readonly queue: string,
    watching: Watching,
    act: (queue: string, action: string, button: HTMLButtonElement) => void,
  ) {
    this.watch.title = `watch ${queue} in the jobs list`;
    this.watch.addEventListener("change", () => watching.toggle(queue, this.watch.checked));
    this.toggle.addEventListener("click", () => act(queue, this.toggle.dataset.action!, this.toggle));
    this.tr = h(
      "tr",
      { "data-queue": queue },
      h("td", {}, this.watch),
      h("td", { class: "queue" }, queue),
      h("td", {}, this.status),
      ...Object.values(this.cells),
      h("td", { class: "actions" }, this.toggle),
    );
  }

  update(summary: QueueSummary, stats: GetQueueStatsResponse | undefined, watched: boolean): void {
    this.watch.checked = watched;
    const paused = String(summary.paused);
    if (this.tr.dataset.paused !== paused) this.tr.dataset.paused = paused;
    setText(this.status, summary.paused ? "paused" : "active");
    setText(this.toggle, summary.paused ? "Resume" : "Pause");
    this.toggle.dataset.action = summary.paused ? "resume" : "pause";
    const t = stats?.total;
    const c = this.cells;
    setText(c.waiting, count(t ? t.queued + t.scheduled : summary.waiting));
    c.waiting.title = t ? `${count(t.queued)} queued, ${count(t.scheduled)} scheduled` : "queued and scheduled";
    setText(c.running, count(t ? t.running : summary.running));
    const dash = (n: bigint | undefined) => (n === undefined ? "—" : count(n));
    setText(c.succeeded, dash(t?.succeeded));
    setText(c.failed, dash(t?.failed));
    setText(c.cancelled, dash(t?.cancelled));
    setText(c.deps, dash(t?.waiting));
    setText(c.oldest, stats ? duration(stats.oldestWaiting) : "—");
    setText(c.perMinute, dash(stats?.finishedLastMinute));
  }
}

export class QueuesTable {
  private rows = new Map<string, QueueRow>();
  private body = byId<HTMLTableSectionElement>("queues-body");
  private timer?: ReturnType<typeof setTimeout>;
  private busy = false;
  /** A refresh was asked for while one ran: run another right after. */
  private again = false;
  private visible = false;
  /** Failures of the last refresh and of this one: one that lasts is reported once, not every
   *  2 s. */
  private reported = new Set<string>();
  private failures = new Set<string>();

  constructor(private watching: Watching) {}

  /** Refreshes while shown; showing it refreshes at once. */
  setVisible(visible: boolean): void {
    const shown = visible && !this.visible;
    this.visible = visible;
    if (shown) void this.refresh();
  }

  /** Redraws the checkboxes after the watched queues changed elsewhere (the filter field). */
  redrawWatched(): void {
    for (const row of this.rows.values()) {
      const box = row.tr.querySelector<HTMLInputElement>("input.watch");
      if (box) box.checked = this.watching.has(row.queue);
    }
  }

  async refresh(): Promise<void> {
    clearTimeout(this.timer);
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      await this.load();
    } finally {
      this.reported = this.failures;
      this.failures = new Set();
      this.busy = false;
      if (this.again) {
        this.again = false;
        void this.refresh();
      } else if (this.visible) {
        this.timer = setTimeout(() => void this.refresh(), REFRESH_MS);
      }
    }
  }

  private async load(): Promise<void> {
    let queues: QueueSummary[];
    try {
      queues = (await api().listQueues({})).queues;
    } catch (e) {
      this.failed("listing queues", e);
      return;
    }
    const stats = await Promise.all(queues.map((q) => this.stats(q.queue)));
    this.draw(queues, stats);
    this.watching.listed(queues.map((q) => q.queue));
  }

  private async stats(queue: string): Promise<GetQueueStatsResponse | undefined> {
    try {
      const answer = await api().getQueueStats({ queue });
      setText(byId("queues-note"), "");
      return answer;
    } catch (e) {
      if (ConnectError.from(e).code === Code.FailedPrecondition) {
        setText(byId("queues-note"), `Per-state counts are not available (${describe(e)}); waiting and running come from ListQueues.`);
      } else {
        this.failed(`reading the stats of ${queue}`, e);
      }
      return undefined;
    }
  }

  private draw(queues: QueueSummary[], stats: (GetQueueStatsResponse | undefined)[]): void {
    const seen = new Set<string>();
    queues.forEach((summary, i) => {
      seen.add(summary.queue);
      let row = this.rows.get(summary.queue);
      if (!row) {
        row = new QueueRow(summary.queue, this.watching, (q, action, button) => void this.act(q, action, button));
        this.rows.set(summary.queue, row);
      }
      row.update(summary, stats[i], this.watching.has(summary.queue));
    });
    for (const [queue, row] of this.rows) {
      if (!seen.has(queue)) {
        row.tr.remove();
        this.rows.delete(queue);
      }
    }
    const order = [...this.rows.values()].sort((a, b) => a.queue.localeCompare(b.queue));
    this.body.append(...order.map((r) => r.tr));
    byId("queues-empty").hidden = this.rows.size > 0;
  }

  /** Pause or Resume, then a refresh to show the queue as it is now. */
  private async act(queue: string, action: string, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      if (action === "pause") await api().pauseQueue({ queue });
      else await api().resumeQueue({ queue });
    } catch (e) {
      report(`${action === "pause" ? "pausing" : "resuming"} ${queue}`, e);
    } finally {
      button.disabled = false;
    }
    await this.refresh();
  }

  private failed(doing: string, error: unknown): void {
    const text = `${doing}: ${describe(error)}`;
    this.failures.add(text);
    if (!this.reported.has(text)) report(doing, error);
  }
}
