// What the suites share: where the package's sources are, and a real server, `conveyor dev`
// (private Redis, SQLite and S3-compatible store) on a free port, from CONVEYOR_BIN (default: the
// workspace's debug build). Not a test file: `npm test` runs only *.test.js.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { Conveyor, grpcTransport } from "@conveyor/client";

// The tests run from a scratch project that installed the packed tarball (test/run.mjs), so
// they learn where the repository's copy is from the runner.
if (!process.env.CONVEYOR_TS_PACKAGE) throw new Error("run the tests with `npm test` (test/run.mjs)");
/** clients/typescript in the repository. */
export const PACKAGE = resolve(process.env.CONVEYOR_TS_PACKAGE);
export const ROOT = resolve(PACKAGE, "..", "..");

export interface DevServer {
  /** `http://127.0.0.1:<port>`: gRPC, gRPC-Web and the dashboard. */
  address: string;
  stop(): void;
}

export async function freePort(): Promise<number> {
  return new Promise((done) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const port = (probe.address() as { port: number }).port;
      probe.close(() => done(port));
    });
  });
}

/** Starts `conveyor dev` and returns once it answers ListQueues (30 s at most). */
export async function startDev(): Promise<DevServer> {
  const binary = process.env.CONVEYOR_BIN ?? join(ROOT, "target", "debug", "conveyor");
  const port = await freePort();
  const address = `http://127.0.0.1:${port}`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CONVEYOR_DATA_DIR: mkdtempSync(join(tmpdir(), "conveyor-ts-")),
  };
  for (const name of ["REDIS_URL", "DATABASE_URL", "CONVEYOR_S3_BUCKET", "CONVEYOR_KEY"]) delete env[name];
  const server: ChildProcess = spawn(binary, ["dev", "--listen", `127.0.0.1:${port}`], { env, stdio: "ignore" });
  // A suite ended early (Ctrl-C, test/run.mjs passing on a SIGTERM) takes its server along.
  process.once("exit", () => server.kill());
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(1));
  const client = new Conveyor(grpcTransport({ address }));
  for (let i = 0; ; i++) {
    try {
      await client.rpc.listQueues({});
      return { address, stop: () => server.kill() };
    } catch (e) {
      if (i > 300) {
        server.kill();
        throw e;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export const unique = (name: string) => `${name}-${Math.random().toString(36).slice(2, 10)}`;

/** A promise and what settles it. */
export function later<T = void>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `promise`, or a failure naming `what` after `ms`: a test that waits fails, not hangs. */
export async function within<T>(promise: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
