// A stopping Node worker: it tells the server (Stopping, and Hello.stopping on a reconnect),
// hands back any assignment that still reaches it (Decline: the job loses no attempt), keeps its
// grace across reconnects, and drains on SIGTERM the way a Kubernetes pod is stopped. Against a
// real server (`conveyor dev`), and against a scripted one that checks each message.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { createRouterTransport } from "@connectrpc/connect";

import {
  AssignmentSchema,
  ConnectResponseSchema,
  Conveyor,
  JobState,
  ReportResultSchema,
  WelcomeSchema,
  Worker,
  WorkerService,
  grpcTransport,
  type ConnectRequest,
  type ConnectResponse,
} from "@conveyor/client";

import { later, sleep, startDev, unique, within, type DevServer } from "./server.js";

let dev: DevServer;
let address: string;

before(async () => {
  dev = await startDev();
  address = dev.address;
});

after(() => {
  dev?.stop();
});


test("a job submitted while a worker stops is not failed: another worker runs its first attempt", async () => {
  const queue = unique("drain");
  const client = new Conveyor(grpcTransport({ address }));
  const release = later();
  const began = later();
  const ranOnFirst: string[] = [];
  // Two slots, one of them busy with the held job: the server would have a free one to offer.
  const first = new Worker({ address, queues: [queue], concurrency: 2 }).job(queue, async (job) => {
    ranOnFirst.push(job.id);
    began.resolve();
    await release.promise;
    return "held";
  });
  let firstEnded = false;
  const firstRun = first.run({ handleSignals: false }).then(() => (firstEnded = true));
  const second = new Worker({ address, queues: [queue] }).job(queue, async (job) => `second ran attempt ${job.attempt}`);
  let secondRun: Promise<void> | undefined;
  try {
    const held = await client.submit({ queue });
    await began.promise;
    // Stopped, then a job with one attempt at once: whether the Stopping lands first (no
    // assignment) or the assignment does (a Decline), the job must not lose its attempt.
    first.stop();
    const job = await client.submit({ queue, maxAttempts: 1 });
    await sleep(500);
    const waiting = await client.get(job.id);
    assert.deepEqual([waiting.state, waiting.attempt], [JobState.QUEUED, 0], "the job waits, no attempt spent");
    assert.deepEqual(ranOnFirst, [held.id], "the stopping worker ran nothing new");
    assert.equal(firstEnded, false, "the stopping worker still runs its held job");

    secondRun = second.run({ handleSignals: false });
    const done = await within(client.wait(job.id), "end of the job");
    assert.deepEqual([done.state, done.attempt, done.result], [JobState.SUCCEEDED, 1, "second ran attempt 1"]);

    release.resolve();
    await within(firstRun, "end of the stopping worker's run");
    const heldDone = await client.get(held.id);
    assert.deepEqual([heldDone.state, heldDone.result], [JobState.SUCCEEDED, "held"]);
  } finally {
    release.resolve();
    first.stop();
    second.stop();
    await Promise.all([firstRun, secondRun]);
  }
});

/** Runs `source` (an ES module that can import @conveyor/client) in a Node child process. */
function child(source: string) {
  // TMPDIR is inside the scratch project (test/run.mjs), whose node_modules has the package.
  const script = join(mkdtempSync(join(tmpdir(), "conveyor-ts-child-")), "worker.mjs");
  writeFileSync(script, source);
  const proc = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const waiters: { text: string; found: () => void }[] = [];
  const read = (chunk: Buffer) => {
    out += chunk.toString();
    for (const w of waiters.filter((w) => out.includes(w.text))) w.found();
  };
  proc.stdout.on("data", read);
  proc.stderr.on("data", read);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    proc.on("exit", (code, signal) => done({ code, signal })),
  );
  return {
    proc,
    exited,
    output: () => out,
    /** Resolves once the child printed `text` (on stdout or stderr). */
    printed: (text: string) =>
      within(
        new Promise<void>((found, fail) => {
          if (out.includes(text)) return found();
          waiters.push({ text, found });
          exited.then(() => fail(new Error(`the child ended without printing ${text}:\n${out}`)));
        }),
        `"${text}" from the child:\n${out}`,
      ),
  };
}

/** A worker process whose handler waits for the file `flag`. */
const workerScript = (queue: string, flag: string) => `
import { existsSync } from "node:fs";
import { Worker } from "@conveyor/client";
const worker = new Worker({ address: ${JSON.stringify(address)}, queues: [${JSON.stringify(queue)}] });
worker.job(${JSON.stringify(queue)}, async () => {
  console.log("job started");
  while (!existsSync(${JSON.stringify(flag)})) await new Promise((r) => setTimeout(r, 20));
  return "finished after SIGTERM";
});
await worker.run({ graceMs: 20000 });
console.log("run returned");
`;

