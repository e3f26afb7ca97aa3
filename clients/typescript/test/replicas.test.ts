// Several replicas: the Node client and worker given every replica's address go on through
// another when one is gone. Calls stay on the replica that answered and move to the next on
// UNAVAILABLE, a watch resumes there after its last event, and a worker dials the next whenever
// its stream ends, presenting the jobs it holds. Against scripted replicas (connect's router,
// one per address), and against two `conveyor serve` replicas sharing a private Redis and one
// SQLite file, the first of them SIGKILLed under a running job.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport, type HandlerContext } from "@connectrpc/connect";

import {
  AssignmentSchema,
  ConnectResponseSchema,
  Conveyor,
  DrainSchema,
  JobEvent_Kind,
  JobSchema,
  JobService,
  JobState,
  ProgressSchema,
  Replicas,
  ReportResultSchema,
  WelcomeSchema,
  Worker,
  WorkerService,
  addresses,
  grpcTransport,
  type ConnectRequest,
  type ConnectResponse,
  type JobEvent,
  type WatchJobResponse,
} from "@conveyor/client";

import { ROOT, freePort, later, sleep, unique, within } from "./server.js";


/** Everything `items` yields, in order. */
async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

/** Resolves when `signal` aborts: a scripted stream that stays open until the client leaves. */
const untilAborted = (context: HandlerContext) =>
  new Promise<void>((done) => context.signal.addEventListener("abort", () => done(), { once: true }));

test("addresses: an array or a comma-separated list, each with http:// unless it says otherwise", () => {
  assert.deepEqual(addresses({ address: "127.0.0.1:1, https://b.example.com ,," }), ["http://127.0.0.1:1", "https://b.example.com"]);
  assert.deepEqual(addresses({ address: ["http://a:1", "b:2,c:3"] }), ["http://a:1", "http://b:2", "http://c:3"]);
  assert.throws(() => addresses({ address: " , " }), RangeError);
  const transport = grpcTransport({ address: ["http://a:1", "http://b:2"] });
  assert.ok(transport.addresses.includes(transport.address));
});

test("submit's tries after UNAVAILABLE go to the next replica, and calls stay on the one that answered", async () => {
  const tries: string[] = [];
  const replicas = new Replicas(["a", "b", "c"], (at) =>
    createRouterTransport(({ service }) =>
      service(JobService, {
        submitJob: (request) => {
          tries.push(at);
          if (at !== "b") throw new ConnectError(`${at} is gone`, Code.Unavailable);
          return { job: create(JobSchema, { id: `${request.queue}:1`, queue: request.queue }), created: true };
        },
        getJob: (request) => {
          tries.push(at);
          return { job: create(JobSchema, { id: request.jobId }) };
        },
      }),
    ),
  );
  const client = new Conveyor(replicas, { backoffMs: 10 });
  const job = await client.submit({ queue: "render" });
  assert.equal(job.id, "render:1");
  // From wherever it started, each try went to the next address until b answered.
  const start = tries[0];
  assert.deepEqual(tries, { a: ["a", "b"], b: ["b"], c: ["c", "a", "b"] }[start]);
  assert.equal(replicas.address, "b");
  tries.length = 0;
  await client.submit({ queue: "render" });
  await client.get("render:1");
  assert.deepEqual(tries, ["b", "b"]);
  // A stream that broke elsewhere does not move calls on from where they are now.
  replicas.failed("a");
  assert.equal(replicas.address, "b");
  replicas.failed("b");
  assert.equal(replicas.address, "c");
});

