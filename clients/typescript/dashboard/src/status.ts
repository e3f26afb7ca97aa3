// The status line: every failed call lands here (and in the console) with what the page was
// doing, so nothing fails silently. The newest message stays until it is dismissed or replaced.

import { byId } from "./dom.js";
import { describe } from "./format.js";

/** Shows that `doing` failed, e.g. report("pausing render", e). */
export function report(doing: string, error: unknown): void {
  const text = `${doing}: ${describe(error)}`;
  console.error(`conveyor dashboard: ${text}`, error);
  show(text, "error");
}

/** Shows a message that is not a failure ("retried: it is QUEUED again"). */
export function note(text: string): void {
  show(text, "note");
}

function show(text: string, kind: "error" | "note"): void {
  const line = byId("status");
  byId("status-text").textContent = `${new Date().toLocaleTimeString()} — ${text}`;
  line.dataset.kind = kind;
  line.hidden = false;
}

export function wireStatus(): void {
  byId("status-close").addEventListener("click", () => (byId("status").hidden = true));
}