test("SIGTERM drains a worker process: its job finishes and is reported, then the process exits", async () => {
  const queue = unique("pod");
  const flag = join(mkdtempSync(join(tmpdir(), "conveyor-ts-flag-")), "go");
  const client = new Conveyor(grpcTransport({ address }));
  const pod = child(workerScript(queue, flag));
  try {
    const job = await client.submit({ queue, maxAttempts: 1 });
    await pod.printed("job started");
    pod.proc.kill("SIGTERM");
    await pod.printed("SIGTERM: finishing the running jobs");
    writeFileSync(flag, "");
    assert.deepEqual(await within(pod.exited, "exit"), { code: 0, signal: null }, pod.output());
    assert.match(pod.output(), /run returned/);
    const done = await client.get(job.id);
    assert.deepEqual([done.state, done.attempt, done.result], [JobState.SUCCEEDED, 1, "finished after SIGTERM"]);
  } finally {
    pod.proc.kill("SIGKILL");
  }
});

test("a second signal gets Node's default: the draining process ends at once", async () => {
  const queue = unique("pod");
  const client = new Conveyor(grpcTransport({ address }));
  // The flag never appears: the job would run forever.
  const pod = child(workerScript(queue, join(tmpdir(), "never")));
  try {
    await client.submit({ queue });
    await pod.printed("job started");
    pod.proc.kill("SIGINT");
    await pod.printed("SIGINT: finishing the running jobs");
    pod.proc.kill("SIGINT");
    assert.deepEqual(await within(pod.exited, "exit"), { code: null, signal: "SIGINT" }, pod.output());
    assert.doesNotMatch(pod.output(), /run returned/);
  } finally {
    pod.proc.kill("SIGKILL");
  }
});

/** An async queue: `push` now, `next` waits for an item. */
class Queue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: ((item: IteratorResult<T>) => void)[] = [];
  private closed = false;

  push(item: T): void {
    const w = this.waiting.shift();
    if (w) w({ value: item, done: false });
    else this.items.push(item);
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((r) => this.waiting.push(r));
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return { next: () => this.next() };
  }
}

/** One stream of the scripted server: what the worker sent, and what to send it. */
class Stream {
  /** Everything the worker sent on this stream, heartbeats too. */
  readonly sent: ConnectRequest["msg"][] = [];
  private received = new Queue<ConnectRequest["msg"]>();
  readonly responses = new Queue<ConnectResponse>();

  constructor(requests: AsyncIterable<ConnectRequest>) {
    // Like the server: the worker ending its side ends the stream.
    void (async () => {
      try {
        for await (const r of requests) {
          this.sent.push(r.msg);
          if (r.msg.case !== "heartbeat") this.received.push(r.msg);
        }
      } finally {
        this.received.close();
        this.responses.close();
      }
    })();
  }

  /** The next message other than a heartbeat, which must be of kind `kind`. */
  async next<K extends NonNullable<ConnectRequest["msg"]["case"]>>(kind: K) {
    const { value, done } = await within(this.received.next(), kind);
    assert.ok(!done, `the stream ended; expected ${kind}`);
    assert.equal(value.case, kind, `expected ${kind}, got ${JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `${v}` : v))}`);
    return value.value as Extract<ConnectRequest["msg"], { case: K }>["value"];
  }

  send(msg: ConnectResponse["msg"]): void {
    this.responses.push(create(ConnectResponseSchema, { msg }));
  }

  welcome(): void {
    // Heartbeats rarely enough not to matter.
    this.send({ case: "welcome", value: create(WelcomeSchema, { heartbeatInterval: { seconds: 3600n } }) });
  }
}

/** A WorkerService that hands each stream to the test. */
function scripted() {
  const streams = new Queue<Stream>();
  const all: Stream[] = [];
  const transport = createRouterTransport(({ service }) =>
    service(WorkerService, {
      async *connect(requests) {
        const stream = new Stream(requests);
        all.push(stream);
        streams.push(stream);
        yield* stream.responses;
      },
    }),
  );
  return {
    transport,
    next: async () => (await streams.next()).value as Stream,
    /** No stream carried a Fail. */
    noFail: () => assert.deepEqual(all.flatMap((s) => s.sent).filter((m) => m.case === "fail"), []),
  };
}

