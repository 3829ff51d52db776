// Calls against a real daemon: results, errors, concurrency, timeouts, aborts.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import {
  type Client,
  ConnectionClosedError,
  connect,
  DaemonUnavailableError,
  defaultSocketPath,
  ErrorCode,
  RpcError,
  TimeoutError,
} from "../src/index.js";
import { type Daemon, eventually, startDaemon, stopCleanly } from "./daemon.js";

function rpcError(code: number, check?: (err: RpcError) => void): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof RpcError, `expected an RpcError, got ${String(err)}`);
    assert.equal(err.code, code, `code of ${err.message}`);
    assert.equal(typeof err.message, "string");
    assert.ok(err.message.length > 0);
    check?.(err);
    return true;
  };
}

describe("calls", { timeout: 30_000 }, () => {
  let daemon: Daemon;
  let client: Client;

  before(async () => {
    daemon = await startDaemon();
    client = await connect(daemon.socket);
  });

  after(() => stopCleanly(daemon, client));

  it("sys.health answers with a typed result", async () => {
    const health = await client.call("sys.health");
    assert.equal(health.status, "ok");
    assert.equal(typeof health.version, "string");
    assert.equal(health.pid, daemon.pid);
    assert.equal(health.socket, daemon.socket);
  });

  it("log.append, then log.tail and log.get", async () => {
    const cid = "ts-append";
    const first = await client.call("log.append", {
      conversation_id: cid,
      type: "agent.progress",
      agent_id: "coder",
      data: { pct: 40 },
    });
    assert.equal(first.seq, 1);
    assert.match(first.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.match(first.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    const second = await client.call("log.append", {
      conversation_id: cid,
      type: "task.updated",
      visibility: "status",
      caused_by: [first.id],
      expected_seq: 1,
    });
    assert.equal(second.seq, 2);

    const tail = await client.call("log.tail", { conversation_id: cid, limit: 10 });
    assert.deepEqual(
      tail.events.map((e) => [e.seq, e.type, e.visibility]),
      [
        [1, "agent.progress", "internal"],
        [2, "task.updated", "status"],
      ],
    );
    const got = await client.call("log.get", { event_id: first.id });
    assert.equal(got.id, first.id);
    assert.equal(got.conversation_id, cid);
    assert.equal(got.agent_id, "coder");
    assert.equal(got.level, "action");
    assert.deepEqual(got.data, { pct: 40 });
    assert.deepEqual(got.caused_by, []);
    const causality = await client.call("log.causality", { event_id: second.id });
    assert.deepEqual(
      causality.upstream.map((e) => e.id),
      [first.id],
    );
  });

  it("an unknown event id is RpcError -32002 with data", async () => {
    const id = randomUUID();
    await assert.rejects(
      client.call("log.get", { event_id: id }),
      rpcError(ErrorCode.NotFound, (err) => assert.deepEqual(err.data, { event_id: id })),
    );
  });

  it("visibility user through log.append is RpcError -32003", async () => {
    await assert.rejects(
      client.call("log.append", { conversation_id: "ts-forbidden", type: "user.message", visibility: "user" }),
      rpcError(ErrorCode.Forbidden, (err) =>
        assert.deepEqual(err.data, { conversation_id: "ts-forbidden", type: "user.message" }),
      ),
    );
    // Nothing was written.
    const tail = await client.call("log.tail", { conversation_id: "ts-forbidden" });
    assert.deepEqual(tail.events, []);
  });

  it("an expected_seq mismatch is RpcError -32001 with data.last_seq", async () => {
    const cid = "ts-conflict";
    await client.call("log.append", { conversation_id: cid, type: "a.b" });
    await client.call("log.append", { conversation_id: cid, type: "a.b" });
    await assert.rejects(
      client.call("log.append", { conversation_id: cid, type: "a.b", expected_seq: 7 }),
      rpcError(ErrorCode.Conflict, (err) => {
        const data = err.data as { last_seq: number; expected_seq: number };
        assert.equal(data.last_seq, 2);
        assert.equal(data.expected_seq, 7);
      }),
    );
  });

  it("standard errors: unknown method -32601, invalid params -32602", async () => {
    await assert.rejects(client.call("no.such_method"), rpcError(ErrorCode.MethodNotFound));
    await assert.rejects(
      client.call("log.tail", { conversation_id: "../etc" }),
      rpcError(ErrorCode.InvalidParams),
    );
    // An untyped call of a known method still reaches the daemon, which checks it.
    const method: string = "log.append";
    await assert.rejects(client.call(method, { type: "a.b" }), rpcError(ErrorCode.InvalidParams));
  });

  it("100 concurrent calls on one connection each get their own answer", async () => {
    const cid = "ts-concurrent";
    const n = 100;
    const acks = await Promise.all(
      Array.from({ length: n }, (_, i) => client.call("log.append", { conversation_id: cid, type: "a.b", data: { i } })),
    );
    assert.deepEqual(
      acks.map((a) => a.seq).sort((a, b) => a - b),
      Array.from({ length: n }, (_, i) => i + 1),
    );
    assert.equal(new Set(acks.map((a) => a.id)).size, n);

    // A mix of methods, successes and failures, all in flight at once.
    const missing = new Set<number>();
    const calls = Array.from({ length: n }, (_, i) => {
      if (i % 10 === 3) {
        missing.add(i);
        return client.call("log.get", { event_id: randomUUID() });
      }
      if (i % 10 === 7) return client.call("sys.health");
      return client.call("log.get", { event_id: acks[i]!.id });
    });
    const settled = await Promise.allSettled(calls);
    settled.forEach((outcome, i) => {
      if (missing.has(i)) {
        assert.equal(outcome.status, "rejected", `call ${i}`);
        assert.ok(outcome.status === "rejected" && outcome.reason instanceof RpcError);
        assert.equal((outcome.reason as RpcError).code, ErrorCode.NotFound);
      } else if (i % 10 === 7) {
        assert.equal(outcome.status, "fulfilled", `call ${i}`);
        assert.equal(((outcome as PromiseFulfilledResult<unknown>).value as { status: string }).status, "ok");
      } else {
        assert.equal(outcome.status, "fulfilled", `call ${i}`);
        const event = (outcome as PromiseFulfilledResult<unknown>).value as { id: string; data: { i: number } };
        assert.equal(event.id, acks[i]!.id);
        assert.equal(event.data.i, i);
      }
    });
  });

  it("a call that gets no answer in timeoutMs rejects with TimeoutError; the connection lives on", async () => {
    await daemon.pause();
    let slow: Promise<unknown> | undefined;
    try {
      slow = client.call("log.tail", { conversation_id: "ts-append" }, { timeoutMs: 10_000 });
      const started = performance.now();
      await assert.rejects(client.call("sys.health", undefined, { timeoutMs: 50 }), (err) => {
        assert.ok(err instanceof TimeoutError);
        assert.equal(err.method, "sys.health");
        assert.equal(err.timeoutMs, 50);
        assert.match(err.message, /sys\.health/);
        return true;
      });
      assert.ok(performance.now() - started >= 45);
    } finally {
      daemon.resume();
    }
    // The other call, still waiting, gets its answer; the late answer to the timed-out one is dropped.
    const tail = (await slow) as { events: unknown[] };
    assert.equal(tail.events.length, 2);
    assert.equal((await client.call("sys.health")).status, "ok");
  });

  it("an AbortSignal cancels a call", async () => {
    // Aborted before the call: rejects at once with the signal's reason, nothing is sent.
    const aborted = new AbortController();
    aborted.abort();
    await assert.rejects(client.call("sys.health", {}, { signal: aborted.signal }), { name: "AbortError" });

    await daemon.pause();
    try {
      const controller = new AbortController();
      const pending = client.call("sys.health", {}, { signal: controller.signal });
      const reason = new Error("user gave up");
      controller.abort(reason);
      await assert.rejects(pending, (err) => err === reason);
      await assert.rejects(
        client.call("sys.stats", {}, { signal: AbortSignal.timeout(30) }),
        (err: unknown) => err instanceof Error && err.name === "TimeoutError",
      );
    } finally {
      daemon.resume();
    }
    assert.equal((await client.call("sys.health")).status, "ok");
  });

  it("notify sends a notification (no answer)", async () => {
    const id = randomUUID();
    client.notify("log.append", { conversation_id: "ts-notify", type: "a.b", id });
    await eventually(async () => {
      try {
        return (await client.call("log.get", { event_id: id })).id === id;
      } catch (err) {
        if (err instanceof RpcError && err.code === ErrorCode.NotFound) return false;
        throw err;
      }
    }, "the notified append");
  });

  it("batch-free params checks: params must be an object", async () => {
    await assert.rejects(client.call("sys.health", 5 as never), TypeError);
  });

  it("close() rejects pending calls, and calls after it reject at once", async () => {
    const other = await connect(daemon.socket);
    await daemon.pause();
    let pending: Promise<unknown>;
    try {
      pending = other.call("sys.health");
      pending.catch(() => {}); // judged below
      await other.close();
    } finally {
      daemon.resume();
    }
    await assert.rejects(pending, (err) => {
      assert.ok(err instanceof ConnectionClosedError);
      assert.match(err.message, new RegExp(`^connection to ${daemon.socket.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} closed`));
      return true;
    });
    await assert.rejects(other.call("sys.health"), ConnectionClosedError);
    assert.throws(() => other.notify("sys.health"), ConnectionClosedError);
    assert.equal(other.isClosed, true);
  });
});

describe("connect", { timeout: 30_000 }, () => {
  it("names the socket path when nothing answers", async () => {
    const missing = path.join("/tmp", `sidecar-ts-missing-${process.pid}`, "nope.sock");
    await assert.rejects(connect(missing), (err) => {
      assert.ok(err instanceof DaemonUnavailableError);
      assert.equal(err.socketPath, missing);
      assert.equal(err.code, "ENOENT");
      assert.ok(err.message.includes(missing), err.message);
      return true;
    });
  });

  it("defaults like the daemon: SIDECAR_SOCKET, XDG_RUNTIME_DIR, /tmp/sidecar-UID", () => {
    assert.equal(defaultSocketPath({ SIDECAR_SOCKET: "/x/s.sock", XDG_RUNTIME_DIR: "/run/user/1" }), "/x/s.sock");
    assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "/run/user/1" }), "/run/user/1/sidecar/sidecar.sock");
    assert.equal(defaultSocketPath({}), `/tmp/sidecar-${process.getuid!()}/sidecar.sock`);
  });
});
