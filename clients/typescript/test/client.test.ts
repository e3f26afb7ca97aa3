// The package as a user installs it, against a real server: the tests import
// `@conveyor/client` and `@conveyor/client/web` by name from a scratch project that installed the
// packed tarball (test/run.mjs), and start `conveyor dev` (./server.ts).

import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { Conveyor, Fatal, JobEvent_Kind, JobState, Worker, grpcTransport, type JobEvent } from "@conveyor/client";
import { jobService } from "@conveyor/client/web";

import { startDev, unique, type DevServer } from "./server.js";

let dev: DevServer;
let address: string;

before(async () => {
  dev = await startDev();
  address = dev.address;
});

after(() => {
  dev?.stop();
});

test("a Node worker reports progress and uploads artifacts that a client fetches back", async () => {
  const queue = unique("render");
  const scratch = mkdtempSync(join(tmpdir(), "conveyor-ts-files-"));
  const big = join(scratch, "video.mp4");
  // Above the server's 64 MiB threshold: uploaded in parts.
  writeFileSync(big, Buffer.alloc(70 << 20, "frame\n"));
  const notes = join(scratch, "notes.txt");
  writeFileSync(notes, "rendered");
  const worker = new Worker({ address, queues: [queue], concurrency: 2 }).job(queue, async (job, progress) => {
    assert.deepEqual(job.json(), { title: "Weather for Lisbon" });
    for (const [percent, stage] of [[30, "bundle"], [40, "composition"], [85, "render"]] as const) {
      await progress(percent, stage, `at ${percent}`);
    }
    await job.upload("notes.txt", notes, "text/plain");
    await job.upload("video.mp4", big, "video/mp4");
    return { video: "video.mp4" };
  });
  let running: Promise<void> | undefined;
  try {
    const client = new Conveyor(grpcTransport({ address }));
    const job = await client.submit({ queue, payload: { title: "Weather for Lisbon" }, tier: "premium" });
    // The watch is open (its snapshot came) before the worker can report anything.
    const watch = client.watch(job.id);
    const events: JobEvent[] = [(await watch.next()).value as JobEvent];
    running = worker.run();
    for await (const event of watch) events.push(event);
    const stages = events.filter((e) => e.kind === JobEvent_Kind.PROGRESS).map((e) => e.progress?.stage);
    assert.ok(stages.includes("render"), `${stages}`);
    const last = events[events.length - 1];
    assert.equal(last.state, JobState.SUCCEEDED);
    assert.deepEqual(last.artifacts.map((a) => a.name), ["notes.txt", "video.mp4"]);
    const video = last.artifacts[1];
    assert.equal(video.size, BigInt(70 << 20));
    assert.ok(video.checksum.endsWith("-5"), video.checksum);
    assert.equal(new TextDecoder().decode(await client.artifact(job.id, "notes.txt")), "rendered");
    assert.equal((await client.artifact(job.id, "video.mp4")).length, 70 << 20);
    assert.equal((await client.get(job.id)).result, '{"video":"video.mp4"}');
  } finally {
    worker.stop();
    await running;
  }
});

test("inputs reach the handler; failures retry unless Fatal", async () => {
  const queue = unique("edit");
  const tries = new Map<string, number>();
  const worker = new Worker({ address, queues: [queue] }).job(queue, async (job) => {
    const { kind } = job.json<{ kind: string }>();
    tries.set(kind, (tries.get(kind) ?? 0) + 1);
    if (kind === "fatal") throw new Fatal("the footage is unusable");
    if (kind === "flaky" && job.attempt === 1) throw new Error("out of memory");
    return job.inputs.size > 0 ? new TextDecoder().decode(await job.input("clip.mov")) : "ok";
  });
  const running = worker.run();
  try {
    const client = new Conveyor(grpcTransport({ address }));
    const clip = await client.uploadInput("clip.mov", new TextEncoder().encode("raw footage"));
    const withInput = await client.submit({ queue, payload: { kind: "input" }, inputs: [clip] });
    const fatal = await client.submit({ queue, payload: { kind: "fatal" }, maxAttempts: 3 });
    const flaky = await client.submit({ queue, payload: { kind: "flaky" }, maxAttempts: 3 });
    assert.equal((await client.wait(withInput.id)).result, "raw footage");
    const failed = await client.wait(fatal.id);
    assert.equal(failed.state, JobState.FAILED);
    assert.deepEqual([failed.attempt, failed.error], [1, "the footage is unusable"]);
    const retried = await client.wait(flaky.id);
    assert.deepEqual([retried.state, retried.attempt], [JobState.SUCCEEDED, 2]);
    assert.deepEqual(Object.fromEntries(tries), { input: 1, fatal: 1, flaky: 2 });
  } finally {
    worker.stop();
    await running;
  }
});

test("the browser client speaks gRPC-Web to the same port, and refusals carry their codes", async () => {
  const web = jobService(address);
  const answer = await web.submitJob({ queue: unique("web"), payload: new TextEncoder().encode("{}") , tier: 1 });
  assert.equal(answer.job?.state, JobState.QUEUED);
  const events = web.watchJob({ jobId: answer.job!.id });
  for await (const first of events) {
    assert.equal(first.event?.kind, JobEvent_Kind.SNAPSHOT);
    break;
  }
  await assert.rejects(web.getJob({ jobId: "render:0190b5a0-0000-7000-8000-000000000000" }), (e) => {
    return e instanceof ConnectError && e.code === Code.NotFound;
  });
  await assert.rejects(web.submitJob({ queue: "bad queue!", tier: 1 }), (e) => {
    return e instanceof ConnectError && e.code === Code.InvalidArgument;
  });
});

test("stop lets a running job finish and report", async () => {
  const queue = unique("slow");
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let began!: () => void;
  const started = new Promise<void>((r) => (began = r));
  const worker = new Worker({ address, queues: [queue] }).job(queue, async () => {
    began();
    await released;
    return "done";
  });
  const running = worker.run();
  const client = new Conveyor(grpcTransport({ address }));
  const job = await client.submit({ queue });
  await started;
  worker.stop();
  release();
  await running;
  const done = await client.get(job.id);
  assert.deepEqual([done.state, done.result], [JobState.SUCCEEDED, "done"]);
});
