// Compile-time checks of the typed API: `tsc -p .` (the first half of `npm test`) fails if
// the overloads stop catching these. The runtime test only makes the file count as a test.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  type AgentSummary,
  type AppendResult,
  type Client,
  type Event,
  type Health,
  type Page,
  type Subscription,
  type Task,
  runAgent,
} from "../src/index.js";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function expectType<T extends true>(_: T): void {}

// Never called: only type-checked.
export async function typed(client: Client): Promise<void> {
  const health = await client.call("sys.health");
  expectType<Equal<typeof health, Health>>(true);

  const ack = await client.call("log.append", { conversation_id: "c", type: "a.b", data: { x: 1 } });
  expectType<Equal<typeof ack, AppendResult>>(true);

  const page = await client.call("log.query", { conversation_id: "c" }, { timeoutMs: 100 });
  expectType<Equal<typeof page, Page>>(true);

  const acks = await client.call("log.append_many", { events: [{ conversation_id: "c", type: "a.b" }] });
  expectType<Equal<typeof acks, AppendResult[]>>(true);

  // Methods outside the schema: any string, the result is unknown unless you say.
  const anything = await client.call("x.future_method", { a: 1 });
  expectType<Equal<typeof anything, unknown>>(true);
  const said = await client.call<{ n: number }>("x.future_method");
  expectType<Equal<typeof said, { n: number }>>(true);
  const name: string = "sys.health";
  const dynamic = await client.call(name, {});
  expectType<Equal<typeof dynamic, unknown>>(true);

  // @ts-expect-error: log.append needs conversation_id and type
  await client.call("log.append", { type: "a.b" });
  // @ts-expect-error: log.append's params are required
  await client.call("log.append");
  // @ts-expect-error: wrong type for a known field
  await client.call("log.tail", { conversation_id: "c", limit: "20" });
  // @ts-expect-error: visibility is an enum
  await client.call("log.append", { conversation_id: "c", type: "a.b", visibility: "everyone" });
  // @ts-expect-error: sys.health takes no params
  await client.call("sys.health", { verbose: true });

  client.notify("controller.heartbeat", { conversation_id: "c" });
  // @ts-expect-error: heartbeat needs conversation_id
  client.notify("controller.heartbeat", { agent_id: "a" });
  // @ts-expect-error: heartbeat's params are required
  client.notify("controller.heartbeat");
  client.notify("sys.health");
  client.notify("x.anything", { free: "form" });

  const sub: Subscription = client.subscribe({ conversation_id: "c", from_seq: 1 });
  for await (const event of sub) {
    expectType<Equal<typeof event, Event>>(true);
    break;
  }
  // @ts-expect-error: not a filter field
  client.subscribe({ conversation: "c" });
}

// Never called: only type-checked.
export async function agentTyped(signal: AbortSignal): Promise<void> {
  const summary = await runAgent({
    agentId: "a",
    signal,
    handler: async (task, ctx) => {
      expectType<Equal<typeof task, Task>>(true);
      const ack = await ctx.progress({ pct: 10 });
      expectType<Equal<typeof ack, AppendResult>>(true);
      expectType<Equal<typeof ctx.signal, AbortSignal>>(true);
      return { ok: true };
    },
  });
  expectType<Equal<typeof summary, AgentSummary>>(true);
  await runAgent({ agentId: "a", handler: () => {} }); // nothing returned: outputs {}
  await runAgent({ agentId: "a", handler: () => ({ n: 1 }), types: ["t"], leaseS: 5, concurrency: 2, socketPath: "/s" });
  // @ts-expect-error: outputs are an object
  await runAgent({ agentId: "a", handler: () => 42 });
  // @ts-expect-error: the handler is required
  await runAgent({ agentId: "a" });
  // @ts-expect-error: progress takes an object
  await runAgent({ agentId: "a", handler: (_t, ctx) => void ctx.progress("half way") });
}

test("the typed API compiles (checked by tsc)", () => {
  assert.equal(typeof typed, "function");
  assert.equal(typeof agentTyped, "function");
});
