// Submits safe to try again: the clients key every submit the caller did not key, send that key
// on every try, and try UNAVAILABLE again with a doubling wait. Against a scripted JobService in
// this process (connect-node's router), over gRPC for the Node client and gRPC-Web for the
// browser's, that keeps a job whose try it answers UNAVAILABLE, as the server does.

import assert from "node:assert/strict";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttp2Server, type Http2Server, type ServerHttp2Session } from "node:http2";
import { type AddressInfo } from "node:net";
import { after, before, beforeEach, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  Conveyor,
  JobSchema,
  JobService,
  SubmitJobRequestSchema,
  grpcTransport,
  submitJob,
  submitJobs,
  type SubmitJobRequest,
} from "@conveyor/client";
// The message; "@conveyor/client" names the worker's Job so.
import { jobService, submitJob as submitFromPage, type Job } from "@conveyor/client/web";

/** What the next tries are answered before OK: the codes, in order. */
let plan: Code[] = [];
/** Each try: the jobs it carried. */
let tries: SubmitJobRequest[][] = [];
/** The jobs made, by idempotency key. */
let made = new Map<string, Job>();
let count = 0;

beforeEach(() => {
  plan = [];
  tries = [];
  made = new Map();
});

/** Like the server: a refusal other than UNAVAILABLE makes nothing; a job whose try is answered
 *  UNAVAILABLE stays, and a later try with its key gets it back (created: false). */
function answer(jobs: SubmitJobRequest[]) {
  tries.push(jobs);
  const code = plan.shift();
  const fail = () => new ConnectError(`scripted ${Code[code!]} (try ${tries.length})`, code);
  if (code !== undefined && code !== Code.Unavailable) throw fail();
  const results = jobs.map((request) => {
    const earlier = request.idempotencyKey ? made.get(request.idempotencyKey) : undefined;
    const job = earlier ?? create(JobSchema, { id: `${request.queue}:${++count}`, queue: request.queue });
    if (request.idempotencyKey) made.set(request.idempotencyKey, job);
    return { job, created: !earlier };
  });
  if (code !== undefined) throw fail();
  return results;
}

const routes = (router: ConnectRouter) =>
  router.service(JobService, {
    submitJob: (request) => answer([request])[0],
    submitJobs: (request) => ({ results: answer(request.jobs) }),
  });

let grpc: Http2Server;
const sessions = new Set<ServerHttp2Session>();
let web: Server;
/** The scripted server over gRPC (HTTP/2) and over gRPC-Web (HTTP/1.1). */
let grpcAddress: string;
let webAddress: string;

const listen = (server: Http2Server | Server) =>
  new Promise<string>((done) =>
    server.listen(0, "127.0.0.1", () => done(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)),
  );

before(async () => {
  grpc = createHttp2Server(connectNodeAdapter({ routes }));
  grpc.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  web = createHttpServer(connectNodeAdapter({ routes }));
  grpcAddress = await listen(grpc);
  webAddress = await listen(web);
});

after(async () => {
  for (const s of sessions) s.destroy();
  web.closeAllConnections();
  await Promise.all([grpc, web].map((s) => new Promise((done) => s.close(done))));
});

const keys = () => tries.map((t) => t.map((j) => j.idempotencyKey));
const OWN_KEY = /^ts:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("submit tries UNAVAILABLE again after 200 then 400 ms, with one idempotency key of its own that follow-ups do not get", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }));
  plan = [Code.Unavailable, Code.Unavailable];
  const began = Date.now();
  const job = await client.submit({
    queue: "render",
    payload: { title: "Lisbon" },
    onSuccess: [create(SubmitJobRequestSchema, { queue: "upload" })],
  });
  const took = Date.now() - began;
  assert.equal(tries.length, 3);
  const [key] = keys()[0];
  assert.match(key, OWN_KEY);
  assert.deepEqual(keys(), [[key], [key], [key]], "every try carries the same key");
  assert.deepEqual(tries.map((t) => t[0].onSuccess.map((f) => f.idempotencyKey)), [[""], [""], [""]], "follow-ups carry no key");
  assert.equal(job.id, made.get(key)!.id, "the one job, made by the first try");
  assert.ok(took >= 580 && took < 3000, `the tries took ${took} ms`);

  // Another call: another key.
  await client.submit({ queue: "render" });
  assert.equal(tries.length, 4);
  assert.match(keys()[3][0], OWN_KEY);
  assert.notEqual(keys()[3][0], key);
});

test("a caller's idempotency key is sent as is, on every try", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }), { backoffMs: 10 });
  plan = [Code.Unavailable];
  const job = await client.submit({ queue: "render", idempotencyKey: "order-42" });
  assert.deepEqual(keys(), [["order-42"], ["order-42"]]);
  assert.equal(job.id, made.get("order-42")!.id);
});

test("INVALID_ARGUMENT is thrown at once, without another try", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }), { backoffMs: 10 });
  plan = [Code.InvalidArgument];
  await assert.rejects(client.submit({ queue: "render" }), (e) => e instanceof ConnectError && e.code === Code.InvalidArgument);
  assert.equal(tries.length, 1);
  // After an UNAVAILABLE too: the refusal ends the call.
  tries = [];
  plan = [Code.Unavailable, Code.InvalidArgument];
  await assert.rejects(client.submit({ queue: "render" }), (e) => e instanceof ConnectError && e.code === Code.InvalidArgument);
  assert.equal(tries.length, 2);
});

