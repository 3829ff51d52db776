// Another project installs the client as a user would, with no manual build, and uses it
// against a real daemon: `npm install /path/to/clients/typescript` (npm links the folder and
// runs our `prepare`, which fetches the build's devDependencies if they are missing and
// compiles), and `npm pack` + installing the tarball (dist/ is in it; no script runs).
//
// Each works on a copy of the package's own files in a temporary directory, as a fresh clone
// would have them (no node_modules/, no dist/), so the checkout is never touched.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { existsSync, lstatSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";

import { type Daemon, PACKAGE_ROOT, startDaemon, stopCleanly } from "./daemon.js";

const run = promisify(execFile);
const NPM_TIMEOUT_MS = 180_000;

/** The package's own files, as a fresh clone has them (no node_modules/, no dist/). */
const PACKAGE_FILES = [
  ".gitignore", "package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json", "README.md",
  "src", "scripts", "examples",
];

/** A copy of the package at `dir`/clients/typescript, as a fresh clone has it. */
async function freshClone(dir: string): Promise<string> {
  const pkg = path.join(dir, "clients", "typescript");
  await mkdir(pkg, { recursive: true });
  for (const entry of PACKAGE_FILES) await cp(path.join(PACKAGE_ROOT, entry), path.join(pkg, entry), { recursive: true });
  return pkg;
}

/** npm as a user runs it: none of the settings `npm test` hands its children. */
function npmEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key) && key !== "INIT_CWD") env[key] = value;
  }
  return env;
}

async function npm(cwd: string, ...args: string[]): Promise<string> {
  try {
    const { stdout } = await run("npm", [...args, "--no-audit", "--no-fund"], { cwd, env: npmEnv(), timeout: NPM_TIMEOUT_MS });
    return stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`npm ${args.join(" ")} failed in ${cwd}: ${e.message}\n${e.stdout ?? ""}${e.stderr ?? ""}`);
  }
}

/** A new project that depends on nothing yet. */
async function project(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, "package.json"), JSON.stringify({ name: path.basename(dir), private: true, type: "module" }));
  return dir;
}

// What the other project's code does: the package by name, connect, append, read back, subscribe.
const APP = `
import { connect, RpcError } from "sidecar-client";

const sidecar = await connect(process.argv[2]);
const ack = await sidecar.call("log.append", { conversation_id: "installed", type: "app.started", data: { from: process.argv[3] } });
const { events } = await sidecar.call("log.tail", { conversation_id: "installed", limit: 1 });
const seen = [];
for await (const event of sidecar.subscribe({ conversation_id: "installed", from_seq: 1 })) {
  seen.push(event.seq);
  if (event.seq >= ack.seq) break;
}
let refused = null;
try {
  await sidecar.call("log.append", { conversation_id: "installed", type: "x", visibility: "user" });
} catch (err) {
  refused = err instanceof RpcError ? err.code : String(err);
}
await sidecar.close();
console.log(JSON.stringify({ ack, tail: events[0], seen, refused }));
`;

describe("installed into another project", { timeout: 300_000 }, () => {
  let daemon: Daemon;
  let tmp: string;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "sidecar-ts-install-"));
    daemon = await startDaemon();
  });

  after(async () => {
    await stopCleanly(daemon);
    await rm(tmp, { recursive: true, force: true });
  });

  /** Runs APP in `dir`; returns what it printed. */
  async function app(dir: string, label: string): Promise<{ ack: { seq: number; id: string }; tail: { id: string; data: unknown }; seen: number[]; refused: unknown }> {
    await writeFile(path.join(dir, "app.mjs"), APP);
    const { stdout } = await run(process.execPath, ["app.mjs", daemon.socket, label], { cwd: dir, timeout: 30_000 });
    return JSON.parse(stdout);
  }

  it("npm install /path/to/clients/typescript builds it, and the app imports it by name", async () => {
    const pkg = await freshClone(path.join(tmp, "clone-path"));
    const dir = await project(path.join(tmp, "app-path"));
    await npm(dir, "install", pkg);
    assert.ok(lstatSync(path.join(dir, "node_modules", "sidecar-client")).isSymbolicLink());
    assert.ok(existsSync(path.join(pkg, "dist", "src", "index.js")), "prepare compiled the client");
    assert.ok(existsSync(path.join(pkg, "dist", "src", "index.d.ts")), "with its types");

    const out = await app(dir, "path");
    assert.equal(out.tail.id, out.ack.id);
    assert.deepEqual(out.tail.data, { from: "path" });
    assert.equal(out.seen.at(-1), out.ack.seq);
    assert.deepEqual(out.seen, Array.from({ length: out.ack.seq }, (_, i) => i + 1)); // from seq 1, no gap
    assert.equal(out.refused, -32003); // errors are RpcError, with the daemon's code

    // The shipped examples run from the installed package too.
    const { stdout } = await run(
      process.execPath,
      [path.join(dir, "node_modules", "sidecar-client", "examples", "agent.mjs"), "installed", daemon.socket, "2"],
      { cwd: dir, timeout: 30_000 },
    );
    assert.match(stdout, /^ts-coder-[0-9a-f]{8} done at version 3$/m);
  });

  it("npm pack in a fresh clone ships dist/, and the tarball installs offline with no script", async () => {
    const pkg = await freshClone(path.join(tmp, "clone-pack"));
    const [packed] = JSON.parse(await npm(pkg, "pack", "--json", "--pack-destination", tmp)) as {
      filename: string;
      files: { path: string }[];
    }[];
    const files = packed!.files.map((f) => f.path);
    for (const file of ["dist/src/index.js", "dist/src/index.d.ts", "dist/src/client.js", "examples/agent.mjs", "package.json"]) {
      assert.ok(files.includes(file), `${file} is in the tarball: ${files.join(" ")}`);
    }
    assert.ok(!files.some((f) => f.startsWith("dist/test/") || f.startsWith("node_modules/")), files.join(" "));

    const dir = await project(path.join(tmp, "app-tarball"));
    await npm(dir, "install", "--offline", path.join(tmp, packed!.filename));
    const installed = path.join(dir, "node_modules", "sidecar-client");
    assert.ok(!lstatSync(installed).isSymbolicLink());
    assert.ok(!(await readdir(installed)).includes("node_modules"), "no build ran in the installed copy");
    const out = await app(dir, "tarball");
    assert.equal(out.tail.id, out.ack.id);
    assert.deepEqual(out.tail.data, { from: "tarball" });
    assert.equal(out.seen.at(-1), out.ack.seq);
  });
});