const assignment = (id: string, token: bigint): ConnectResponse["msg"] => ({
  case: "assignment",
  value: create(AssignmentSchema, { job: { id: `q:${id}`, queue: "q" }, token, attempt: 1 }),
});

/** The ReportResult of a report about job `id`: OK unless `code`. */
const answer = (id: string, token: bigint, code = 0): ConnectResponse["msg"] => ({
  case: "reportResult",
  value: create(ReportResultSchema, { jobId: `q:${id}`, token, code }),
});

test("assignments that reach a stopping or full worker are declined, and a decline outlives a reconnect", async () => {
  const server = scripted();
  const release = later();
  const started: string[] = [];
  const worker = new Worker({ queues: ["q"], concurrency: 2, transport: server.transport, workerId: "w1" }).job("q", async (job) => {
    started.push(job.id);
    await release.promise;
    return "ok";
  });
  let ended = false;
  const running = worker.run({ handleSignals: false }).then(() => (ended = true));
  try {
    const one = await server.next();
    const hello = await one.next("hello");
    assert.deepEqual([hello.stopping, hello.concurrency, hello.held], [false, 2, []]);
    one.welcome();
    one.send(assignment("a", 1n));
    one.send(assignment("b", 2n));
    // Both slots taken: a third assignment is handed back, not failed.
    one.send(assignment("c", 3n));
    const full = await one.next("decline");
    assert.deepEqual([full.jobId, full.token, full.reason], ["q:c", 3n, "the worker has no free slot"]);
    one.send(answer("c", 3n));

    worker.stop(10_000);
    assert.equal((await one.next("stopping")).reason, "shutting down");
    // An assignment already on its way: declined.
    one.send(assignment("d", 4n));
    const declined = await one.next("decline");
    assert.deepEqual([declined.jobId, declined.token, declined.reason], ["q:d", 4n, "shutting down"]);

    // The stream ends before the decline is answered: the next Hello says the worker is
    // stopping and holds the running jobs and the declined one (so the job is not released
    // with its attempt counted), and the decline is sent again. The answered one is gone.
    one.responses.close();
    const two = await server.next();
    const again = await two.next("hello");
    assert.equal(again.stopping, true);
    assert.deepEqual(
      again.held.map((h) => [h.jobId, h.token]),
      [["q:a", 1n], ["q:b", 2n], ["q:d", 4n]],
    );
    const resent = await two.next("decline");
    assert.deepEqual([resent.jobId, resent.token], ["q:d", 4n]);
    two.welcome();
    two.send(answer("d", 4n));

    // The held jobs finish and are reported; run ends once both are answered.
    release.resolve();
    const ends = [await two.next("complete"), await two.next("complete")].map((c) => c.jobId).sort();
    assert.deepEqual(ends, ["q:a", "q:b"]);
    two.send(answer("a", 1n));
    await sleep(100);
    assert.equal(ended, false, "run waits for every report to be answered");
    two.send(answer("b", 2n));
    await running;
    assert.deepEqual(started, ["q:a", "q:b"]);
    server.noFail();
  } finally {
    release.resolve();
    worker.stop(1000);
    await running;
  }
});

test("the grace of stop counts from the stop, across reconnects", async () => {
  const server = scripted();
  let job: { cancelled: boolean } | undefined;
  const worker = new Worker({ queues: ["q"], transport: server.transport }).job("q", async (j) => {
    job = j;
    await new Promise(() => {}); // never ends
  });
  const running = worker.run({ handleSignals: false });
  try {
    const one = await server.next();
    await one.next("hello");
    one.welcome();
    one.send(assignment("a", 1n));
    await within((async () => { while (!job) await sleep(10); })(), "job started");
    const stopped = Date.now();
    worker.stop(800);
    await one.next("stopping");
    // Stream after stream ends; each reconnect says stopping, and the grace does not start over.
    one.responses.close();
    for (;;) {
      const next = await within(Promise.race([server.next(), running.then(() => undefined)]), "stream or end of run");
      if (!next) break;
      const hello = await next.next("hello");
      assert.equal(hello.stopping, true);
      assert.deepEqual(hello.held.map((h) => h.jobId), ["q:a"]);
      next.welcome();
      await sleep(150);
      next.responses.close();
    }
    const took = Date.now() - stopped;
    assert.ok(took >= 750 && took < 2000, `run ended ${took} ms after stop(800)`);
    assert.equal(job!.cancelled, true, "the handler still running is told to stop");
    server.noFail();
  } finally {
    worker.stop(0);
    await running;
  }
});
