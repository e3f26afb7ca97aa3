// A real server for a test suite: `conveyor dev` (private Redis, SQLite and S3-compatible store)
// on a free port, from CONVEYOR_BIN (default: the workspace's debug build). Not a test file:
// `npm test` runs only dist/test/*.test.js.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { Conveyor, grpcTransport } from "../index.js";

export const ROOT = resolve(import.meta.dirname, "..", "..", "..", "..");

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