test("a broken watch resumes on the next replica after the last event it yielded, and yields a fresh snapshot", async () => {
  const calls: { at: string; afterSeq?: bigint }[] = [];
  type Answer = Partial<WatchJobResponse>;
  const event = (seq: number, fields: Partial<JobEvent>) => ({ event: { jobId: "q:1", seq: BigInt(seq), ...fields } }) as Answer;
  const snapshot = (seq: number, state: JobState) => event(seq, { kind: JobEvent_Kind.SNAPSHOT, job: create(JobSchema, { id: "q:1", state }) });
  // What each WatchJob call does, in order.
  const script: ((context: HandlerContext) => AsyncIterable<Answer>)[] = [
    // The first replica: the job's snapshot, a keep-alive, progress, then the replica dies.
    async function* () {
      yield snapshot(3, JobState.RUNNING);
      yield event(0, { kind: JobEvent_Kind.KEEPALIVE });
      yield event(4, { kind: JobEvent_Kind.PROGRESS, progress: create(ProgressSchema, { percent: 40 }) });
      throw new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled);
    },
    // The next is not up yet.
    async function* () {
      throw new ConnectError("connect ECONNREFUSED", Code.Unavailable);
    },
    // Events were missed: a fresh snapshot; then the stream ends before the job does.
    async function* () {
      yield snapshot(6, JobState.RUNNING);
    },
    // The terminal event; the stream stays open, and the watch must end anyway.
    async function* (context) {
      yield event(7, { kind: JobEvent_Kind.STATE, state: JobState.SUCCEEDED, attempt: 1 });
      await untilAborted(context);
    },
  ];
  const replicas = new Replicas(["a", "b"], (at) =>
    createRouterTransport(({ service }) =>
      service(JobService, {
        async *watchJob(request, context) {
          calls.push({ at, afterSeq: request.afterSeq });
          const next = script.shift();
          if (!next) throw new ConnectError("no more streams scripted", Code.FailedPrecondition);
          yield* next(context);
        },
      }),
    ),
  );
  const client = new Conveyor(replicas);
  const events = await within(collect(client.watch("q:1")), "end of the watch");
  assert.deepEqual(
    events.map((e) => [Number(e.seq), JobEvent_Kind[e.kind]]),
    [[3, "SNAPSHOT"], [4, "PROGRESS"], [6, "SNAPSHOT"], [7, "STATE"]],
  );
  assert.equal(events[3].state, JobState.SUCCEEDED);
  assert.deepEqual(calls.map((c) => c.afterSeq), [undefined, 4n, 4n, 6n]);
  // Each broken or ended stream moved the watch to the other replica, once.
  const [x, y] = calls[0].at === "a" ? ["a", "b"] : ["b", "a"];
  assert.deepEqual(calls.map((c) => c.at), [x, y, x, y]);
});

test("a watch refused is thrown at once; resumed after the job's last event, it ends; its signal ends it between streams", async () => {
  let calls = 0;
  const replicas = new Replicas(["a", "b"], () =>
    createRouterTransport(({ service }) =>
      service(JobService, {
        async *watchJob(request) {
          calls++;
          if (request.jobId === "q:missing") throw new ConnectError("no such job", Code.NotFound);
          if (request.jobId === "q:down") throw new ConnectError("connect ECONNREFUSED", Code.Unavailable);
          // Ended, and nothing happened after the caller's seq: the stream ends at once.
        },
        getJob: (request) => ({ job: create(JobSchema, { id: request.jobId, state: JobState.SUCCEEDED }) }),
      }),
    ),
  );
  const client = new Conveyor(replicas);
  await assert.rejects(collect(client.watch("q:missing")), (e) => e instanceof ConnectError && e.code === Code.NotFound);
  assert.equal(calls, 1);
  calls = 0;
  assert.deepEqual(await within(collect(client.watch("q:1", 9n)), "end of the watch"), []);
  assert.equal(calls, 1);
  // No replica answers: tries at 0, 200 and 600 ms, and the abort at 700 ends the wait.
  calls = 0;
  const began = Date.now();
  await assert.rejects(
    collect(client.watch("q:down", undefined, { signal: AbortSignal.timeout(700) })),
    (e) => e instanceof ConnectError && e.code === Code.Canceled,
  );
  const took = Date.now() - began;
  assert.ok(took >= 650 && took < 1500, `the watch ended ${took} ms after it began`);
  assert.equal(calls, 3);
});

/** One WorkerService stream of a scripted replica. */
class Stream {
  readonly sent: ConnectRequest["msg"][] = [];
  private waiting: ((msg: ConnectRequest["msg"] | undefined) => void)[] = [];
  private queued: ConnectRequest["msg"][] = [];
  private out: ConnectResponse[] = [];
  private wake?: () => void;
  private ended?: ConnectError | "ok";

  constructor(
    readonly at: string,
    requests: AsyncIterable<ConnectRequest>,
  ) {
    void (async () => {
      try {
        for await (const r of requests) {
          this.sent.push(r.msg);
          if (r.msg.case === "heartbeat") continue;
          const w = this.waiting.shift();
          if (w) w(r.msg);
          else this.queued.push(r.msg);
        }
      } catch {
        // The stream was cut.
      } finally {
        for (const w of this.waiting.splice(0)) w(undefined);
        this.end();
      }
    })();
  }

