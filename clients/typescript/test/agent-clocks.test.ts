// runAgent and vector clocks (CONTRACT.md section 14) against a real daemon: what an agent
// writes is ordered after what it read (through context.call, or shown to context.observe), and
// a clock the daemon refuses (the agent's id wrote before this runtime knew) is mended. Every
// wait is for a condition, polled, with a deadline.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import {
  type AgentHandler,
  type AppendResult,
  type Client,
  RpcError,
  type Task,
  connect,
  runAgent,
} from "../src/index.js";
import { type Daemon, eventually, startDaemon, stopCleanly } from "./daemon.js";

describe("runAgent and clocks", { timeout: 60_000 }, () => {
  let daemon: Daemon;
  let client: Client;

  before(async () => {
    daemon = await startDaemon();
    client = await connect(daemon.socket);
  });

  after(() => stopCleanly(daemon, client));

  const order = async (a: string, b: string): Promise<string> => (await client.call("log.compare", { a, b })).order;
  const note = (conversationId: string, agentId: string, extra: Record<string, unknown> = {}): Promise<AppendResult> =>
    client.call("log.append", { conversation_id: conversationId, type: "note", agent_id: agentId, ...extra });

  /** Run `handler` as `agentId` on the task `id` (of a type of its own) until it is done. */
  async function runOne(agentId: string, id: string, conversationId: string, handler: AgentHandler): Promise<Task> {
    const stop = new AbortController();
    const done = runAgent({ agentId, handler, types: [id], socketPath: daemon.socket, signal: stop.signal });
    try {
      await eventually(
        async () => {
          const task = await client.call("tasks.get", { id });
          return task.status === "done" || task.status === "failed";
        },
        `${id} to end`,
        1000, // 10 ms apart: at least 10 s
      );
    } finally {
      stop.abort(new Error("the test is over"));
      await done;
    }
    const task = await client.call("tasks.get", { id });
    assert.equal(task.status, "done", JSON.stringify(task.outputs));
    assert.equal(task.conversation_id, conversationId);
    return task;
  }

  it("progress after a read is ordered after it; without the read, concurrent", async () => {
    const others: Record<string, string> = {};
    for (const name of ["read", "unread"]) {
      await client.call("tasks.create", { id: `ts-clk-${name}`, type: `ts-clk-${name}`, conversation_id: `ts-c-${name}` });
      others[name] = (await note(`ts-c-${name}`, "other")).id;
    }
    const progress: Record<string, AppendResult> = {};
    const handler: AgentHandler = async (task, ctx) => {
      if (task.id === "ts-clk-read") {
        const event = await ctx.call("log.get", { event_id: others.read! });
        assert.equal(event.agent_id, "other");
      }
      progress[task.id] = await ctx.progress({ msg: "after the read, or not" });
    };
    await runOne("ts-clk-read-agent", "ts-clk-read", "ts-c-read", handler);
    await runOne("ts-clk-unread-agent", "ts-clk-unread", "ts-c-unread", handler);

    const read = progress["ts-clk-read"]!;
    const unread = progress["ts-clk-unread"]!;
    assert.equal(read.clock?.other, 1, "the answer to the append is the stored clock");
    assert.equal(await order(others.read!, read.id), "before");
    assert.equal(await order(read.id, others.read!), "after");
    assert.equal(unread.clock?.other, undefined);
    assert.equal(await order(others.unread!, unread.id), "concurrent");
    assert.deepEqual((await client.call("log.get", { event_id: read.id })).clock, read.clock);
  });

  it("observe orders progress after an event read elsewhere; log.tail and log.causality teach clocks", async () => {
    await client.call("tasks.create", { id: "ts-clk-obs", type: "ts-clk-obs", conversation_id: "ts-c-obs" });
    const shown = await client.call("log.get", { event_id: (await note("ts-c-obs", "other")).id });
    const third = await note("ts-c-obs", "third");
    await client.call("tasks.create", { id: "ts-clk-tail", type: "ts-clk-tail", conversation_id: "ts-c-tail" });
    const tailed = await note("ts-c-tail", "other");
    let caused: AppendResult | undefined;
    const ids: Record<string, string> = {};
    await runOne("ts-clk-obs-agent", "ts-clk-obs", "ts-c-obs", async (_task, ctx) => {
      ctx.observe(shown); // read with a client of its own, not ctx.call
      ids.obs = (await ctx.progress({ msg: "after what I was shown" })).id;
    });
    await runOne("ts-clk-tail-agent", "ts-clk-tail", "ts-c-tail", async (_task, ctx) => {
      const { events } = await ctx.call("log.tail", { conversation_id: "ts-c-tail", limit: 10 });
      assert.ok(events.some((e) => e.id === tailed.id));
      caused = await note("ts-c-tail", "third", { caused_by: [tailed.id] }); // written after the tail
      const causality = await ctx.call("log.causality", { event_id: caused.id });
      assert.deepEqual(causality.upstream.map((e) => e.id), [tailed.id]);
      ids.tail = (await ctx.progress({ msg: "after the tail" })).id;
    });
    assert.equal(await order(shown.id, ids.obs!), "before");
    assert.equal(await order(third.id, ids.obs!), "concurrent", "nothing of that one was observed");
    assert.equal(await order(tailed.id, ids.tail!), "before");
    assert.equal(await order(caused!.id, ids.tail!), "before");
  });

  it("events a handler appends as itself through call get clocks, one after another", async () => {
    await client.call("tasks.create", { id: "ts-clk-own", type: "ts-clk-own", conversation_id: "ts-c-own" });
    const other = (await note("ts-c-own", "other")).id;
    const results: { one?: AppendResult; many?: AppendResult[]; last?: AppendResult } = {};
    await runOne("ts-clk-own-agent", "ts-clk-own", "ts-c-own", async (_task, ctx) => {
      await ctx.call("log.get", { event_id: other });
      const one = { conversation_id: "ts-c-own", type: "note", agent_id: "ts-clk-own-agent" };
      results.one = await ctx.call("log.append", one);
      results.many = await ctx.call("log.append_many", { events: [one, one, { ...one, agent_id: "x" }] });
      results.last = await ctx.progress({ msg: "last" });
    });
    const [two, three, foreign] = results.many!;
    const own = [results.one!, two!, three!, results.last!].map((r) => r.clock!["ts-clk-own-agent"]!);
    assert.deepEqual(own, [...new Set(own)].sort((a, b) => a - b), "one after another");
    assert.equal(await order(other, results.one!.id), "before");
    assert.equal(await order(results.one!.id, two!.id), "before");
    assert.equal(await order(two!.id, three!.id), "before");
    assert.equal(foreign!.clock!["ts-clk-own-agent"], undefined, "another writer's: the daemon computed it");
  });

  it("an agent whose id wrote before this runtime knew mends its refused clock", async () => {
    await client.call("tasks.create", { id: "ts-clk-again", type: "ts-clk-again", conversation_id: "ts-c-again" });
    const other = (await note("ts-c-again", "other")).id;
    await note("ts-c-again", "ts-clk-again-agent");
    await note("ts-c-again", "ts-clk-again-agent");
    const earlier = await note("ts-c-again", "ts-clk-again-agent", { caused_by: [other] });
    assert.deepEqual(earlier.clock, { "ts-clk-again-agent": 3, other: 1 });
    const sent: AppendResult[] = [];
    await runOne("ts-clk-again-agent", "ts-clk-again", "ts-c-again", async (_task, ctx) => {
      sent.push(await ctx.progress({ msg: "still me" }));
      sent.push(await ctx.progress({ msg: "and again" }));
    });
    const [first, second] = sent;
    // Past the earlier events and the task.claimed the daemon wrote under the agent's id (4).
    assert.deepEqual(first!.clock, { "ts-clk-again-agent": 5, other: 1 });
    assert.deepEqual(second!.clock, { "ts-clk-again-agent": 6, other: 1 });
    assert.equal(await order(earlier.id, first!.id), "before");
    assert.equal(await order(other, first!.id), "before");
  });

  it("other conflicts, and a clock the handler sent itself, are not mended", async () => {
    await client.call("tasks.create", { id: "ts-clk-seq", type: "ts-clk-seq", conversation_id: "ts-c-seq" });
    const caught: RpcError[] = [];
    await runOne("ts-clk-seq-agent", "ts-clk-seq", "ts-c-seq", async (_task, ctx) => {
      const event = { conversation_id: "ts-c-seq", type: "note", agent_id: "ts-clk-seq-agent" };
      for (const extra of [{ expected_seq: 99 }, { clock: { "ts-clk-seq-agent": 1 } }]) {
        await assert.rejects(ctx.call("log.append", { ...event, ...extra }), (err) => {
          assert.ok(err instanceof RpcError);
          caught.push(err);
          return true;
        });
      }
      await ctx.progress({ msg: "still fine" });
    });
    assert.deepEqual(
      caught.map((e) => e.code),
      [-32001, -32001],
    );
    assert.ok("expected_seq" in (caught[0]!.data as object));
    assert.equal((caught[1]!.data as { writer: string }).writer, "ts-clk-seq-agent");
    const { events } = await client.call("log.query", { conversation_id: "ts-c-seq", types: ["note", "agent.progress"] });
    assert.deepEqual(
      events.map((e) => e.type),
      ["agent.progress"],
    );
  });
});
