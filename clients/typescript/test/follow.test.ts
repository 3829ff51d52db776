// follow() with a durable consumer group, against a real daemon: a consumer that stops hands
// over at the event it stopped on (acks are at-least-once: an event is acked when the next is
// requested), a daemon restart (SIGTERM or kill -9) under a live consumer loses nothing and
// repeats nothing past the ack, and a second live consumer of a group waits for the first.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";

import { connect, ErrorCode, type Event, follow, RpcError } from "../src/index.js";
import { type Daemon, eventually, startDaemon, stopCleanly } from "./daemon.js";

async function append(socket: string, cid: string, n: number): Promise<void> {
  const client = await connect(socket);
  try {
    for (let i = 0; i < n; i++) await client.call("log.append", { conversation_id: cid, type: "agent.progress" });
  } finally {
    await client.close();
  }
}

async function acked(socket: string, group: string, cid: string): Promise<number | undefined> {
  const client = await connect(socket);
  try {
    const { groups } = await client.call("log.groups");
    return groups.find((g) => g.group === group && g.conversation_id === cid)?.acked_seq;
  } finally {
    await client.close();
  }
}

/** What the daemon's groups file (data/groups.json) says: what survives a kill -9. */
async function ackedOnDisk(daemon: Daemon, group: string, cid: string): Promise<number | undefined> {
  try {
    const doc = JSON.parse(await readFile(path.join(daemon.dir, "data", "groups.json"), "utf8")) as {
      groups: { group: string; conversation_id: string; acked_seq: number }[];
    };
    return doc.groups.find((g) => g.group === group && g.conversation_id === cid)?.acked_seq;
  } catch {
    return undefined; // not written yet, or being replaced
  }
}

async function seqs(events: AsyncGenerator<Event, void, undefined>, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const next = await events.next();
    assert.equal(next.done, false);
    if (!next.done) out.push(next.value.seq);
  }
  return out;
}

describe("follow", { timeout: 60_000 }, () => {
  it("a new consumer of the group starts on the event the last one stopped on", async () => {
    const daemon = await startDaemon();
    try {
      await append(daemon.socket, "ts-g", 5);
      const first = follow(daemon.socket, "ts-g", { group: "g" });
      assert.deepEqual(await seqs(first, 3), [1, 2, 3]); // 1, 2 acked when 2, 3 were requested
      await first.return(); // stopped on 3: not acked
      assert.equal(await acked(daemon.socket, "g", "ts-g"), 2);

      const second = follow(daemon.socket, "ts-g", { group: "g" });
      assert.deepEqual(await seqs(second, 3), [3, 4, 5]);
      await second.return();
      assert.equal(await acked(daemon.socket, "g", "ts-g"), 4);

      // fromSeq places a new group only; break in a for-await leaves the event unacked too.
      const other: number[] = [];
      for await (const event of follow(daemon.socket, "ts-g", { group: "other", fromSeq: 4 })) {
        other.push(event.seq);
        if (event.seq === 5) break;
      }
      assert.deepEqual(other, [4, 5]);
      assert.equal(await acked(daemon.socket, "other", "ts-g"), 4);
      const again = follow(daemon.socket, "ts-g", { group: "g", fromSeq: 1 });
      assert.deepEqual(await seqs(again, 1), [5]);
      await again.return();

      // Without a group: from fromSeq, and nothing acked.
      const plain = follow(daemon.socket, "ts-g", { fromSeq: 2 });
      assert.deepEqual(await seqs(plain, 2), [2, 3]);
      await plain.return();
      assert.equal(await acked(daemon.socket, "g", "ts-g"), 4);
    } finally {
      await stopCleanly(daemon);
    }
  });

  for (const how of ["SIGTERM", "kill -9"] as const) {
    it(`a daemon restart (${how}) under a consumer loses nothing and repeats nothing`, async () => {
      const first = await startDaemon();
      let second: Daemon | undefined;
      try {
        await append(first.socket, "ts-r", 3);
        const events = follow(first.socket, "ts-r", { group: "g", giveUpAfterMs: 20_000 });
        assert.deepEqual(await seqs(events, 3), [1, 2, 3]);
        const fourth = events.next(); // acks 3, then waits for 4 across the restart
        await eventually(async () => (await acked(first.socket, "g", "ts-r")) === 3, "3 acked");
        if (how === "kill -9") {
          await eventually(async () => (await ackedOnDisk(first, "g", "ts-r")) === 3, "the ack of 3 on disk", 500);
          await first.kill();
        } else {
          assert.deepEqual(await first.stop(), { code: 0, signal: null }, first.stderr());
        }
        second = await startDaemon({ dir: first.dir }); // the same data and socket
        await append(second.socket, "ts-r", 3);
        const got = await fourth;
        assert.equal(got.done, false);
        assert.equal(got.value?.seq, 4);
        assert.deepEqual(await seqs(events, 2), [5, 6]);
        await events.return(); // on 6: not acked
        assert.equal(await acked(second.socket, "g", "ts-r"), 5);

        // The daemon's own position: the group's next consumer starts on the unacked 6.
        const later = follow(second.socket, "ts-r", { group: "g" });
        assert.deepEqual(await seqs(later, 1), [6]);
        await later.return();
      } finally {
        await stopCleanly(second);
        await first.cleanup();
      }
    });
  }

  it("a second live consumer of a group waits for the first, or gives up", async () => {
    const daemon = await startDaemon();
    try {
      await append(daemon.socket, "ts-b", 3);
      const first = follow(daemon.socket, "ts-b", { group: "g" });
      assert.deepEqual(await seqs(first, 1), [1]);

      const started = performance.now();
      const impatient = follow(daemon.socket, "ts-b", { group: "g", giveUpAfterMs: 300 });
      await assert.rejects(impatient.next(), (err) => err instanceof RpcError && err.code === ErrorCode.Conflict);
      assert.ok(performance.now() - started >= 300);

      const patient = follow(daemon.socket, "ts-b", { group: "g", giveUpAfterMs: 20_000 });
      const firstOfPatient = patient.next(); // retried while the first holds the group
      assert.deepEqual(await seqs(first, 1), [2]); // 1 acked
      await first.return(); // on 2: not acked
      const got = await firstOfPatient;
      assert.equal(got.value?.seq, 2);
      assert.deepEqual(await seqs(patient, 1), [3]);
      await patient.return();
      assert.equal(await acked(daemon.socket, "g", "ts-b"), 2);

      // An aborted follow rejects with the signal's reason, also while it waits for the group.
      const holder = follow(daemon.socket, "ts-b", { group: "g" });
      assert.deepEqual(await seqs(holder, 1), [3]); // after the ack of 2
      const controller = new AbortController();
      const waiting = follow(daemon.socket, "ts-b", { group: "g", signal: controller.signal }).next();
      controller.abort(new Error("enough"));
      await assert.rejects(waiting, /enough/);
      await holder.return();
    } finally {
      await stopCleanly(daemon);
    }
  });
});