  /** The next message other than a heartbeat, which must be of kind `kind`. */
  async next<K extends NonNullable<ConnectRequest["msg"]["case"]>>(kind: K) {
    const msg = this.queued.shift() ?? (await within(new Promise<ConnectRequest["msg"] | undefined>((r) => this.waiting.push(r)), kind));
    assert.ok(msg, `the stream ended; expected ${kind}`);
    assert.equal(msg.case, kind);
    return msg.value as Extract<ConnectRequest["msg"], { case: K }>["value"];
  }

  send(msg: ConnectResponse["msg"]): void {
    this.out.push(create(ConnectResponseSchema, { msg }));
    this.wake?.();
  }

  /** Ends the stream: OK, or with `error` (the replica gone). */
  end(error?: ConnectError): void {
    this.ended ??= error ?? "ok";
    this.wake?.();
  }

  async *responses(): AsyncIterable<ConnectResponse> {
    for (;;) {
      const item = this.out.shift();
      if (item) {
        yield item;
        continue;
      }
      if (this.ended === "ok") return;
      if (this.ended) throw this.ended;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}

test("a worker dials the next replica whenever its stream ends, drained or broken, and presents its held job there", async () => {
  const streams: Stream[] = [];
  let arrived: (() => void) | undefined;
  const replicas = new Replicas(["a", "b"], (at) =>
    createRouterTransport(({ service }) =>
      service(WorkerService, {
        async *connect(requests) {
          const stream = new Stream(at, requests);
          streams.push(stream);
          arrived?.();
          yield* stream.responses();
        },
      }),
    ),
  );
  const stream = async (n: number) => {
    while (streams.length < n) await within(new Promise<void>((r) => (arrived = r)), `stream ${n}`);
    return streams[n - 1];
  };
  const release = later();
  const worker = new Worker({ queues: ["q"], transport: replicas, workerId: "w1" }).job("q", async (job) => {
    await release.promise;
    return { attempt: job.attempt };
  });
  const running = worker.run({ handleSignals: false });
  try {
    const one = await stream(1);
    assert.deepEqual((await one.next("hello")).held, []);
    one.send({ case: "welcome", value: create(WelcomeSchema, { heartbeatInterval: { seconds: 3600n } }) });
    one.send({ case: "assignment", value: create(AssignmentSchema, { job: { id: "q:1", queue: "q" }, token: 7n, attempt: 1 }) });
    await sleep(50);
    // Its replica drains: the worker dials the other one, holding the job.
    one.send({ case: "drain", value: create(DrainSchema) });
    const two = await stream(2);
    assert.notEqual(two.at, one.at);
    assert.deepEqual((await two.next("hello")).held.map((h) => [h.jobId, h.token]), [["q:1", 7n]]);
    two.send({ case: "welcome", value: create(WelcomeSchema, { heartbeatInterval: { seconds: 3600n } }) });
    // That one dies: back to the first, still holding the job.
    two.end(new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled));
    const three = await stream(3);
    assert.equal(three.at, one.at);
    assert.deepEqual((await three.next("hello")).held.map((h) => [h.jobId, h.token]), [["q:1", 7n]]);
    three.send({ case: "welcome", value: create(WelcomeSchema, { heartbeatInterval: { seconds: 3600n } }) });
    release.resolve();
    const complete = await three.next("complete");
    assert.deepEqual([complete.jobId, complete.token, complete.result], ["q:1", 7n, '{"attempt":1}']);
    three.send({ case: "reportResult", value: create(ReportResultSchema, { jobId: "q:1", token: 7n, code: 0 }) });
    worker.stop(5000);
    await within(running, "end of the worker's run");
    assert.equal(streams.length, 3);
    assert.deepEqual(streams.flatMap((s) => s.sent).filter((m) => m.case === "fail"), []);
  } finally {
    release.resolve();
    worker.stop(0);
    await running;
  }
});

// Against real replicas.

/** Every process the suite started, ended (SIGKILL) when it ends, however it ends. */
const processes = new Set<ChildProcess>();
process.once("exit", () => processes.forEach((p) => p.kill("SIGKILL")));

function start(program: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  const child = spawn(program, args, { env, stdio: "ignore" });
  processes.add(child);
  child.once("exit", () => processes.delete(child));
  return child;
}

/** SIGKILLs `child` and waits for it to be gone. */
async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((done) => child.once("exit", done));
  child.kill("SIGKILL");
  await within(exited, "exit of a killed process", 5000);
}

