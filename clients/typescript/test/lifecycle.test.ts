// The daemon dies under the client: everything waiting must learn at once.
import assert from "node:assert/strict";
import { it } from "node:test";

import { ConnectionClosedError, connect } from "../src/index.js";
import { startDaemon } from "./daemon.js";

it("pending calls and open subscriptions fail promptly when the daemon is killed", { timeout: 30_000 }, async () => {
  const daemon = await startDaemon();
  try {
    const client = await connect(daemon.socket);
    const sub = client.subscribe({ conversation_id: "ts-killed" });
    await sub.ready;
    const waitingForEvent = sub.next();
    waitingForEvent.catch(() => {}); // judged below

    await daemon.pause(); // so the calls below stay unanswered
    const calls = [
      client.call("sys.health"),
      client.call("log.tail", { conversation_id: "ts-killed" }),
      client.call("log.append", { conversation_id: "ts-killed", type: "a.b" }, { timeoutMs: 60_000 }),
    ];
    for (const call of calls) call.catch(() => {}); // judged below
    const killedAt = performance.now();
    const exit = await daemon.kill();
    assert.equal(exit.signal, "SIGKILL");

    const expected = (err: unknown): boolean => {
      assert.ok(err instanceof ConnectionClosedError, String(err));
      assert.equal(err.socketPath, daemon.socket);
      assert.ok(err.message.startsWith(`connection to ${daemon.socket} closed`), err.message);
      return true;
    };
    for (const call of calls) await assert.rejects(call, expected);
    await assert.rejects(waitingForEvent, expected);
    await client.closed;
    const elapsed = performance.now() - killedAt;
    assert.ok(elapsed < 2000, `took ${elapsed} ms`); // not the 30 s call timeout

    // Afterwards: calls reject at once, iteration is over.
    await assert.rejects(client.call("sys.health"), expected);
    assert.deepEqual(await sub.next(), { value: undefined, done: true });
    await client.close(); // harmless
  } finally {
    await daemon.cleanup();
  }
});
