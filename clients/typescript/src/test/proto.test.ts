// Proto hygiene: the protocol is `buf lint` clean (STANDARD, proto/buf.yaml), does not break the
// last release (`buf breaking` against proto/releases/), and src/gen is what `npm run generate`
// makes from today's proto files. buf comes from the npm registry.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";

const PACKAGE = resolve(import.meta.dirname, "..", "..");
const BUF = join(PACKAGE, "node_modules", ".bin", "buf");
const PROTO = resolve(PACKAGE, "..", "..", "proto");

test("the proto files are buf lint clean", () => {
  execFileSync(BUF, ["lint"], { cwd: PROTO, stdio: "pipe" });
});

test("the protocol does not break the last release", () => {
  const releases = readdirSync(join(PROTO, "releases"))
    .filter((f) => f.endsWith(".binpb"))
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  assert.ok(releases.length > 0, "proto/releases holds each release's image");
  const last = join(PROTO, "releases", releases[releases.length - 1]);
  execFileSync(BUF, ["breaking", "--against", last], { cwd: PROTO, stdio: "pipe" });
});

test("src/gen is current", () => {
  const out = mkdtempSync(join(tmpdir(), "conveyor-gen-"));
  const env = { ...process.env, PATH: `${join(PACKAGE, "node_modules", ".bin")}:${process.env.PATH}` };
  execFileSync(BUF, ["generate", PROTO, "--template", "buf.gen.yaml", "-o", out], { cwd: PACKAGE, env, stdio: "pipe" });
  const fresh = join(out, "src", "gen", "conveyor", "v1");
  for (const name of readdirSync(fresh)) {
    const kept = readFileSync(join(PACKAGE, "src", "gen", "conveyor", "v1", name), "utf8");
    assert.equal(readFileSync(join(fresh, name), "utf8"), kept, `src/gen/conveyor/v1/${name} is stale: npm run generate`);
  }
});