after(async () => {
  await Promise.all([...processes].map(kill));
});

/** Polls `ready` every 100 ms until it resolves true; at most `ms`. */
async function until(ready: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ready().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms`);
    await sleep(100);
  }
}

/** Whether a Redis answers PING on `port`. */
const pong = (port: number) =>
  new Promise<boolean>((done) => {
    const socket = connect(port, "127.0.0.1", () => socket.write("PING\r\n"));
    socket.setTimeout(1000, () => socket.destroy());
    socket.once("data", (d) => {
      done(d.toString().startsWith("+PONG"));
      socket.destroy();
    });
    socket.once("error", () => done(false));
    socket.once("close", () => done(false));
  });

test("a worker and a watch given both replicas go on through the second when the first is SIGKILLed", async () => {
  const binary = process.env.CONVEYOR_BIN ?? join(ROOT, "target", "debug", "conveyor");
  const redisPort = await freePort();
  const redis = start("redis-server", ["--port", `${redisPort}`, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
  await until(() => pong(redisPort), "Redis");
  const database = `sqlite://${join(mkdtempSync(join(tmpdir(), "conveyor-ts-replicas-")), "c.db")}?mode=rwc`;
  const ports = [await freePort(), await freePort()];
  const [first, second] = ports.map((port) => `http://127.0.0.1:${port}`);
  const replica = (port: number) => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CONVEYOR_INSECURE: "true",
      REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      DATABASE_URL: database,
      CONVEYOR_LISTEN: `127.0.0.1:${port}`,
      CONVEYOR_HTTP_LISTEN: "off",
    };
    delete env.CONVEYOR_KEY;
    return start(binary, ["serve"], env);
  };
  const answering = (address: string) => {
    const client = new Conveyor(grpcTransport({ address }));
    return until(async () => (await client.rpc.listQueues({}), true), `answer from ${address}`);
  };

  // Only the first is up when the worker and the watch start: both are on it.
  const one = replica(ports[0]);
  await answering(first);
  const queue = unique("render");
  const began = later();
  const release = later();
  const worker = new Worker({ address: [first, second], queues: [queue], workerId: unique("w") }).job(queue, async (job) => {
    began.resolve();
    await release.promise;
    return { attempt: job.attempt };
  });
  const running = worker.run({ handleSignals: false });
  const client = new Conveyor(grpcTransport({ address: `${first},${second}` }));
  // Ends the watch should the test fail before it does.
  const unwatch = new AbortController();
  try {
    const job = await within(client.submit({ queue, maxAttempts: 3 }), "submit");
    await within(began.promise, "start of the job");
    const watch = client.watch(job.id, undefined, { signal: unwatch.signal });
    const events: JobEvent[] = [];
    const snapshot = await within(watch.next(), "the watch's snapshot");
    assert.equal(snapshot.value?.kind, JobEvent_Kind.SNAPSHOT);
    events.push(snapshot.value as JobEvent);
    const watched = (async () => {
      for await (const event of watch) events.push(event);
    })();
    watched.catch(() => {}); // awaited below; ended by unwatch should the test fail first

    replica(ports[1]);
    await answering(second);
    await kill(one); // no drain, no goodbye
    release.resolve();

    await within(watched, "end of the watch");
    const last = events[events.length - 1];
    const state = last.kind === JobEvent_Kind.SNAPSHOT ? last.job?.state : last.state;
    assert.equal(state, JobState.SUCCEEDED, `the last event: ${JobEvent_Kind[last.kind]}`);
    const done = await within(new Conveyor(grpcTransport({ address: second })).get(job.id), "GetJob");
    assert.deepEqual([done.state, done.attempt, done.result], [JobState.SUCCEEDED, 1, '{"attempt":1}']);
  } finally {
    unwatch.abort();
    release.resolve();
    worker.stop(1000);
    await within(running, "end of the worker's run");
    await Promise.all([...processes].map(kill));
    assert.equal(redis.exitCode !== null || redis.signalCode !== null, true);
  }
});
