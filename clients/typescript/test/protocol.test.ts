// Wire-level cases the real daemon rarely produces on demand (an answer and events in one
// chunk, a batch answer, a hang-up with a reason), played by a scripted server on a socket.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { ConnectionClosedError, connect, type Event, RpcError, TimeoutError } from "../src/index.js";

type Message = { jsonrpc: "2.0"; id?: number | string | null; method?: string; params?: any; result?: any; error?: any };
type Handler = (message: Message, socket: net.Socket, all: Message[]) => void;

interface Fake {
  path: string;
  received: Message[];
  /** Resolves with the first received message that satisfies `pred`. */
  waitFor(pred: (m: Message) => boolean): Promise<Message>;
  close(): Promise<void>;
}

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "sidecar-ts-fake-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let serial = 0;
async function fakeDaemon(handler: Handler): Promise<Fake> {
  const socketPath = path.join(dir, `fake-${++serial}.sock`);
  const received: Message[] = [];
  const watchers: Array<{ pred: (m: Message) => boolean; resolve: (m: Message) => void }> = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        const message = JSON.parse(line) as Message;
        received.push(message);
        for (const w of [...watchers]) {
          if (w.pred(message)) {
            watchers.splice(watchers.indexOf(w), 1);
            w.resolve(message);
          }
        }
        handler(message, socket, received);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    path: socketPath,
    received,
    waitFor(pred) {
      const seen = received.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve) => watchers.push({ pred, resolve }));
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const line = (m: object): string => JSON.stringify({ jsonrpc: "2.0", ...m }) + "\n";
const event = (seq: number): Partial<Event> => ({ id: `e${seq}`, seq, conversation_id: "c", type: "a.b", data: {} });

