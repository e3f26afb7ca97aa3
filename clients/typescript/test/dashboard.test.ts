// The dashboard (/dashboard/ on the server's port) in headless Chromium against `conveyor dev`:
// a job's page follows a Node worker's progress, Cancel / Retry / Pause / Resume do what they
// say, 1,000 jobs updating at once all reach the page (its frame times and event lags are
// printed, not asserted), and the committed bundle is what `npm run build:dashboard` makes.
//
// Chromium is Debian's (/usr/bin/chromium; CONVEYOR_CHROMIUM says otherwise). Screenshots go to
// CONVEYOR_SCREENSHOTS (docs/screenshots in the repository when refreshed), else a temp dir.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";
import { chromium, type Browser, type Page } from "playwright-core";

import { Conveyor, Fatal, JobState, Tier, Worker, grpcTransport } from "@conveyor/client";

import { PACKAGE, startDev, unique, type DevServer } from "./server.js";

const DASHBOARD = join(PACKAGE, "dashboard");
const SHOTS = process.env.CONVEYOR_SCREENSHOTS ?? mkdtempSync(join(tmpdir(), "conveyor-shots-"));
const BULK = 1_000;

let dev: DevServer;
let browser: Browser;
let client: Conveyor;

before(async () => {
  [dev, browser] = await Promise.all([
    startDev(),
    chromium.launch({ executablePath: process.env.CONVEYOR_CHROMIUM ?? "/usr/bin/chromium", headless: true }),
  ]);
  client = new Conveyor(grpcTransport({ address: dev.address }));
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  dev?.stop();
});

/** Opens the dashboard at `#hash`; the page must not throw, nor report an error, meanwhile. */
async function open(hash: string, check: (page: Page) => Promise<void>): Promise<void> {
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.setDefaultTimeout(20_000);
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  try {
    await page.goto(`${dev.address}/dashboard/#${hash}`);
    await check(page);
    assert.deepEqual(problems, [], "the page reported errors");
  } finally {
    await page.close();
  }
}

const hashOf = (id: string) => `job=${encodeURIComponent(id)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `worker` while `body` runs, then stops it (letting running handlers finish). */
async function serving<T>(worker: Worker, body: () => Promise<T>): Promise<T> {
  const running = worker.run();
  try {
    return await body();
  } finally {
    worker.stop();
    await running;
  }
}

/** SubmitJobs, again after RESOURCE_EXHAUSTED (the server's submit rate per tenant). */
async function submitAll(jobs: { queue: string; tier: Tier; labels: Record<string, string> }[]): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await client.rpc.submitJobs({ jobs });
      return;
    } catch (e) {
      if (!(e instanceof ConnectError && e.code === Code.ResourceExhausted) || i > 20) throw e;
      await sleep(250);
    }
  }
}

test("the server serves the page on its gRPC port", async () => {
  const page = await fetch(`${dev.address}/dashboard/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
  assert.equal(await page.text(), readFileSync(join(DASHBOARD, "dist", "index.html"), "utf8"));
  const script = await fetch(`${dev.address}/dashboard/app.js`);
  assert.match(script.headers.get("content-type") ?? "", /javascript/);
  // The binary embeds dist/ when it compiles: an older binary serves an older page.
  assert.ok((await script.text()) === readFileSync(join(DASHBOARD, "dist", "app.js"), "utf8"), "the server was built from this dashboard/dist");
});

