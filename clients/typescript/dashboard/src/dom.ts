// Building elements from text only (labels, errors and results are user data, so nothing is
// parsed as HTML), the page's fixed elements by id, and the progress bar used everywhere.

import { JobState } from "../../src/web.js";
import { stateName } from "./format.js";

type Child = Node | string;

/** `h("td", { class: "state" }, "RUNNING")`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  el.append(...children);
  return el;
}

/** One of index.html's elements; a missing id is a bug in the page, not a state to handle. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`index.html has no #${id}`);
  return el as T;
}

/** Writes `text` only when it differs: reading a string is cheaper than a DOM write. */
export function setText(el: Element, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

/** A progress bar: `.bar[data-percent][data-state]` with a fill scaled to the percent (a
 *  transform, so a frame of a thousand bars moving costs no layout). */
export class Bar {
  readonly el: HTMLDivElement;
  private fill: HTMLDivElement;
  private percent = -1;
  private state = "";

  constructor(className = "bar") {
    this.fill = h("div", { class: "fill" });
    this.el = h("div", { class: className, "data-percent": "0" }, this.fill);
  }

  set(percent: number, state: JobState): void {
    const p = Math.max(0, Math.min(100, Math.round(percent)));
    if (p !== this.percent) {
      this.percent = p;
      this.el.dataset.percent = String(p);
      this.fill.style.transform = `scaleX(${p / 100})`;
    }
    const s = stateName(state);
    if (s !== this.state) {
      this.state = s;
      this.el.dataset.state = s;
    }
  }
}
