// The dashboard's entry: routes on the URL's hash and wires the views together.
//
//   #job=<id>                              the job page
//   #queues=a,b&state=RUNNING&labels=k=v   the queues table and the jobs list, filtered
//   (no queues)                            the jobs list watches every queue the server lists
//
// The hash is the one place the filters live, so a view can be bookmarked, and Back works.

import { saveKey, savedKey } from "./api.js";
import { JobDetail } from "./detail.js";
import { byId } from "./dom.js";
import { parseLabels } from "./format.js";
import { JobsList } from "./jobs.js";
import { QueuesTable, type Watching } from "./queues.js";
import { startFrames } from "./stats.js";
import { note, report, wireStatus } from "./status.js";

/** WatchJobs takes at most 32 queues. */
const MAX_QUEUES = 32;

const list = new JobsList();
const detail = new JobDetail();
/** Every queue ListQueues has named since the page opened: "all queues" only ever grows, so a
 *  queue whose jobs all finished does not restart the list. */
const listed = new Set<string>();

const params = () => new URLSearchParams(location.hash.slice(1));
const names = (text: string) => text.split(/[\s,]+/).filter(Boolean);

/** The queues the jobs list watches: the hash's, or every listed one. */
function watchedQueues(): string[] {
  const chosen = params().get("queues");
  return chosen !== null ? names(chosen) : [...listed].sort().slice(0, MAX_QUEUES);
}

const watching: Watching = {
  has: (queue) => watchedQueues().includes(queue),
  toggle(queue, on) {
    const queues = new Set(watchedQueues());
    if (on) queues.add(queue);
    else queues.delete(queue);
    const next = params();
    next.set("queues", [...queues].join(","));
    location.hash = next.toString();
  },
  listed(queues) {
    const before = listed.size;
    for (const q of queues) listed.add(q);
    if (listed.size !== before && params().get("queues") === null && !params().get("job")) route();
  },
};

const queues = new QueuesTable(watching);

/** The list view's hash, for the job page's way back. */
let listHash = "";

function route(): void {
  const p = params();
  const job = p.get("job");
  byId("list-view").hidden = job !== null;
  byId("job-view").hidden = job === null;
  list.setVisible(job === null);
  queues.setVisible(job === null);
  if (job !== null) {
    byId<HTMLAnchorElement>("job-back").href = `#${listHash}`;
    detail.open(job);
    return;
  }
  detail.close();
  listHash = p.toString();
  let labels: Record<string, string> = {};
  try {
    labels = parseLabels(p.get("labels") ?? "");
  } catch (e) {
    report("reading the label filter", e);
  }
  const chosen = watchedQueues();
  list.watch(chosen.length > 0 ? { queues: chosen, labels } : undefined);
  list.setFilter(p.get("state") ?? "");
  byId<HTMLInputElement>("filter-queues").value = p.get("queues") ?? "";
  byId<HTMLSelectElement>("filter-state").value = p.get("state") ?? "";
  byId<HTMLInputElement>("filter-labels").value = p.get("labels") ?? "";
  queues.redrawWatched();
}

/** The filter form writes the hash; `route` does the rest. */
function wireFilters(): void {
  const apply = () => {
    const next = new URLSearchParams();
    const chosen = names(byId<HTMLInputElement>("filter-queues").value);
    if (chosen.length > 0) next.set("queues", chosen.join(","));
    const state = byId<HTMLSelectElement>("filter-state").value;
    if (state) next.set("state", state);
    const labels = byId<HTMLInputElement>("filter-labels").value.trim();
    if (labels) next.set("labels", labels);
    location.hash = next.toString();
  };
  byId("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  byId("filter-state").addEventListener("change", apply);
}

function wireKey(): void {
  const field = byId<HTMLInputElement>("api-key");
  field.value = savedKey();
  byId("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveKey(field.value.trim());
    note(field.value.trim() ? "API key saved in this browser" : "API key forgotten");
    // Every stream and call starts again with the new credential.
    list.restart();
    void queues.refresh();
    const job = params().get("job");
    if (job !== null) {
      detail.close();
      detail.open(job);
    }
  });
}

wireStatus();
wireFilters();
wireKey();
window.addEventListener("hashchange", route);
route();
startFrames([() => list.render(), () => detail.render()]);