test("a job's page follows its progress to SUCCEEDED, with its result and artifact", async () => {
  const queue = unique("render");
  const notes = join(mkdtempSync(join(tmpdir(), "conveyor-dash-")), "notes.txt");
  writeFileSync(notes, "rendered");
  const worker = new Worker({ address: dev.address, queues: [queue] }).job(queue, async (job, progress) => {
    for (let percent = 10; percent <= 100; percent += 10) {
      await sleep(80);
      await progress(percent, percent < 100 ? "render" : "upload", `step ${percent / 10} of 10`);
    }
    await job.upload("notes.txt", notes, "text/plain");
    return { video: "weather.mp4" };
  });
  await open(`queues=${queue}`, async (page) => {
    await page.waitForFunction(() => window.__conveyorStats.synced);
    const job = await client.submit({ queue, payload: { title: "Weather for Lisbon" }, tier: "premium", labels: { customer: "acme" } });
    // The list shows the new job live; a click opens its page.
    const row = page.locator(`#jobs-body [data-job-id="${job.id}"]`);
    await row.and(page.locator('[data-state="QUEUED"]')).waitFor();
    assert.equal(await row.locator(".labels").textContent(), "customer=acme");
    await row.locator(".queue").click();
    await page.locator('#job-view[data-state="QUEUED"]').waitFor();
    assert.equal(page.url().split("#")[1], hashOf(job.id));
    // Every percent the big bar shows, as the page draws it.
    await page.evaluate(() => {
      const bar = document.querySelector<HTMLElement>("#job-progress .bar")!;
      const seen: string[] = ((window as unknown as { seen: string[] }).seen = []);
      new MutationObserver(() => seen.push(bar.dataset.percent!)).observe(bar, { attributeFilter: ["data-percent"] });
    });
    await serving(worker, async () => {
      await page.locator('#job-view[data-state="SUCCEEDED"]').waitFor();
    });
    await page.locator('#job-progress .bar[data-percent="100"]').waitFor();
    const seen = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
    const between = new Set(seen.filter((p) => p !== "0" && p !== "100"));
    assert.ok(between.size >= 2, `the bar moved through ${[...between]} before 100`);
    assert.equal(await page.locator("#job-percent").textContent(), "100%");
    assert.equal(await page.locator("#job-stage").textContent(), "upload");
    assert.equal(await page.locator("#job-result").textContent(), '{"video":"weather.mp4"}');
    const link = page.locator('#job-artifacts a[data-artifact="notes.txt"]');
    await page.waitForFunction(() => document.querySelector<HTMLAnchorElement>("#job-artifacts a")?.href.startsWith("http"));
    assert.equal(await (await fetch((await link.getAttribute("href"))!)).text(), "rendered");
    assert.ok(await page.locator("#job-cancel").isDisabled());
    assert.ok(await page.locator("#job-retry").isDisabled());
    await page.screenshot({ path: join(SHOTS, "dashboard-job.png") });
    // Back on the list, the finished job stays, at 100%.
    await page.locator("#job-back").click();
    await row.and(page.locator('[data-state="SUCCEEDED"]')).locator('.bar[data-percent="100"]').waitFor();
  });
});

test("Cancel stops a queued job; Retry runs a FAILED one again", async () => {
  const queue = unique("edit");
  const waiting = await client.submit({ queue });
  await open(hashOf(waiting.id), async (page) => {
    await page.locator('#job-view[data-state="QUEUED"]').waitFor();
    assert.ok(await page.locator("#job-retry").isDisabled());
    await page.locator("#job-cancel").click();
    await page.locator('#job-view[data-state="CANCELLED"]').waitFor();
    assert.ok(await page.locator("#job-cancel").isDisabled());
  });
  let runs = 0;
  const worker = new Worker({ address: dev.address, queues: [queue] }).job(queue, async () => {
    runs++;
    if (runs === 1) throw new Fatal("the footage is unusable");
    return "fixed";
  });
  await serving(worker, async () => {
    const failing = await client.submit({ queue, maxAttempts: 3 });
    await open(hashOf(failing.id), async (page) => {
      await page.locator('#job-view[data-state="FAILED"]').waitFor();
      assert.equal(await page.locator("#job-error").textContent(), "the footage is unusable");
      await page.locator("#job-retry").click();
      await page.locator('#job-view[data-state="SUCCEEDED"]').waitFor();
      assert.equal(await page.locator("#job-result").textContent(), "fixed");
    });
  });
  assert.equal(runs, 2);
  assert.equal((await client.get(waiting.id)).state, JobState.CANCELLED);
});

