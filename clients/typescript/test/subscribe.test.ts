// Subscriptions against a real daemon: replay + live, unsubscribe on break, overflow, shutdown.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { type Client, connect, ErrorCode, type Event, RpcError } from "../src/index.js";
import { type Daemon, eventually, startDaemon, stopCleanly } from "./daemon.js";

async function subscriptions(client: Client): Promise<number> {
  return (await client.call("sys.stats")).subscriptions;
}

describe("subscribe", { timeout: 30_000 }, () => {
  let daemon: Daemon;
  let client: Client;

  before(async () => {
    daemon = await startDaemon();
    client = await connect(daemon.socket);
  });

  after(() => stopCleanly(daemon, client));

  it("replays from from_seq, then goes live; break unsubscribes", async () => {
    const cid = "ts-sub";
    for (let i = 1; i <= 3; i++) {
      await client.call("log.append", { conversation_id: cid, type: "agent.progress", data: { i } });
    }
    const sub = client.subscribe({ conversation_id: cid, from_seq: 2 });
    const id = await sub.ready;
    assert.equal(typeof id, "number");
    assert.equal(sub.id, id);

    const seen: Event[] = [];
    for await (const event of sub) {
      seen.push(event);
      if (event.seq === 3) {
        // Replay done: these two arrive live.
        assert.equal(await subscriptions(client), 1);
        await client.call("log.append", { conversation_id: cid, type: "agent.progress", data: { i: 4 } });
        await client.call("log.append", { conversation_id: "ts-sub-other", type: "agent.progress" });
        await client.call("log.append", { conversation_id: cid, type: "agent.progress", data: { i: 5 } });
      }
      if (event.seq === 5) break;
    }
    assert.deepEqual(
      seen.map((e) => [e.seq, e.conversation_id, (e.data as { i: number }).i]),
      [
        [2, cid, 2],
        [3, cid, 3],
        [4, cid, 4],
        [5, cid, 5],
      ],
    );
    assert.equal(sub.ended, true);
    await eventually(async () => (await subscriptions(client)) === 0, "sys.stats subscriptions back to 0", 50);
    // More events for the conversation: the client is not bothered by them.
    await client.call("log.append", { conversation_id: cid, type: "agent.progress", data: { i: 6 } });
    assert.equal((await client.call("sys.health")).status, "ok");
  });

  it("keeps events that come in the same read as the subscribe answer", async () => {
    // A long replay starts right after the answer, so the first events usually share its chunk.
    const cid = "ts-sub-burst";
    const n = 300;
    const events = Array.from({ length: n }, (_, i) => ({ conversation_id: cid, type: "a.b", data: { i } }));
    await client.call("log.append_many", { events });
    for (let round = 0; round < 5; round++) {
      const sub = client.subscribe({ conversation_id: cid, from_seq: 1 });
      let expected = 1;
      for await (const event of sub) {
        assert.equal(event.seq, expected, `round ${round}`);
        expected += 1;
        if (event.seq === n) break;
      }
      assert.equal(expected, n + 1);
    }
    await eventually(async () => (await subscriptions(client)) === 0, "no subscriptions left", 50);
  });

  it("several subscriptions on one connection each get their own events", async () => {
    const a = client.subscribe({ conversation_id: "ts-multi", types: ["x.a"] });
    const b = client.subscribe({ conversation_id: "ts-multi", types: ["x.b"] });
    await Promise.all([a.ready, b.ready]);
    await client.call("log.append_many", {
      events: [
        { conversation_id: "ts-multi", type: "x.a", data: { n: 1 } },
        { conversation_id: "ts-multi", type: "x.b", data: { n: 2 } },
        { conversation_id: "ts-multi", type: "x.a", data: { n: 3 } },
      ],
    });
    const take = async (sub: typeof a, count: number): Promise<unknown[]> => {
      const out: unknown[] = [];
      for await (const event of sub) {
        out.push(event.data.n);
        if (out.length === count) break;
      }
      return out;
    };
    assert.deepEqual(await take(a, 2), [1, 3]);
    assert.deepEqual(await take(b, 1), [2]);
    await eventually(async () => (await subscriptions(client)) === 0, "no subscriptions left", 50);
  });

  it("a refused subscribe rejects the iteration (and ready) with the RpcError", async () => {
    const sub = client.subscribe({ conversation_id: "ts-bad", from_seq: 0 });
    await assert.rejects(sub.ready, (err) => err instanceof RpcError && err.code === ErrorCode.InvalidParams);
    await assert.rejects(
      (async () => {
        for await (const _ of sub) assert.fail("no events");
      })(),
      (err) => err instanceof RpcError && err.code === ErrorCode.InvalidParams,
    );
  });

  it("an AbortSignal ends a subscription and unsubscribes", async () => {
    const controller = new AbortController();
    const sub = client.subscribe({ conversation_id: "ts-abort" }, { signal: controller.signal });
    await sub.ready;
    assert.equal(await subscriptions(client), 1);
    const waiting = sub.next();
    controller.abort();
    await assert.rejects(waiting, { name: "AbortError" });
    await eventually(async () => (await subscriptions(client)) === 0, "the aborted subscription gone", 50);
  });
});

