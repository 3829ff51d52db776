#!/usr/bin/env node
// `npm run prepare`: compiles src/ into dist/src/ (the package's entry point), so that a plain
// install works with no manual build. npm runs it on `npm install` / `npm ci` here, on
// `npm pack`, and on `npm install /path/to/clients/typescript` from another project.
//
// That last one links this directory into the other project without installing our
// devDependencies, so the compiler may be missing: then we install them here first, from
// package-lock.json (`npm ci --ignore-scripts`, taking the npm cache when it has them), into
// this directory's own node_modules/. Plain Node, no dependencies.

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function compiler() {
  try {
    return createRequire(path.join(here, "package.json")).resolve("typescript/bin/tsc");
  } catch {
    return null;
  }
}

function run(command, args) {
  // Their output goes to stderr: stdout may be what our caller reads (`npm pack --json`).
  const done = spawnSync(command, args, { cwd: here, stdio: ["ignore", 2, 2] });
  if (done.error) throw done.error;
  if (done.status !== 0) {
    console.error(`sidecar-client: \`${[command, ...args].join(" ")}\` failed (exit ${done.status ?? done.signal})`);
    process.exit(done.status || 1);
  }
}

let tsc = compiler();
if (tsc === null && !existsSync(path.join(here, "package-lock.json"))) {
  // A packed copy (npm never packs the lockfile): it ships dist/src already.
  if (existsSync(path.join(here, "dist", "src", "index.js"))) process.exit(0);
  console.error("sidecar-client: neither typescript nor a built dist/src is here; install from a clone or a packed tarball");
  process.exit(1);
}
if (tsc === null) {
  // npm is installing into this very directory (`npm ci --omit=dev` here, say): installing
  // into the tree npm is busy with would fight it. (`npm pack` here is fine.)
  const installingHere = ["install", "ci", "update"].includes(process.env.npm_command ?? "");
  if (installingHere && path.resolve(process.env.INIT_CWD ?? "") === here) {
    console.error("sidecar-client: typescript is missing; run `npm ci` here (devDependencies included) first");
    process.exit(1);
  }
  console.error("sidecar-client: installing the build's devDependencies (typescript, @types/node) in " + here);
  const npm = process.env.npm_execpath; // the npm that runs us, when it does
  const [command, prefix] = npm && existsSync(npm) ? [process.execPath, [npm]] : ["npm", []];
  run(command, [
    ...prefix,
    "ci",
    "--prefix", here, // never the caller's project, whatever npm_config_prefix says
    "--include=dev",
    "--ignore-scripts", // no prepare inside prepare
    "--no-global",
    "--prefer-offline",
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
  ]);
  tsc = compiler();
  if (tsc === null) {
    console.error("sidecar-client: typescript is still missing after `npm ci`");
    process.exit(1);
  }
}
run(process.execPath, [tsc, "-p", path.join(here, "tsconfig.build.json")]);
