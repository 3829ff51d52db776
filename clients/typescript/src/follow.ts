// follow(): one conversation's events across daemon restarts, optionally as a durable
// consumer group (CONTRACT.md §14), the TypeScript twin of the Python client's follow().

import { connect, type Client } from "./client.js";
import { ConnectionClosedError, DaemonUnavailableError, ErrorCode, RpcError } from "./errors.js";
import type { Event, SubscribeParams } from "./types.js";

/** The first wait before trying again; it doubles up to {@link FOLLOW_BACKOFF_MAX_MS}. */
export const FOLLOW_BACKOFF_MIN_MS = 50;
export const FOLLOW_BACKOFF_MAX_MS = 1_000;

export interface FollowOptions {
  /**
   * A durable consumer group: the daemon keeps its position, so whoever follows with the same
   * group next (after a stop, crash or restart of either side) goes on from there.
   */
  group?: string;
  /**
   * Where to start (default 1). With a `group`, this only places a *new* group (one that has
   * never acked this conversation); a group that has acked resumes after its ack instead.
   */
  fromSeq?: number;
  /** The rest of the `log.query` filter (e.g. `types`). */
  filter?: Omit<SubscribeParams, "conversation_id" | "from_seq" | "group">;
  /** Stops following (the iteration rejects with `signal.reason`), also while reconnecting. */
  signal?: AbortSignal;
  /**
   * How long to go on trying while no daemon answers, or (with a group) while another
   * connection is the group's live subscriber; then the last error is thrown. Default 60 s.
   */
  giveUpAfterMs?: number;
}

/**
 * Every event of `conversationId` (matching `filter`), forever, over its own connection to
 * `target` (a socket path, or a client whose socket path is used; the client itself is left
 * alone, since a group's hold is released only when *its* connection goes).
 *
 * When the daemon restarts (or drops the subscription for falling behind), this reconnects,
 * backing off, and subscribes again after the last event it yielded: no gap, no repeat.
 *
 * With a `group`:
 * - each subscription names the group and the daemon replays from after the group's ack;
 * - an event is acked (`log.ack`, one call per event) when the next one is requested, i.e.
 *   once the loop body that got it has finished: at-least-once. The event a consumer stops on
 *   (`break`, `return()`, an exception in the loop body) is not acked, and is the first the
 *   group's next consumer gets; nothing before it repeats;
 * - an ack lost with the connection is sent again before resubscribing, and no seq is yielded
 *   twice by one `follow()` even if the daemon lost its last acks (kill -9);
 * - while another connection is the group's live subscriber the daemon answers -32001: this
 *   tries again, backing off, until it goes away, and throws that `RpcError` after
 *   `giveUpAfterMs`.
 */
export async function* follow(
  target: string | Client | undefined,
  conversationId: string,
  options: FollowOptions = {},
): AsyncGenerator<Event, void, undefined> {
  const socketPath = typeof target === "object" ? target.socketPath : target;
  const { group, fromSeq, signal } = options;
  const backoff = new Backoff(options.giveUpAfterMs ?? 60_000, signal);
  let lastYielded = 0; // never yield a seq twice
  let acked = 0; // the highest seq the daemon has confirmed for the group
  for (;;) {
    signal?.throwIfAborted();
    let client: Client | undefined;
    try {
      client = await connect(socketPath);
      const ack = async (seq: number): Promise<void> => {
        if (group === undefined || client === undefined) return;
        const callOptions = signal === undefined ? {} : { signal };
        await client.call("log.ack", { group, conversation_id: conversationId, seq }, callOptions);
        acked = Math.max(acked, seq);
      };
      if (lastYielded > acked) await ack(lastYielded); // resumed past it, but the ack got lost
      const params: SubscribeParams = { ...options.filter, conversation_id: conversationId };
      if (group === undefined) {
        params.from_seq = Math.max(fromSeq ?? 1, lastYielded + 1);
      } else {
        params.group = group;
        // Until our first ack the group may still be new (the daemon keeps no position for
        // it), so every resubscription places it again; once it has acked, this is ignored.
        if (fromSeq !== undefined && acked === 0) params.from_seq = Math.max(fromSeq, lastYielded + 1);
      }
      const sub = client.subscribe(params, signal === undefined ? {} : { signal });
      try {
        await sub.ready;
      } catch (err) {
        if (group !== undefined && err instanceof RpcError && err.code === ErrorCode.Conflict) {
          if (!(await backoff.wait())) throw err; // another consumer holds the group
          continue;
        }
        throw err;
      }
      backoff.reset();
      for await (const event of sub) {
        if (event.seq <= lastYielded) continue; // the daemon lost an ack of ours
        lastYielded = event.seq;
        yield event;
        await ack(event.seq); // the next one was asked for: this one is done
      }
      // The iteration ended: the daemon is shutting down (sys.shutdown). Subscribe again.
    } catch (err) {
      if (err instanceof RpcError && err.code === ErrorCode.Overloaded) continue; // fell behind
      if (!(err instanceof DaemonUnavailableError || err instanceof ConnectionClosedError)) throw err;
      if (!(await backoff.wait())) throw err; // the daemon is restarting: try again, later each time
    } finally {
      await client?.close();
    }
  }
}

/** Waits between attempts, doubling, until the failures have lasted `giveUpAfterMs`. */
class Backoff {
  #since: number | undefined;
  #wait = FOLLOW_BACKOFF_MIN_MS;

  constructor(
    private readonly giveUpAfterMs: number,
    private readonly signal: AbortSignal | undefined,
  ) {}

  reset(): void {
    this.#since = undefined;
    this.#wait = FOLLOW_BACKOFF_MIN_MS;
  }

  /** Sleep before the next attempt; false once the failures have lasted too long. */
  async wait(): Promise<boolean> {
    const now = performance.now();
    this.#since ??= now;
    if (now - this.#since > this.giveUpAfterMs) return false;
    await sleep(this.#wait, this.signal);
    this.#wait = Math.min(this.#wait * 2, FOLLOW_BACKOFF_MAX_MS);
    return true;
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
