// Builds the dashboard into dist/ (or the directory given): index.html and app.css as written,
// app.js as one minified ESM bundle of src/main.ts with the package's own client code. The
// server embeds dist/ at compile time, so dist/ is committed; the same sources and esbuild
// version always give the same bytes (the tests rebuild and compare).
//
//   node dashboard/build.mjs [outdir]

import { copyFileSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";

import { build } from "esbuild";

const here = import.meta.dirname;
const out = resolve(process.argv[2] ?? join(here, "dist"));
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  // Paths in the output would make it depend on where the repository is checked out.
  sourcemap: false,
  legalComments: "eof",
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
copyFileSync(join(here, "app.css"), join(out, "app.css"));
