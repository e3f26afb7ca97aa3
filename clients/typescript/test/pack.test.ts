// The npm package as a user gets it. test/run.mjs packed it (`npm pack`, whose prepack makes a
// clean build) and installed the tarball into the scratch project these tests run from; what
// node_modules/@conveyor/client holds is what the tarball holds.

import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { PACKAGE, ROOT } from "./server.js";

const SCRATCH = join(import.meta.dirname, "..");
const INSTALLED = join(SCRATCH, "node_modules", "@conveyor", "client");
const installed: {
  main: string;
  types: string;
  exports: Record<string, unknown>;
  [field: string]: unknown;
} = JSON.parse(readFileSync(join(INSTALLED, "package.json"), "utf8"));

/** Every file under `dir`, relative to it, with `/` separators. */
function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)).split(sep).join("/"))
    .sort();
}

/** The string leaves of an exports map: every file it can resolve to. */
function targets(map: unknown): string[] {
  if (typeof map === "string") return [map];
  if (map && typeof map === "object") return Object.values(map).flatMap(targets);
  return [];
}

test("the tarball holds the library, its README and package.json, and no tests", () => {
  const shipped = files(INSTALLED);
  for (const file of shipped) {
    assert.ok(/^(package\.json|README\.md|LICENSE)$|^dist\/.+\.(js|d\.ts)$/.test(file), `${file} is shipped`);
    assert.ok(!/(^|\/)(test|tests|__tests__)\/|\.test\./.test(file), `${file} is a test`);
  }
  assert.ok(shipped.includes("README.md"));
  // dist is exactly src compiled: nothing stale from an earlier build, nothing missing.
  const sources = files(join(PACKAGE, "src")).filter((f) => f.endsWith(".ts")).map((f) => f.slice(0, -3));
  const built = shipped.filter((f) => f.startsWith("dist/"));
  const expected = sources.flatMap((s) => [`dist/${s}.js`, `dist/${s}.d.ts`]).sort();
  assert.deepEqual(built, expected);
});

test("every exports, main and types target is in the tarball, and each entry point has types", () => {
  const named = [installed.main, installed.types, ...targets(installed.exports)];
  for (const target of named) assert.ok(existsSync(join(INSTALLED, target)), `${target} (package.json) is not in the tarball`);
  for (const [subpath, entry] of Object.entries(installed.exports)) {
    if (subpath === "./package.json") continue;
    const types = (entry as { types?: string }).types;
    assert.ok(types?.endsWith(".d.ts"), `exports["${subpath}"] names its types`);
  }
});

test("the tests import the installed package by name, not the repository's copy", async () => {
  for (const [name, want] of [
    ["@conveyor/client", ["Conveyor", "Worker", "Fatal", "grpcTransport", "JobState"]],
    ["@conveyor/client/web", ["jobService", "JobState"]],
  ] as const) {
    const file = fileURLToPath(import.meta.resolve(name));
    assert.ok(file.startsWith(INSTALLED + sep), `${name} resolves to ${file}`);
    assert.ok(!file.startsWith(PACKAGE + sep), `${name} resolves into the repository: ${file}`);
    const module = await import(name);
    for (const key of want) assert.ok(key in module, `${name} exports ${key}`);
  }
  // Nothing above the scratch project lends it packages: the tarball's dependencies are the ones
  // npm installed for it.
  for (let dir = dirname(SCRATCH); dir !== dirname(dir); dir = dirname(dir)) {
    assert.ok(!existsSync(join(dir, "node_modules")), `${dir}/node_modules is visible to the tests`);
  }
});

test("package.json says what an npm user looks for", () => {
  assert.equal(installed.license, "Apache-2.0");
  assert.match(readFileSync(join(ROOT, "LICENSE"), "utf8"), /Apache License\s+Version 2\.0/, "the repository's LICENSE");
  assert.deepEqual(installed.repository, {
    type: "git",
    url: "git+https://github.com/conveyor-dev/conveyor.git",
    directory: "clients/typescript",
  });
  assert.match(String(installed.homepage), /^https:\/\/github\.com\/conveyor-dev\/conveyor\b/);
  assert.ok(Array.isArray(installed.keywords) && installed.keywords.length > 0, "keywords");
  assert.match(String((installed.engines as { node?: string } | undefined)?.node), /^>=\d+/, "engines.node");
});