test("created is true for the job a key of its own made on an earlier try; under the caller's key it is the server's", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }));
  plan = [Code.Unavailable];
  const own = await submitJob(client.rpc, { queue: "render", tier: 1 }, { backoffMs: 10 });
  assert.equal(tries.length, 2);
  assert.deepEqual([own.created, own.job?.id], [true, made.get(keys()[0][0])!.id]);
  // The caller's key: the second try found the job the first made, and says so.
  plan = [Code.Unavailable];
  const theirs = await submitJob(client.rpc, { queue: "render", tier: 1, idempotencyKey: "order-7" }, { backoffMs: 10 });
  assert.deepEqual([theirs.created, theirs.job?.id], [false, made.get("order-7")!.id]);
  // The caller's request is left as it was.
  const request = create(SubmitJobRequestSchema, { queue: "render", tier: 1 });
  await submitJob(client.rpc, request);
  assert.equal(request.idempotencyKey, "");
});

test("after its retries the last UNAVAILABLE is thrown; retries and backoff are the client's, or the call's", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }), { retries: 2, backoffMs: 10 });
  plan = Array(10).fill(Code.Unavailable);
  await assert.rejects(client.submit({ queue: "render" }), (e) => {
    return e instanceof ConnectError && e.code === Code.Unavailable && e.rawMessage === "scripted Unavailable (try 3)";
  });
  assert.equal(tries.length, 3);
  tries = [];
  await assert.rejects(client.submit({ queue: "render" }, { retries: 0 }), (e) => e instanceof ConnectError && e.code === Code.Unavailable);
  assert.equal(tries.length, 1);
});

test("the caller's signal and timeout end the retries", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }));
  plan = Array(10).fill(Code.Unavailable);
  // Aborted during the wait: Canceled, as an aborted call is.
  const abort = new AbortController();
  setTimeout(() => abort.abort(), 100);
  let began = Date.now();
  await assert.rejects(
    client.submit({ queue: "render" }, { signal: abort.signal, backoffMs: 10_000 }),
    (e) => e instanceof ConnectError && e.code === Code.Canceled,
  );
  assert.ok(Date.now() - began < 2000, `the abort ended the wait after ${Date.now() - began} ms`);
  assert.equal(tries.length, 1);
  // 500 ms: tries at 0 and 200 ms, and no time left for the next after 400 ms more: the last
  // UNAVAILABLE at once, not a wait to the deadline.
  tries = [];
  began = Date.now();
  await assert.rejects(client.submit({ queue: "render" }, { timeoutMs: 500 }), (e) => e instanceof ConnectError && e.code === Code.Unavailable);
  const took = Date.now() - began;
  assert.equal(tries.length, 2);
  assert.ok(took >= 190 && took < 500, `gave up after ${took} ms`);
});

test("submitMany keys each job of the batch and sends the same keys on every try", async () => {
  const client = new Conveyor(grpcTransport({ address: grpcAddress }), { backoffMs: 10 });
  plan = [Code.Unavailable];
  const jobs = await client.submitMany([{ queue: "render" }, { queue: "render", idempotencyKey: "mine" }, { queue: "render" }]);
  assert.equal(tries.length, 2);
  const [first, second] = keys();
  assert.deepEqual(first, second);
  assert.match(first[0], OWN_KEY);
  assert.match(first[2], OWN_KEY);
  assert.notEqual(first[0], first[2]);
  assert.equal(first[1], "mine");
  assert.deepEqual(jobs.map((j) => j.id), first.map((k) => made.get(k)!.id));
  // The results say created for the keys of its own, and the server's word for the caller's.
  plan = [Code.Unavailable];
  const answer = await submitJobs(client.rpc, [{ queue: "render" }, { queue: "render", idempotencyKey: "yours" }], { backoffMs: 10 });
  assert.deepEqual(answer.results.map((r) => r.created), [true, false]);
});

test("the browser client's submitJob helper keys and tries again the same way, over gRPC-Web", async () => {
  const page = jobService(webAddress);
  plan = [Code.Unavailable, Code.Unavailable];
  const answer = await submitFromPage(page, { queue: "render", tier: 1, onSuccess: [{ queue: "upload" }] }, { backoffMs: 10 });
  assert.equal(tries.length, 3);
  const [key] = keys()[0];
  assert.match(key, OWN_KEY);
  assert.deepEqual(keys(), [[key], [key], [key]]);
  assert.deepEqual(tries.map((t) => t[0].onSuccess[0].idempotencyKey), ["", "", ""]);
  assert.deepEqual([answer.created, answer.job?.id], [true, made.get(key)!.id]);
  tries = [];
  plan = [Code.InvalidArgument];
  await assert.rejects(submitFromPage(page, { queue: "render", tier: 1 }), (e) => e instanceof ConnectError && e.code === Code.InvalidArgument);
  assert.equal(tries.length, 1);
});
