// runAgent (CONTRACT.md section 13) against a real daemon: claims, outcomes, progress, the
// types filter, lease renewal, lost leases, the stop, and a daemon that goes away and comes
// back. Every wait is for a condition, polled, with a deadline.
import assert from "node:assert/strict";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";

import {
  type AgentHandler,
  type AgentOptions,
  type AgentSummary,
  type Client,
  DaemonUnavailableError,
  LeaseLostError,
  type Task,
  connect,
  runAgent,
} from "../src/index.js";
import { type Daemon, startDaemon, stopCleanly } from "./daemon.js";

/** Poll `check` every 20 ms until it returns true; fail after `deadlineMs`. */
async function until(check: () => Promise<boolean> | boolean, what: string, deadlineMs = 10_000): Promise<void> {
  const end = performance.now() + deadlineMs;
  for (;;) {
    if (await check()) return;
    if (performance.now() > end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await delay(20);
  }
}

/** A promise to settle from outside. */
function deferred<T = void>(): { promise: Promise<T>; resolve(value: T): void; reject(err: unknown): void } {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A promise, or a failure after `ms` (so a test never hangs on a handler that never ran). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

interface Running {
  stop: AbortController;
  done: Promise<AgentSummary>;
  /** Abort, and the summary it resolves with (bounded). */
  halt(reason?: unknown): Promise<AgentSummary>;
}

/** The agents a test started: stopped after it, whatever happened (or they would outlive it). */
const agents = new Set<Running>();

async function stopAgents(): Promise<void> {
  const all = [...agents];
  agents.clear();
  for (const agent of all) agent.stop.abort(new Error("the test is over"));
  await Promise.allSettled(all.map((agent) => agent.done));
}

function startAgent(options: Omit<AgentOptions, "signal">): Running {
  const stop = new AbortController();
  const done = runAgent({ ...options, signal: stop.signal });
  done.catch(() => {}); // judged by the test
  const running: Running = {
    stop,
    done,
    halt: (reason?: unknown) => {
      stop.abort(reason);
      return within(done, 7_000, "runAgent to resolve");
    },
  };
  agents.add(running);
  return running;
}

describe("runAgent", { timeout: 60_000 }, () => {
  let daemon: Daemon;
  let client: Client;

  before(async () => {
    daemon = await startDaemon();
    client = await connect(daemon.socket);
  });

  afterEach(stopAgents);
  after(() => stopCleanly(daemon, client));

  const start = (options: Omit<AgentOptions, "signal">): Running => startAgent({ socketPath: daemon.socket, ...options });
  const get = (id: string): Promise<Task> => client.call("tasks.get", { id });
  const create = (id: string, type: string, extra: Record<string, unknown> = {}): Promise<Task> =>
    client.call("tasks.create", { id, type, ...extra });
  const statusIs = (id: string, status: Task["status"]) => async () => (await get(id)).status === status;

  it("runs several tasks at once (concurrency 2) to done with outputs, and logs their progress", async () => {
    const type = "ts.rt.conc";
    const ids = ["rt-conc-0", "rt-conc-1", "rt-conc-2", "rt-conc-3", "rt-conc-4"];
    for (const [n, id] of ids.entries()) {
      // The last has no conversation: its progress goes to `system`.
      await create(id, type, { inputs: { n }, ...(n < 4 ? { conversation_id: "ts-rt-conc" } : {}) });
    }
    let active = 0;
    let most = 0;
    const seen: string[] = [];
    const twoAtOnce = deferred();
    const handler: AgentHandler = async (task, ctx) => {
      active += 1;
      most = Math.max(most, active);
      seen.push(task.id);
      assert.equal(ctx.task.id, task.id);
      assert.equal(ctx.agentId, "ts-rt-conc-agent");
      if (active === 2) twoAtOnce.resolve();
      await ctx.progress({ n: task.inputs?.n, step: "started" });
      await twoAtOnce.promise; // the first waits for a second to be running beside it
      active -= 1;
      return { doubled: (task.inputs!.n as number) * 2 };
    };
    const agent = start({ agentId: "ts-rt-conc-agent", handler, types: [type], concurrency: 2 });
    for (const id of ids) await until(statusIs(id, "done"), `${id} done`);
    const summary = await agent.halt();

    assert.deepEqual(summary, { claimed: 5, done: 5, failed: 0, released: 0, dropped: 0 });
    assert.equal(most, 2, "two handlers ran at once, never more");
    assert.deepEqual([...seen].sort(), ids);
    for (const [n, id] of ids.entries()) {
      const task = await get(id);
      assert.deepEqual(task.outputs, { doubled: n * 2 });
      assert.equal(task.owner, "ts-rt-conc-agent");
      assert.equal(task.lease_owner, null);
      assert.equal(task.lease_expires_at, null);
      assert.equal(task.attempts, 1);
    }

    const { events } = await client.call("log.query", { conversation_id: "ts-rt-conc", types: ["agent.progress"] });
    assert.deepEqual(events.map((e) => e.task_id).sort(), ids.slice(0, 4));
    for (const e of events) {
      assert.equal(e.visibility, "status");
      assert.equal(e.agent_id, "ts-rt-conc-agent");
      assert.deepEqual(e.data, { n: ids.indexOf(e.task_id!), step: "started" });
    }
    const system = await client.call("log.query", { conversation_id: "system", types: ["agent.progress"] });
    assert.deepEqual(
      system.events.filter((e) => e.task_id === "rt-conc-4").map((e) => [e.agent_id, e.visibility, e.data]),
      [["ts-rt-conc-agent", "status", { n: 4, step: "started" }]],
    );
  });

  it("a handler that throws or rejects fails its task with outputs.error", async () => {
    const type = "ts.rt.fail";
    const cases: Record<string, { handler: AgentHandler; error: string }> = {
      "rt-fail-sync": {
        handler: () => {
          throw new Error("boom, at once");
        },
        error: "boom, at once",
      },
      "rt-fail-async": {
        handler: async () => {
          await delay(5);
          throw new TypeError("boom, later");
        },
        error: "boom, later",
      },
      "rt-fail-string": {
        handler: () => Promise.reject("just a string"),
        error: "just a string",
      },
      "rt-fail-number": {
        handler: (() => 42) as unknown as AgentHandler,
        error: "the handler returned a number; outputs must be an object",
      },
    };
    for (const id of Object.keys(cases)) await create(id, type);
    const agent = start({
      agentId: "ts-rt-fail-agent",
      types: [type],
      handler: (task, ctx) => cases[task.id]!.handler(task, ctx),
    });
    for (const id of Object.keys(cases)) await until(statusIs(id, "failed"), `${id} failed`);
    const summary = await agent.halt();
    assert.deepEqual(summary, { claimed: 4, done: 0, failed: 4, released: 0, dropped: 0 });
    for (const [id, { error }] of Object.entries(cases)) {
      const task = await get(id);
      assert.deepEqual(task.outputs, { error }, id);
      assert.equal(task.lease_owner, null);
    }
  });

  it("claims only the given types", async () => {
    // The other type's task is the oldest: a claim that ignored the filter would take it first.
    await create("rt-types-b", "ts.rt.types-b");
    await create("rt-types-a", "ts.rt.types-a");
    await create("rt-types-c", "ts.rt.types-c");
    const seen: string[] = [];
    const agent = start({
      agentId: "ts-rt-types-agent",
      types: ["ts.rt.types-a", "ts.rt.types-c"],
      handler: (task) => {
        seen.push(task.id);
        return { type: task.type };
      },
    });
    await until(statusIs("rt-types-a", "done"), "rt-types-a done");
    await until(statusIs("rt-types-c", "done"), "rt-types-c done");
    const summary = await agent.halt();
    assert.deepEqual(seen, ["rt-types-a", "rt-types-c"]);
    assert.equal(summary.claimed, 2);
    assert.deepEqual((await get("rt-types-a")).outputs, { type: "ts.rt.types-a" });
    const other = await get("rt-types-b");
    assert.equal(other.status, "pending");
    assert.equal(other.attempts, 0);
    assert.equal(other.lease_owner, null);
  });

  it("renewals keep a task held past leaseS while a slow handler runs", async () => {
    await create("rt-slow", "ts.rt.slow", { conversation_id: "ts-rt-slow" });
    const started = deferred<Task>();
    const finish = deferred();
    const agent = start({
      agentId: "ts-rt-slow-agent",
      types: ["ts.rt.slow"],
      leaseS: 1,
      handler: async (task) => {
        started.resolve(task);
        await finish.promise;
        return { slow: true };
      },
    });
    const claimed = await within(started.promise, 10_000, "the handler to start");
    const claimedAt = Date.parse(claimed.claimed_at!);
    assert.equal(Date.parse(claimed.lease_expires_at!), claimedAt + 1000);
    // Poll the daemon until 2.5 s (two and a half leases) have passed since the claim: the task
    // must stay running and held by the agent throughout, its lease moving on.
    let last = claimed;
    await until(async () => {
      last = await get("rt-slow");
      assert.equal(last.status, "running");
      assert.equal(last.lease_owner, "ts-rt-slow-agent");
      assert.equal(last.attempts, 1);
      return Date.now() - claimedAt >= 2500;
    }, "2.5 s past the claim");
    const expires = Date.parse(last.lease_expires_at!);
    assert.ok(expires > claimedAt + 1800, `the lease was renewed: expires ${last.lease_expires_at}, claimed ${claimed.claimed_at}`);
    assert.equal(last.version, claimed.version, "renewals bump no version");

    finish.resolve();
    await until(statusIs("rt-slow", "done"), "rt-slow done");
    const summary = await agent.halt();
    assert.deepEqual(summary, { claimed: 1, done: 1, failed: 0, released: 0, dropped: 0 });
    const task = await get("rt-slow");
    assert.deepEqual(task.outputs, { slow: true });
    assert.equal(task.attempts, 1);
    assert.equal(task.version, claimed.version! + 1, "no expiry or second claim in between");
    const expired = await client.call("log.query", { types: ["task.lease_expired"] });
    assert.deepEqual(expired.events.filter((e) => e.task_id === "rt-slow"), []);
  });

  it("a lost lease aborts the handler's signal and drops its result", async () => {
    await create("rt-lost", "ts.rt.lost");
    const reasons: unknown[] = [];
    const started = deferred();
    const agent = start({
      agentId: "ts-rt-lost-agent",
      types: ["ts.rt.lost"],
      leaseS: 1,
      handler: async (_task, ctx) => {
        if (reasons.length > 0) return { second: true }; // the claim after the lost one
        started.resolve();
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
        reasons.push(ctx.signal.reason);
        await assert.rejects(ctx.progress({ late: true }), LeaseLostError);
        return { first: true }; // dropped: the task is not ours any more
      },
    });
    await within(started.promise, 10_000, "the handler to start");
    // Someone gives the task back under the agent's name (an operator, a twin process): the
    // next renewal is refused, and the runtime must stop treating the task as its own.
    await client.call("tasks.release", { id: "rt-lost", agent_id: "ts-rt-lost-agent" });
    await until(statusIs("rt-lost", "done"), "rt-lost done by a second claim");
    const summary = await agent.halt();
    assert.equal(reasons.length, 1);
    assert.ok(reasons[0] instanceof LeaseLostError, String(reasons[0]));
    assert.equal(reasons[0].taskId, "rt-lost");
    assert.deepEqual((await get("rt-lost")).outputs, { second: true });
    assert.deepEqual(summary, { claimed: 2, done: 1, failed: 0, released: 0, dropped: 1 });
    const { events } = await client.call("log.query", { conversation_id: "system", types: ["agent.progress"] });
    assert.deepEqual(events.filter((e) => e.task_id === "rt-lost"), []);
  });

  it("abort releases the held task at once (pending, attempt refunded) and resolves", async () => {
    await create("rt-abort", "ts.rt.abort");
    const started = deferred();
    let seenReason: unknown;
    const agent = start({
      agentId: "ts-rt-abort-agent",
      types: ["ts.rt.abort"],
      leaseS: 30,
      handler: async (_task, ctx) => {
        started.resolve();
        await new Promise((_, reject) =>
          ctx.signal.addEventListener("abort", () => {
            seenReason = ctx.signal.reason;
            reject(ctx.signal.reason);
          }),
        );
      },
    });
    await within(started.promise, 10_000, "the handler to start");
    const held = await get("rt-abort");
    assert.equal(held.status, "running");
    assert.equal(held.lease_owner, "ts-rt-abort-agent");
    assert.equal(held.attempts, 1);

    const reason = new Error("test says stop");
    const t0 = performance.now();
    const summary = await agent.halt(reason);
    const took = performance.now() - t0;
    // Straight after: no waiting for the 30 s lease to run out.
    const task = await get("rt-abort");
    assert.equal(task.status, "pending");
    assert.equal(task.lease_owner, null);
    assert.equal(task.lease_expires_at, null);
    assert.equal(task.attempts, 0);
    assert.ok(took < 2000, `resolved ${took} ms after the abort`);
    assert.deepEqual(summary, { claimed: 1, done: 0, failed: 0, released: 1, dropped: 0 });
    await until(() => seenReason !== undefined, "the handler to see the abort", 2000);
    assert.equal(seenReason, reason);
    // Stopped means stopped: nothing claims it again.
    await delay(200);
    assert.equal((await get("rt-abort")).status, "pending");
  });

  it("an already aborted signal resolves at once; bad options and no daemon reject", async () => {
    const handler: AgentHandler = () => ({});
    assert.deepEqual(
      await runAgent({ agentId: "x", handler, socketPath: daemon.socket, signal: AbortSignal.abort() }),
      { claimed: 0, done: 0, failed: 0, released: 0, dropped: 0 },
    );
    await assert.rejects(runAgent({ agentId: "", handler }), TypeError);
    await assert.rejects(runAgent({ agentId: "x", handler, leaseS: 0 }), RangeError);
    await assert.rejects(runAgent({ agentId: "x", handler, leaseS: 1.5 }), RangeError);
    await assert.rejects(runAgent({ agentId: "x", handler, concurrency: 0 }), RangeError);
    await assert.rejects(runAgent({ agentId: "x", handler, types: [] }), TypeError);
    const nowhere = path.join(daemon.dir, "nothing-here.sock");
    await assert.rejects(runAgent({ agentId: "x", handler, socketPath: nowhere }), (err: unknown) => {
      assert.ok(err instanceof DaemonUnavailableError);
      assert.equal(err.socketPath, nowhere);
      return true;
    });
  });

  it("a claim the daemon refuses (an agent id too long) rejects the promise", async () => {
    const agent = start({ agentId: "a".repeat(300), handler: () => ({}), socketPath: daemon.socket });
    await assert.rejects(within(agent.done, 5000, "the rejection"), (err: unknown) => {
      assert.equal((err as { code?: unknown }).code, -32602);
      return true;
    });
  });
});

describe("runAgent and a daemon that goes away", { timeout: 60_000 }, () => {
  afterEach(stopAgents);

  it("reconnects with back-off and carries on: the held task's result lands, new tasks are claimed", async () => {
    const first = await startDaemon();
    let second: Daemon | undefined;
    let client: Client | undefined;
    try {
      client = await connect(first.socket);
      await client.call("tasks.create", { id: "rt-restart-a", type: "ts.rt.restart", conversation_id: "ts-rt-restart" });
      const started = deferred();
      const goOn = deferred();
      const agent = startAgent({
        agentId: "ts-rt-restart-agent",
        types: ["ts.rt.restart"],
        socketPath: first.socket,
        leaseS: 3,
        handler: async (task, ctx) => {
          if (task.id !== "rt-restart-a") return { second: true };
          started.resolve();
          await goOn.promise;
          await ctx.progress({ after: "restart" });
          return { survived: true };
        },
      });
      await within(started.promise, 10_000, "the handler to start");
      await client.close();
      assert.deepEqual(await first.stop(), { code: 0, signal: null }, first.stderr());

      second = await startDaemon({ dir: first.dir }); // the same data and socket
      client = await connect(second.socket);
      const held = await client.call("tasks.get", { id: "rt-restart-a" });
      assert.equal(held.lease_owner, "ts-rt-restart-agent");
      goOn.resolve();
      await client.call("tasks.create", { id: "rt-restart-b", type: "ts.rt.restart" });
      const c = client;
      await until(async () => (await c.call("tasks.get", { id: "rt-restart-a" })).status === "done", "a done");
      await until(async () => (await c.call("tasks.get", { id: "rt-restart-b" })).status === "done", "b done");
      const summary = await agent.halt();
      assert.deepEqual(summary, { claimed: 2, done: 2, failed: 0, released: 0, dropped: 0 });
      assert.deepEqual((await client.call("tasks.get", { id: "rt-restart-a" })).outputs, { survived: true });
      assert.equal((await client.call("tasks.get", { id: "rt-restart-a" })).attempts, 1);
      const { events } = await client.call("log.query", { conversation_id: "ts-rt-restart", types: ["agent.progress"] });
      assert.deepEqual(events.map((e) => e.data), [{ after: "restart" }]);
    } finally {
      await stopAgents(); // before the daemon goes: an agent would wait for it to come back
      await stopCleanly(second, client);
      await first.cleanup();
    }
  });
});