describe("wire protocol (scripted server)", { timeout: 10_000 }, () => {
  it("keeps events that arrive in the same chunk as the subscribe answer", async () => {
    const fake = await fakeDaemon((m, socket) => {
      if (m.method === "log.subscribe") {
        socket.write(
          line({ id: m.id, result: { subscription: 7 } }) +
            line({ method: "log.event", params: { subscription: 7, event: event(1) } }) +
            line({ method: "log.event", params: { subscription: 7, event: event(2) } }),
        );
      } else if (m.method === "log.unsubscribe" && m.id !== undefined) {
        socket.write(line({ id: m.id, result: { ok: true } }));
      }
    });
    const client = await connect(fake.path);
    const seqs: number[] = [];
    for await (const e of client.subscribe({ conversation_id: "c" })) {
      seqs.push(e.seq);
      if (seqs.length === 2) break;
    }
    assert.deepEqual(seqs, [1, 2]);
    const unsub = await fake.waitFor((m) => m.method === "log.unsubscribe");
    assert.deepEqual(unsub.params, { subscription: 7 });
    await client.close();
    await fake.close();
  });

  it("keeps events that arrive before the subscribe answer", async () => {
    const fake = await fakeDaemon((m, socket) => {
      if (m.method === "log.subscribe") {
        socket.write(
          line({ method: "log.event", params: { subscription: 3, event: event(1) } }) +
            line({ method: "log.event", params: { subscription: 99, event: event(50) } }) +
            line({ id: m.id, result: { subscription: 3 } }) +
            line({ method: "log.event", params: { subscription: 3, event: event(2) } }) +
            line({ method: "sys.shutdown", params: { reason: "daemon stopping" } }),
        );
      }
    });
    const client = await connect(fake.path);
    const seqs: number[] = [];
    for await (const e of client.subscribe()) seqs.push(e.seq);
    assert.deepEqual(seqs, [1, 2]); // then sys.shutdown ended the loop
    await client.close();
    await fake.close();
  });

  it("reassembles lines split anywhere, even inside a UTF-8 character", async () => {
    const text = "h\u00e9llo \u2713 \ud83d\ude00";
    const fake = await fakeDaemon((m, socket) => {
      const bytes = Buffer.from(line({ id: m.id, result: { text } }));
      let i = 0;
      const next = (): void => {
        if (i >= bytes.length) return;
        socket.write(bytes.subarray(i, i + 1), () => setImmediate(next));
        i += 1;
      };
      next();
    });
    const client = await connect(fake.path);
    assert.deepEqual(await client.call("x.echo"), { text });
    await client.close();
    await fake.close();
  });

  it("dispatches a batch answer item by item, whatever the order", async () => {
    const fake = await fakeDaemon((_m, socket, all) => {
      const calls = all.filter((m) => m.id !== undefined);
      if (calls.length === 2) {
        socket.write(
          JSON.stringify([
            { jsonrpc: "2.0", id: calls[1]!.id, error: { code: -32002, message: "nope", data: { n: 2 } } },
            { jsonrpc: "2.0", id: calls[0]!.id, result: 1 },
          ]) + "\n",
        );
      }
    });
    const client = await connect(fake.path);
    const [a, b] = await Promise.allSettled([client.call("x.one"), client.call("x.two")]);
    assert.deepEqual(a, { status: "fulfilled", value: 1 });
    assert.equal(b?.status, "rejected");
    const err = (b as PromiseRejectedResult).reason;
    assert.ok(err instanceof RpcError);
    assert.equal(err.code, -32002);
    assert.equal(err.message, "nope");
    assert.deepEqual(err.data, { n: 2 });
    await client.close();
    await fake.close();
  });

  it("says why when the daemon answers with an id-less error and hangs up", async () => {
    const fake = await fakeDaemon((_m, socket) => {
      socket.end(line({ id: null, error: { code: -32005, message: "too many connections; try again later" } }));
    });
    const client = await connect(fake.path);
    await assert.rejects(client.call("sys.health"), (err) => {
      assert.ok(err instanceof ConnectionClosedError);
      assert.match(err.message, /^connection to .* closed \(too many connections; try again later \(code -32005\)\)$/);
      assert.ok(err.cause instanceof RpcError);
      return true;
    });
    await fake.close();
  });

  it("closes the connection with a clear error on a line that is not JSON", async () => {
    const fake = await fakeDaemon((_m, socket) => {
      socket.write("this is not json\n");
    });
    const client = await connect(fake.path);
    await assert.rejects(client.call("sys.health"), /closed \(the daemon sent a line that is not JSON\)/);
    await client.closed;
    await fake.close();
  });

  it("unsubscribes a subscription whose answer came after the caller gave up", async () => {
    let answer: (() => void) | undefined;
    const fake = await fakeDaemon((m, socket) => {
      if (m.method === "log.subscribe") {
        answer = () => socket.write(line({ id: m.id, result: { subscription: 42 } }));
      }
    });
    const client = await connect(fake.path);
    const sub = client.subscribe({}, { timeoutMs: 20 });
    await assert.rejects(sub.ready, TimeoutError);
    await assert.rejects(sub.next(), TimeoutError);
    answer!();
    const unsub = await fake.waitFor((m) => m.method === "log.unsubscribe");
    assert.deepEqual(unsub.params, { subscription: 42 });
    assert.equal(unsub.id, undefined); // a notification: nobody waits for it
    await client.close();
    await fake.close();
  });

  it("hands other notifications to onNotification, not to the event iterator", async () => {
    const fake = await fakeDaemon((m, socket) => {
      if (m.method === "log.subscribe") {
        socket.write(
          line({ id: m.id, result: { subscription: 5 } }) +
            line({ method: "narrator.delta", params: { subscription: 5, delta: "Hel" } }) +
            line({ method: "log.event", params: { subscription: 5, event: event(1) } }) +
            line({ method: "log.overflow", params: { subscription: 5, resume_from: { c: 2 } } }),
        );
      }
    });
    const client = await connect(fake.path);
    const notes: Array<[string, unknown]> = [];
    const stop = client.onNotification((method, params) => notes.push([method, params]));
    const seqs: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const e of client.subscribe()) seqs.push(e.seq);
      })(),
      (err) => err instanceof RpcError && err.code === -32005 && (err.data as { subscription: number }).subscription === 5,
    );
    assert.deepEqual(seqs, [1]);
    assert.deepEqual(
      notes.map(([m]) => m),
      ["narrator.delta", "log.event", "log.overflow"],
    );
    stop();
    await client.close();
    await fake.close();
  });
});
