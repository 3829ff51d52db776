// Starts a real sidecar daemon for the tests: `${SIDECAR_PYTHON:-python3} -m sidecar serve`
// on a fresh temporary data dir and socket, ready once its stderr (structlog JSON, one object
// per line) says `daemon.ready`. No sleeps: every wait is for a condition, and bounded.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";

/** clients/typescript (this file runs from dist/test/). */
export const PACKAGE_ROOT = path.resolve(fileURLToPath(new URL(".", import.meta.url)), "..", "..");
/** The repository (so `python3 -m sidecar` finds the package without an install). */
export const REPO_ROOT = path.resolve(PACKAGE_ROOT, "..", "..");

const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Daemon {
  readonly socket: string;
  readonly dir: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Resolves when the process has exited. */
  readonly exited: Promise<Exit>;
  /** The daemon's stderr so far (the latest lines). */
  stderr(): string;
  /** SIGSTOP, and wait until the kernel shows it stopped. */
  pause(): Promise<void>;
  /** SIGCONT. */
  resume(): void;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<Exit>;
  /** SIGTERM (after SIGCONT, in case it was paused) and wait for the exit (bounded). */
  stop(): Promise<Exit>;
  /** Remove the temporary directory (after the process is gone). */
  cleanup(): Promise<void>;
}

const INHERITED_SETTINGS = [
  "SIDECAR_CONFIG",
  "SIDECAR_DATA_DIR",
  "SIDECAR_SOCKET",
  "NOTIFY_SOCKET",
  "LISTEN_FDS",
  "LISTEN_PID",
  "LISTEN_FDNAMES",
  "WATCHDOG_USEC",
  "WATCHDOG_PID",
];

export interface StartOptions {
  /** TOML for `--config`. */
  config?: string;
  /** The directory of an earlier daemon (stopped): start again on its data and socket. */
  dir?: string;
}

export async function startDaemon(options: StartOptions = {}): Promise<Daemon> {
  const dir = options.dir ?? (await mkdtemp(path.join(os.tmpdir(), "sidecar-ts-")));
  const socket = path.join(dir, "run", "s.sock");
  const args = ["-m", "sidecar", "serve", "--data-dir", path.join(dir, "data"), "--socket", socket];
  if (options.config !== undefined) {
    const file = path.join(dir, "sidecar.toml");
    await writeFile(file, options.config);
    args.push("--config", file);
  }
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: "1" };
  for (const key of INHERITED_SETTINGS) delete env[key];
  // A relative path names a file from here (the child runs in the repository root).
  const configured = process.env.SIDECAR_PYTHON || "python3";
  const python = configured.includes(path.sep) ? path.resolve(configured) : configured;
  const child = spawn(python, args, { cwd: REPO_ROOT, env, stdio: ["ignore", "ignore", "pipe"] });

  const lines: string[] = [];
  const exited = new Promise<Exit>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  const spawnError = new Promise<never>((_, reject) => {
    child.once("error", (err) => reject(new Error(`cannot run ${python}: ${err.message}`, { cause: err })));
  });
  spawnError.catch(() => {});

  const ready = new Promise<void>((resolve) => {
    // Read stderr for the whole life of the daemon, so its pipe never fills up.
    const rl = createInterface({ input: child.stderr! });
    rl.on("line", (line) => {
      lines.push(line);
      if (lines.length > 1000) lines.splice(0, lines.length - 1000);
      let record: unknown;
      try {
        record = JSON.parse(line);
      } catch {
        return; // not a structlog line (a traceback, say): kept for the report
      }
      if (record !== null && typeof record === "object" && (record as { event?: unknown }).event === "daemon.ready") {
        resolve();
      }
    });
  });

  const stderr = (): string => lines.join("\n");
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the daemon did not report daemon.ready within ${READY_TIMEOUT_MS} ms`)),
      READY_TIMEOUT_MS,
    );
  });
  // "close" comes after the exit and after stderr has been read to its end: the report is whole.
  const closed = new Promise<Exit>((resolve) => {
    child.once("close", (code, signal) => resolve({ code, signal }));
  });
  const died = closed.then((exit): never => {
    throw new Error(`the daemon exited before it was ready (code ${exit.code}, signal ${exit.signal})`);
  });
  try {
    await Promise.race([ready, timeout, died, spawnError]);
  } catch (err) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
    throw new Error(`${(err as Error).message}\n--- daemon stderr ---\n${stderr()}`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
  died.catch(() => {});

  const pid = child.pid!;
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const signal = (sig: NodeJS.Signals): void => {
    if (running()) process.kill(pid, sig);
  };

  let stopping: Promise<Exit> | undefined;
  const stop = async (): Promise<Exit> => {
    if (!running()) return exited;
    signal("SIGCONT");
    signal("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), STOP_TIMEOUT_MS);
    });
    const result = await Promise.race([exited, late]);
    clearTimeout(timer);
    if (result === "late") {
      signal("SIGKILL");
      await exited;
      throw new Error(`the daemon did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM\n${stderr()}`);
    }
    return result;
  };

  return {
    socket,
    dir,
    pid,
    child,
    exited,
    stderr,
    async pause() {
      signal("SIGSTOP");
      await waitForState(pid, (state) => state === "T" || state === "t");
    },
    resume() {
      signal("SIGCONT");
    },
    async kill() {
      signal("SIGKILL");
      return exited;
    },
    stop() {
      stopping ??= stop(); // once: a second SIGTERM would kill it mid-shutdown
      return stopping;
    },
    async cleanup() {
      if (running()) {
        signal("SIGKILL");
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Wait (bounded) until /proc shows the process in a state; a no-op where there is no /proc. */
async function waitForState(pid: number, wanted: (state: string) => boolean): Promise<void> {
  const file = `/proc/${pid}/stat`;
  if (!existsSync(file)) return;
  for (let i = 0; i < 1000; i++) {
    const stat = await readFile(file, "utf8");
    // "pid (comm) S ...": the state follows the last ')'.
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (wanted(state)) return;
    await delay(2);
  }
  throw new Error(`process ${pid} did not reach the expected state`);
}

/** Poll `check` until it returns true, at most `tries` times (a bounded wait for a condition). */
export async function eventually(check: () => Promise<boolean>, what: string, tries = 200): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await delay(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Close the client, stop the daemon (it must exit 0) and remove its directory: a test's `after`. */
export async function stopCleanly(daemon: Daemon | undefined, client?: { close(): Promise<void> }): Promise<void> {
  try {
    await client?.close();
    if (daemon) {
      const exit = await daemon.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, daemon.stderr());
    }
  } finally {
    await daemon?.cleanup();
  }
}
