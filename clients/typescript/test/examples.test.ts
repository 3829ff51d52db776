// The example programs in examples/ run against a real daemon, as the README shows them.
import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";

import { type Client, connect } from "../src/index.js";
import { type Daemon, PACKAGE_ROOT, eventually, startDaemon, stopCleanly } from "./daemon.js";

interface Run {
  child: ChildProcessWithoutNullStreams;
  /** Resolves with the first stdout line that matches. */
  line(pattern: RegExp): Promise<string>;
  /** Resolves when the process has exited and its output has been read. */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }>;
}

function start(script: string, args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, [path.join(PACKAGE_ROOT, "examples", script), ...args], {
    cwd: PACKAGE_ROOT,
    env: { ...process.env, ...env },
  });
  let out = "";
  let err = "";
  const waiting: { pattern: RegExp; resolve(line: string): void }[] = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    out += `${line}\n`;
    for (const w of waiting.filter((w) => w.pattern.test(line))) {
      waiting.splice(waiting.indexOf(w), 1);
      w.resolve(line);
    }
  });
  child.stderr.on("data", (d) => (err += d));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }>(
    (resolve, reject) => {
      child.on("error", reject);
      child.on("close", (code, signal) => resolve({ code, signal, out, err }));
    },
  );
  const line = (pattern: RegExp): Promise<string> => {
    const seen = out.split("\n").find((l) => pattern.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return Promise.race([
      new Promise<string>((resolve) => waiting.push({ pattern, resolve })),
      done.then(({ code, out, err }): never => {
        throw new Error(`${script} exited (${code}) before printing ${pattern}\n${out}${err}`);
      }),
    ]);
  };
  return { child, line, done };
}

