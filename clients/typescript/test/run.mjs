// `npm test`: the suites run as a user's code. The package is packed (`npm pack`, whose prepack
// makes a clean build), the tarball installed into a scratch project in a temp dir, and the
// tests compiled and run there, so `@conveyor/client` and `@conveyor/client/web` are what npm
// installs: the tarball's files, exports, types and declared dependencies. TMPDIR points into
// the scratch project, which is removed at the end with everything the tests (and the servers
// and browsers they start) wrote.
//
//   node test/run.mjs [node --test options, e.g. --test-name-pattern=dashboard]

import { spawn, execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const PACKAGE = resolve(import.meta.dirname, "..");
const MODULES = join(PACKAGE, "node_modules");
const scratch = mkdtempSync(join(tmpdir(), "conveyor-ts-test-"));
const modules = join(scratch, "node_modules");
const tests = join(scratch, "test");

// Ctrl-C or a harness's SIGTERM ends the suites (a step gets Ctrl-C from the terminal itself),
// and this script lives on to remove the scratch project.
let child;
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => child?.kill(signal));

/** Runs a step; its stdout (npm's chatter, tsc's errors) shows only when it fails. */
function step(program, args, cwd) {
  try {
    execFileSync(program, args, { cwd, stdio: ["ignore", "pipe", "inherit"] });
  } catch (e) {
    process.stdout.write(e.stdout ?? "");
    throw new Error(`test/run.mjs: ${[program, ...args].join(" ")} failed`);
  }
}

/** node --test on the compiled suites; resolves to its exit status. */
function suites() {
  const files = readdirSync(tests).filter((f) => f.endsWith(".test.js")).map((f) => join(tests, f));
  const env = { ...process.env, CONVEYOR_TS_PACKAGE: PACKAGE, TMPDIR: join(scratch, "tmp") };
  mkdirSync(env.TMPDIR);
  child = spawn(process.execPath, ["--test", ...process.argv.slice(2), ...files], { env, stdio: "inherit" });
  return new Promise((done) => child.on("exit", (code) => done(code ?? 1)));
}

try {
  step("npm", ["pack", "--pack-destination", scratch, "--loglevel=error"], PACKAGE);
  const tarball = readdirSync(scratch).find((f) => f.endsWith(".tgz"));

  // The tarball's dependencies are copied from this package's node_modules (what the lock file
  // installs without dev), so npm fetches nothing; its cache is a fresh, empty one, so a
  // dependency the tarball declares and the lock lacks fails the install instead of coming from
  // the network or the machine's cache.
  const lock = JSON.parse(readFileSync(join(PACKAGE, "package-lock.json"), "utf8"));
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path === "" || entry.dev || entry.devOptional) continue;
    if (entry.optional && !existsSync(join(PACKAGE, path))) continue; // another platform's
    cpSync(join(PACKAGE, path), join(scratch, path), { recursive: true });
  }
  writeFileSync(join(scratch, "package.json"), JSON.stringify({ name: "conveyor-user", private: true, type: "module" }));
  step("npm", ["install", "--offline", "--cache", join(scratch, "npm-cache"), "--no-package-lock",
    "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", `./${tarball}`], scratch);
  // The tests' own tools, which a user would not install: Node's types and the browser driver.
  symlinkSync(join(MODULES, "@types"), join(modules, "@types"));
  symlinkSync(join(MODULES, "playwright-core"), join(modules, "playwright-core"));

  mkdirSync(tests);
  for (const name of readdirSync(join(PACKAGE, "test"))) {
    if (name.endsWith(".ts") || name === "tsconfig.json") cpSync(join(PACKAGE, "test", name), join(tests, name));
  }
  step(process.execPath, [join(MODULES, "typescript", "bin", "tsc"), "-p", tests, "--noEmit", "false"], scratch);

  process.exitCode = await suites();
} catch (e) {
  console.error(e.message);
  process.exitCode = 1;
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