test("Pause and Resume show the queue's state", async () => {
  const queue = unique("mail");
  await client.submit({ queue });
  await open(`queues=${queue}`, async (page) => {
    const row = page.locator(`#queues-body tr[data-queue="${queue}"]`);
    await row.and(page.locator('[data-paused="false"]')).waitFor();
    await row.locator('button[data-action="pause"]').click();
    await row.and(page.locator('[data-paused="true"]')).waitFor();
    const paused = (await client.rpc.listQueues({})).queues.find((q) => q.queue === queue);
    assert.equal(paused?.paused, true);
    await row.locator('button[data-action="resume"]').click();
    await row.and(page.locator('[data-paused="false"]')).waitFor();
  });
});

test(`${BULK} jobs updating at once all reach the page`, async () => {
  const queue = unique("bulk");
  const worker = new Worker({ address: dev.address, queues: [queue], concurrency: BULK }).job(queue, async (_, progress) => {
    for (let step = 1; step <= 10; step++) {
      await sleep(40 + Math.random() * 60);
      await progress(step * 10, `step ${step}`);
    }
    return "ok";
  });
  await open(`queues=${queue}`, async (page) => {
    await page.waitForFunction(() => window.__conveyorStats.synced);
    const jobs = Array.from({ length: BULK }, (_, i) => ({ queue, tier: Tier.FREE, labels: { batch: "b1", n: String(i) } }));
    await submitAll(jobs);
    await page.locator(`#jobs-summary[data-rows="${BULK}"]`).waitFor();
    await serving(worker, async () => {
      // A picture with the top rows part way: the newest jobs are the last to start.
      await page.waitForFunction(() => {
        const top = document.querySelector<HTMLElement>("#jobs-body [data-job-id] .bar");
        return Number(top?.dataset.percent) >= 40;
      });
      await page.screenshot({ path: join(SHOTS, "dashboard-jobs.png") });
      await page.waitForFunction(
        (n) => document.querySelectorAll('#jobs-body [data-state="SUCCEEDED"] .bar[data-percent="100"]').length === n,
        BULK,
        { polling: 500, timeout: 60_000 },
      );
    });
    const s = await page.evaluate(() => window.__conveyorStats.summary());
    assert.equal(s.rows, BULK);
    const f = (m: { p50: number; p99: number; max: number }) => `p50 ${m.p50} p99 ${m.p99} max ${m.max}`;
    console.log(
      `dashboard: ${BULK} jobs, ${s.events} events applied (${s.dropped} stale dropped); ` +
        `frame ms ${f(s.frameMs)} (${s.frameMs.n} frames); event lag ms ${f(s.lagMs)}; render ms per frame ${f(s.renderMs)}`,
    );
  });
});

test("dashboard/dist is what `npm run build:dashboard` makes", () => {
  const fresh = mkdtempSync(join(tmpdir(), "conveyor-dashboard-"));
  execFileSync(process.execPath, [join(DASHBOARD, "build.mjs"), fresh], { cwd: PACKAGE, stdio: "pipe" });
  for (const name of ["index.html", "app.js", "app.css"]) {
    const kept = readFileSync(join(DASHBOARD, "dist", name), "utf8");
    assert.equal(readFileSync(join(fresh, name), "utf8"), kept, `dashboard/dist/${name} is stale: npm run build:dashboard`);
  }
});

declare global {
  interface Window {
    __conveyorStats: {
      synced: boolean;
      summary(): {
        events: number;
        dropped: number;
        rows: number;
        frameMs: { n: number; p50: number; p99: number; max: number };
        renderMs: { n: number; p50: number; p99: number; max: number };
        lagMs: { n: number; p50: number; p99: number; max: number };
      };
    };
  }
}