describe("examples", { timeout: 60_000 }, () => {
  let daemon: Daemon;
  let client: Client;

  before(async () => {
    daemon = await startDaemon({ config: "[controller]\nmin_gap_s = 0.1\n" });
    client = await connect(daemon.socket);
  });

  after(() => stopCleanly(daemon, client));

  /** Wait until the narrator has subscribed, so the decision reaches it live. */
  async function subscribed(count: number): Promise<void> {
    await eventually(async () => (await client.call("sys.stats")).subscriptions >= count, "the narrator", 1000);
  }

  it("the agent works and the narrator tells the user in plain words", async () => {
    const narrator = start("narrator.mjs", ["ts-ex", daemon.socket, "1"]);
    await subscribed(1);
    const agent = await start("agent.mjs", ["ts-ex", daemon.socket, "3"]).done;
    assert.equal(agent.code, 0, agent.err);
    const [, taskId] = /^(ts-coder-[0-9a-f]{8}) done at version 3$/m.exec(agent.out) ?? [];
    assert.ok(taskId, agent.out);
    const spoke = await narrator.done;
    assert.equal(spoke.code, 0, spoke.err);
    const { events } = await client.call("log.query", { conversation_id: "ts-ex", limit: 100 });
    assert.equal(events.filter((e) => e.type === "agent.progress").length, 3);
    const said = events.filter((e) => e.type === "narrator.message");
    assert.equal(said.length, 1);
    assert.equal(said[0]!.visibility, "user");
    // A sentence a person would want to read, not the decision's JSON.
    assert.equal(said[0]!.data.text, `The example task ${taskId} is done.`);
    assert.match(spoke.out, new RegExp(`^spoke at seq ${said[0]!.seq}: The example task ${taskId} is done\\.$`, "m"));
  });

  it("with no arguments the agent works in 'example' on the default socket, and finishes", async () => {
    const agent = await start("agent.mjs", [], { SIDECAR_SOCKET: daemon.socket }).done;
    assert.equal(agent.code, 0, agent.err);
    const [, taskId] = /^(ts-coder-[0-9a-f]{8}) running in conversation example$/m.exec(agent.out) ?? [];
    assert.ok(taskId, agent.out);
    const task = await client.call("tasks.get", { id: taskId! });
    assert.equal(task.status, "done");
    assert.equal(task.conversation_id, "example");
    const open = (await client.call("tasks.list_active", {})).tasks.filter((t) => t.owner === "ts-coder");
    assert.deepEqual(open, []);
  });

  it("Ctrl-C fails the agent's task with the reason, and the narrator says so", async () => {
    const narrator = start("narrator.mjs", ["ts-int", daemon.socket, "1"]);
    await subscribed(1);
    const agent = start("agent.mjs", ["ts-int", daemon.socket, "100000", "20"]);
    const running = await agent.line(/ running in conversation ts-int$/);
    const taskId = running.split(" ")[0]!;
    agent.child.kill("SIGINT");
    const stopped = await agent.done;
    assert.equal(stopped.code, 130, stopped.err);
    assert.match(stopped.err, new RegExp(`${taskId} failed at version \\d+: stopped by SIGINT`));
    const task = await client.call("tasks.get", { id: taskId });
    assert.equal(task.status, "failed");
    assert.deepEqual(task.outputs, { error: "stopped by SIGINT" });
    const spoke = await narrator.done;
    assert.equal(spoke.code, 0, spoke.err);
    assert.match(spoke.out, new RegExp(`: The example task ${taskId} failed: stopped by SIGINT$`, "m"));
  });

  it("the runAgent worker finishes tasks; on SIGTERM it gives back the one it holds and exits 0", async () => {
    const type = "ts.ex.runtime";
    const worker = start("agent-runtime.mjs", [type, daemon.socket]);
    const agentId = `ts-worker-${worker.child.pid}`;
    await worker.line(new RegExp(`^${agentId} claiming ${type} tasks, 1 at a time$`));

    // A short task runs to done, with its progress on the activity rail.
    await client.call("tasks.create", {
      id: "ts-ex-rt-short", type, conversation_id: "ts-ex-rt", inputs: { steps: 2, step_ms: 10 },
    });
    await eventually(async () => (await client.call("tasks.get", { id: "ts-ex-rt-short" })).status === "done", "done", 1000);
    const short = await client.call("tasks.get", { id: "ts-ex-rt-short" });
    assert.deepEqual(short.outputs, { counted: 2 });
    assert.equal(short.owner, agentId);
    const { events } = await client.call("log.query", { conversation_id: "ts-ex-rt", types: ["agent.progress"] });
    assert.deepEqual(events.map((e) => [e.agent_id, e.task_id, e.visibility, e.data.msg]), [
      [agentId, "ts-ex-rt-short", "status", "step 1 of 2"],
      [agentId, "ts-ex-rt-short", "status", "step 2 of 2"],
    ]);

    // A long one is held when SIGTERM comes: it goes straight back to pending.
    await client.call("tasks.create", { id: "ts-ex-rt-long", type, inputs: { steps: 100_000, step_ms: 50 } });
    await worker.line(/^ts-ex-rt-long claimed \(attempt 1\)$/);
    const held = await client.call("tasks.get", { id: "ts-ex-rt-long" });
    assert.equal(held.status, "running");
    assert.equal(held.lease_owner, agentId);
    worker.child.kill("SIGTERM");
    const stopped = await worker.done;
    assert.deepEqual([stopped.code, stopped.signal], [0, null], stopped.err);
    assert.match(stopped.out, /^SIGTERM: releasing held tasks$/m);
    assert.match(stopped.out, new RegExp(`^${agentId} stopped: claimed 2, done 1, failed 0, released 1, dropped 0$`, "m"));
    const released = await client.call("tasks.get", { id: "ts-ex-rt-long" });
    assert.equal(released.status, "pending");
    assert.equal(released.lease_owner, null);
    assert.equal(released.attempts, 0);
  });

  it("--help prints the usage and creates nothing", async () => {
    const before = (await client.call("tasks.list_active", {})).tasks.length;
    for (const script of ["agent.mjs", "narrator.mjs", "agent-runtime.mjs"]) {
      const run = await start(script, ["--help"], { SIDECAR_SOCKET: path.join(daemon.dir, "nothing-here.sock") }).done;
      assert.equal(run.code, 0, run.err);
      assert.match(run.out, new RegExp(`^usage: node examples/${script} \\[(CONVERSATION|TYPE)\\]`));
    }
    assert.equal((await client.call("tasks.list_active", {})).tasks.length, before);
  });
});