describe("subscribe: the daemon ends it", { timeout: 30_000 }, () => {
  it("log.overflow ends the iteration with RpcError -32005 and its params as data", async () => {
    const daemon = await startDaemon({ config: "[server]\nsubscriber_queue = 1\n" });
    try {
      const client = await connect(daemon.socket);
      const sub = client.subscribe({ conversation_id: "ts-overflow" });
      const id = await sub.ready;
      // One commit of five events: more than the queue of one at once.
      await client.call("log.append_many", {
        events: Array.from({ length: 5 }, (_, i) => ({ conversation_id: "ts-overflow", type: "a.b", data: { i } })),
      });
      const seen: number[] = [];
      await assert.rejects(
        (async () => {
          for await (const event of sub) seen.push(event.seq);
        })(),
        (err) => {
          assert.ok(err instanceof RpcError);
          assert.equal(err.code, ErrorCode.Overloaded);
          const data = err.data as { subscription: number; conversation_id: string; from_seq: number; resume_from: object };
          assert.equal(data.subscription, id);
          assert.equal(data.conversation_id, "ts-overflow");
          assert.equal(data.from_seq, seen.length + 1);
          assert.deepEqual(data.resume_from, { "ts-overflow": seen.length + 1 });
          return true;
        },
      );
      assert.ok(seen.length < 5);
      assert.deepEqual(
        seen,
        Array.from({ length: seen.length }, (_, i) => i + 1),
      );
      assert.equal((await client.call("sys.stats")).subscriptions, 0);
      await client.close();
      const exit = await daemon.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, daemon.stderr());
    } finally {
      await daemon.cleanup();
    }
  });

  it("sys.shutdown (SIGTERM) ends the iteration normally; then calls reject", async () => {
    const daemon = await startDaemon();
    try {
      const client = await connect(daemon.socket);
      await client.call("log.append", { conversation_id: "ts-shutdown", type: "a.b" });
      const sub = client.subscribe({ conversation_id: "ts-shutdown", from_seq: 1 });
      const seen: number[] = [];
      const shutdowns: unknown[] = [];
      client.onNotification((method, params) => {
        if (method === "sys.shutdown") shutdowns.push(params);
      });
      for await (const event of sub) {
        seen.push(event.seq);
        if (seen.length === 1) {
          const stopping = daemon.stop();
          stopping.catch(() => {});
          // The loop goes on until the daemon says sys.shutdown.
        }
      }
      assert.deepEqual(seen, [1]);
      assert.equal(shutdowns.length, 1);
      const exit = await daemon.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, daemon.stderr());
      await client.closed;
      await assert.rejects(client.call("sys.health"), (err: unknown) => {
        assert.ok(err instanceof Error);
        assert.ok(err.message.startsWith(`connection to ${daemon.socket} closed`), err.message);
        return true;
      });
    } finally {
      await daemon.cleanup();
    }
  });
});
