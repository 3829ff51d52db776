/**
 * The agent runtime (CONTRACT.md section 13): claim ready tasks under a lease, run a handler on
 * each, renew the lease while it runs, and record what it returns (`done`) or throws (`failed`).
 *
 * Everything goes through the daemon's own fencing: a task is ours only while we hold its
 * lease, and every write we make about it names us (`agent_id`), so a runtime that lost a
 * lease (a stall, a network partition, a daemon that expired it) cannot overwrite the work of
 * whoever holds the task now.
 *
 * Clocks (CONTRACT.md section 14): so that `log.compare` orders what the agent writes after
 * everything it had read, the runtime keeps, per conversation, the clock it knows: the merge of
 * the clocks of every event it has read there (in the results of `log.*` calls made through
 * `context.call`, in the answers to its own appends, and given to `context.observe` when read
 * some other way: another client, a subscription). Each `agent.progress` carries that clock
 * with the agent's own counter one up, and so does each event of the agent's own that a handler
 * appends through `context.call` without a `clock` or `caused_by` of its own (with `caused_by`
 * the daemon merges the causes' clocks instead). The daemon records a claim and a result under
 * the agent's id too, so the runtime counts those. When the daemon refuses a clock (-32001
 * naming the agent's previous clock: the runtime restarted, or something else wrote as the
 * agent), the runtime takes in what the refusal says and sends the append again, at most
 * {@link MAX_CLOCK_REFUSALS} times. A runtime's appends in one conversation go one at a time,
 * so its own counters never race each other.
 */

import { randomUUID } from "node:crypto";

import {
  type CallOptions,
  type Client,
  type MethodName,
  type OtherMethod,
  type Params,
  type ParamsOf,
  type ResultOf,
  connect,
} from "./client.js";
import { ConnectionClosedError, DaemonUnavailableError, ErrorCode, RpcError, TimeoutError } from "./errors.js";
import type { AppendResult, Event, Task } from "./types.js";

/** What a handler may return: the task's `outputs` (nothing stands for `{}`). */
export type TaskOutputs = Record<string, unknown>;

/**
 * Works on one task. Its return value becomes the task's `outputs` with status `done`; a throw
 * or a rejection fails the task with `outputs.error` set to the error's message.
 */
export type AgentHandler = (task: Task, context: TaskContext) => TaskOutputs | void | Promise<TaskOutputs | void>;

/** What a handler gets besides the task. */
export interface TaskContext {
  /** The agent's id: the task's `lease_owner`. */
  readonly agentId: string;
  /** The task as claimed. */
  readonly task: Task;
  /**
   * Aborts when the task stops being ours: the agent is stopping (the reason is the agent
   * signal's reason) or the lease was lost ({@link LeaseLostError}). Pass it on to whatever
   * the handler waits for, so the work stops too: once it has aborted, the handler's result
   * is dropped, and the agent's slot stays taken until the handler settles.
   */
  readonly signal: AbortSignal;
  /**
   * Report progress: an `agent.progress` event (visibility `status`, with `agent_id` and
   * `task_id`) in the task's conversation, or in `system` when it has none. Each call carries
   * its own event id, so a retry after a lost connection is written once. Rejects with
   * `signal.reason` once the task is no longer ours.
   */
  progress(data?: Record<string, unknown>): Promise<AppendResult>;
  /**
   * Any other call to the daemon (read a dependency's outputs, create a subtask...) over the
   * agent's connection; rejects with `signal.reason` once the task is no longer ours. The
   * clocks of the events a `log.*` call answers with are taken in, and an event of the agent's
   * own appended without `clock` (nor `caused_by`) is given one (see the module's comment).
   */
  call<M extends MethodName>(method: M, ...args: ContextCallArgs<M>): Promise<ResultOf<M>>;
  call<R = unknown, S extends string = string>(method: OtherMethod<S>, params?: Params): Promise<R>;
  /**
   * Take in the clock of an event the handler read other than through `call` (a
   * subscription, another client): what this agent writes next is ordered after it.
   */
  observe(event: Pick<Event, "conversation_id" | "clock">): void;
}

/** The params of `context.call`: may be left out when none are required. */
export type ContextCallArgs<M extends MethodName> = {} extends ParamsOf<M>
  ? [params?: ParamsOf<M>]
  : [params: ParamsOf<M>];

export interface AgentOptions {
  /** Who claims: the tasks' `owner` and `lease_owner`. */
  agentId: string;
  /** Runs once per claimed task. */
  handler: AgentHandler;
  /** Claim only tasks of these types (default: any type). */
  types?: string[];
  /** The daemon's socket (default: {@link defaultSocketPath}). */
  socketPath?: string;
  /** Seconds of lease per claim and per renewal, 1 to 3600 (default 30). Renewed every `leaseS / 3`. */
  leaseS?: number;
  /** How many handlers may run at once (default 1). */
  concurrency?: number;
  /** Stops the agent: no more claims, every held task released, then the promise resolves. */
  signal?: AbortSignal;
}

/** What the agent did, once it has stopped. */
export interface AgentSummary {
  /** Tasks claimed. */
  claimed: number;
  /** Finished with the handler's outputs (`done`). */
  done: number;
  /** Failed with the handler's error (`failed`). */
  failed: number;
  /** Given back (`pending`, the attempt refunded) when the agent stopped. */
  released: number;
  /** Results not recorded: the lease was lost first, or the daemon refused both outcomes. */
  dropped: number;
}

/** The lease of a task we were working on is gone: its result will not be recorded. */
export class LeaseLostError extends Error {
  override readonly name = "LeaseLostError";
  readonly taskId: string;

  constructor(taskId: string, agentId: string, cause?: unknown) {
    const why = cause instanceof Error ? `: ${cause.message}` : "";
    super(`task ${taskId} is no longer held by ${agentId}${why}`, cause === undefined ? {} : { cause });
    this.taskId = taskId;
  }
}

/** Poll back-off when no task is ready: from this... */
export const POLL_MIN_MS = 50;
/** ...doubling up to this. */
export const POLL_MAX_MS = 1_000;
/** Reconnect back-off after the daemon went away: from POLL_MIN_MS doubling up to this. */
export const RECONNECT_MAX_MS = 2_000;
/** After the stop signal, how long releases and results in flight may wait for the daemon. */
export const STOP_GRACE_MS = 5_000;
/** An append whose clock the daemon refused (-32001 naming our previous clock): sent again at most this often. */
export const MAX_CLOCK_REFUSALS = 3;

/**
 * Run an agent until `signal` aborts: claim ready tasks (`tasks.claim`, at most `concurrency`
 * at a time, lowest priority number and oldest first), run `handler` on each, and record the
 * outcome. Resolves with an {@link AgentSummary} once stopped; rejects if the options are
 * invalid, if the daemon cannot be reached at start, or if the daemon refuses the claim
 * itself (a bad `agentId` or `types`).
 *
 * - **Leases.** Each task is renewed with `tasks.renew` every `leaseS / 3` while its handler
 *   runs, so a handler may take as long as it likes while the agent is alive, and a dead agent's
 *   tasks go back to `pending` within `leaseS`. A renewal answered -32001 means the lease is
 *   lost (it ran out during a stall, or someone took the task): the task is no longer ours,
 *   `context.signal` aborts with {@link LeaseLostError}, and whatever the handler returns is
 *   dropped, since another agent may be working on the task by now. Renewal uses `tasks.renew`
 *   rather than `controller.heartbeat` so that the idle watchdog still sees a handler that
 *   reports nothing; call `context.progress` to show life.
 * - **Results.** `tasks.update` carries our `agent_id` and the version we last saw: if the
 *   task changed meanwhile it is looked up, and the result is written only while we still hold
 *   that same claim. (The daemon checks `agent_id` only while a lease is held; the version also
 *   stops a stale agent from finishing a task whose lease already ran out.) Outputs the daemon
 *   refuses (too big, not JSON) fail the task with the reason instead.
 * - **Polling.** When nothing is ready, the next claim waits 50 ms, doubling up to 1 s; a
 *   claimed task or a finished handler (which may have made others ready) starts again at 50 ms.
 * - **Stopping.** When `signal` aborts: no more claims; every task whose handler is still
 *   running is released (`tasks.release`: back to `pending` at once, the attempt refunded) and
 *   its `context.signal` aborts; results already being written are awaited; then the promise
 *   resolves. It does not wait for handlers (their results would be dropped anyway). If the
 *   daemon does not answer within {@link STOP_GRACE_MS}, the agent stops regardless and the
 *   leases run out on their own.
 * - **The daemon going away.** Calls wait while the runtime reconnects (50 ms doubling up to
 *   2 s), then carry on: renewals resume (after a restart the daemon gives every held lease a
 *   fresh `leaseS`), and results are written. Only the first connection must succeed, so that
 *   a wrong socket path is an error rather than a silent wait.
 *
 * The runtime installs no process signal handlers. In a program, wire SIGTERM to the signal:
 *
 * ```js
 * const stop = new AbortController();
 * for (const sig of ["SIGTERM", "SIGINT"]) process.once(sig, () => stop.abort(new Error(`stopped by ${sig}`)));
 * await runAgent({ agentId: "indexer", handler, signal: stop.signal });  // resolves once released
 * ```
 */
export async function runAgent(options: AgentOptions): Promise<AgentSummary> {
  const agent = new Agent(checkOptions(options));
  return agent.run(options.signal);
}

interface Settings {
  agentId: string;
  handler: AgentHandler;
  types: string[] | undefined;
  socketPath: string | undefined;
  leaseS: number;
  concurrency: number;
}

function checkOptions(options: AgentOptions): Settings {
  if (options === null || typeof options !== "object") throw new TypeError("runAgent needs an options object");
  const { agentId, handler, types, socketPath, leaseS = 30, concurrency = 1, signal } = options;
  if (typeof agentId !== "string" || agentId.length === 0) throw new TypeError("agentId must be a non-empty string");
  if (typeof handler !== "function") throw new TypeError("handler must be a function");
  if (types !== undefined) {
    if (!Array.isArray(types) || types.length === 0 || !types.every((t) => typeof t === "string" && t.length > 0)) {
      throw new TypeError("types must be a non-empty list of task types (leave it out to take any type)");
    }
  }
  if (!Number.isInteger(leaseS) || leaseS < 1 || leaseS > 3600) {
    throw new RangeError(`leaseS must be a whole number of seconds from 1 to 3600, not ${leaseS}`);
  }
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(`concurrency must be a whole number from 1, not ${concurrency}`);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError("signal must be an AbortSignal");
  return { agentId, handler, types: types === undefined ? undefined : [...types], socketPath, leaseS, concurrency };
}

// --- the connection ------------------------------------------------------------------------------

interface LinkCallOptions {
  /** Give up (rejecting with its reason) when it aborts, also while reconnecting. */
  signal?: AbortSignal | undefined;
  /** Give up waiting for a connection when this aborts (default: `signal`). */
  connectSignal?: AbortSignal | undefined;
  /** Call again after a lost connection or a timeout (only for calls that are safe to repeat). */
  retry?: boolean;
  timeoutMs?: number;
}

/** One connection to the daemon, made again with back-off whenever it is lost. */
class Link {
  readonly #socketPath: string | undefined;
  #client: Client | undefined;
  #connecting: Promise<Client> | undefined;
  readonly #closing = new AbortController();

  constructor(socketPath: string | undefined) {
    this.#socketPath = socketPath;
  }

  /** The first connection: fails at once when nothing answers (a wrong path is an error). */
  async open(): Promise<void> {
    this.#client = await connect(this.#socketPath);
  }

  async call<M extends MethodName>(method: M, params: ParamsOf<M>, options: LinkCallOptions = {}): Promise<ResultOf<M>> {
    const { signal, retry = false, connectSignal = signal } = options;
    const callOptions: CallOptions = {};
    if (signal !== undefined) callOptions.signal = signal;
    if (options.timeoutMs !== undefined) callOptions.timeoutMs = options.timeoutMs;
    for (;;) {
      signal?.throwIfAborted();
      const client = await this.#get(connectSignal);
      try {
        const call = client.call as (m: string, p: unknown, o: CallOptions) => Promise<unknown>;
        return (await call.call(client, method, params, callOptions)) as ResultOf<M>;
      } catch (err) {
        if (signal?.aborted) throw err;
        const again = err instanceof ConnectionClosedError || err instanceof TimeoutError;
        if (!retry || !again || this.#closing.signal.aborted) throw err;
      }
    }
  }

  async close(): Promise<void> {
    this.#closing.abort(new ConnectionClosedError(this.#socketPath ?? "the daemon's socket", "the agent stopped"));
    await this.#client?.close();
  }

  #get(signal: AbortSignal | undefined): Promise<Client> {
    const client = this.#client;
    if (client !== undefined && !client.isClosed) return Promise.resolve(client);
    this.#connecting ??= this.#reconnect().finally(() => {
      this.#connecting = undefined;
    });
    return signal === undefined ? this.#connecting : raceAbort(this.#connecting, signal);
  }

  async #reconnect(): Promise<Client> {
    let wait = POLL_MIN_MS;
    for (;;) {
      this.#closing.signal.throwIfAborted();
      try {
        this.#client = await connect(this.#socketPath);
        return this.#client;
      } catch (err) {
        if (!(err instanceof DaemonUnavailableError)) throw err;
      }
      await sleep(wait, this.#closing.signal);
      wait = Math.min(wait * 2, RECONNECT_MAX_MS);
    }
  }
}

// --- clocks --------------------------------------------------------------------------------------

type Clock = Record<string, number>;

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** An event as the daemon gives it: an object with `conversation_id` and `clock`. */
function isEvent(value: unknown): value is { conversation_id: string; clock: Record<string, unknown> } {
  return isRecord(value) && typeof value.conversation_id === "string" && isRecord(value.clock);
}

/**
 * The events in the result of a `log.*` call: the result itself (`log.get`), its `events`
 * (`log.tail`, `log.query`...), and `event`, `upstream` and `downstream` (`log.causality`).
 */
function eventsIn(result: unknown): { conversation_id: string; clock: Record<string, unknown> }[] {
  if (!isRecord(result)) return [];
  if (isEvent(result)) return [result];
  const found = [];
  for (const key of ["event", "events", "upstream", "downstream"]) {
    const value = result[key];
    for (const item of Array.isArray(value) ? value : [value]) if (isEvent(item)) found.push(item);
  }
  return found;
}

/**
 * The clock the runtime knows, per conversation: the merge of the clock of every event it has
 * read there, and its own entry (how far its own counter has gone).
 */
class Clocks {
  readonly #writer: string;
  readonly #known = new Map<string, Clock>();

  constructor(writer: string) {
    this.#writer = writer;
  }

  known(conversationId: string): Clock {
    return { ...this.#known.get(conversationId) };
  }

  merge(conversationId: string, clock: Record<string, unknown>): void {
    let known = this.#known.get(conversationId);
    if (known === undefined) this.#known.set(conversationId, (known = {}));
    for (const [writer, n] of Object.entries(clock)) {
      if (Number.isSafeInteger(n) && (n as number) > (known[writer] ?? 0)) known[writer] = n as number;
    }
  }

  /** Take in the clock of an event read (whether it was one). */
  observe(event: unknown): boolean {
    if (!isEvent(event)) return false;
    this.merge(event.conversation_id, event.clock);
    return true;
  }

  /**
   * The daemon wrote an event under our id that we do not read (a claim's `task.claimed`, a
   * result's `task.updated`): our next own counter is one further on. (Counting one too many is
   * harmless, a counter may skip; one too few costs a refused append.)
   */
  countOwn(conversationId: string): void {
    const known = this.known(conversationId);
    this.merge(conversationId, { [this.#writer]: (known[this.#writer] ?? 0) + 1 });
  }

  /**
   * A -32001 about a clock we sent (in one of `conversationIds`): take in the writer's previous
   * clock and counter it names, so the next try is past them. False when it was some other
   * conflict (`expected_seq`...), or about a clock that was not ours.
   */
  refused(err: unknown, conversationIds: ReadonlySet<string>): boolean {
    if (!(err instanceof RpcError) || err.code !== ErrorCode.Conflict || !isRecord(err.data)) return false;
    const { writer, conversation_id: conversationId, previous, floor } = err.data;
    if (writer !== this.#writer || typeof conversationId !== "string" || !conversationIds.has(conversationId)) {
      return false;
    }
    if (!isRecord(previous) || !Number.isSafeInteger(floor)) return false;
    this.merge(conversationId, previous);
    this.merge(conversationId, { [this.#writer]: floor });
    return true;
  }
}

// --- the runtime ---------------------------------------------------------------------------------

type State = "working" | "finishing" | "over";

interface Held {
  task: Task;
  /** The version our next write expects (a claim bumps it; renewals do not). */
  version: number;
  state: State;
  /** Aborts when the task stops being ours (the handler's `context.signal`). */
  stop: AbortController;
  renewal: NodeJS.Timeout | undefined;
  finishing: Promise<void> | undefined;
}

type Outcome = { status: "done"; outputs: TaskOutputs } | { status: "failed"; outputs: { error: string } };

class Agent {
  readonly #s: Settings;
  readonly #link: Link;
  readonly #summary: AgentSummary = { claimed: 0, done: 0, failed: 0, released: 0, dropped: 0 };
  readonly #held = new Map<string, Held>();
  readonly #slots = new Set<Promise<void>>();
  /** Aborts on the stop signal: no more claims. */
  readonly #stopping = new AbortController();
  /** Aborts STOP_GRACE_MS after the stop signal: the last calls give up. */
  readonly #grace = new AbortController();
  #wake: (() => void) | undefined;
  readonly #clocks: Clocks;
  /** Per conversation, the end of its line of appends: they go one at a time. */
  readonly #appending = new Map<string, Promise<void>>();

  constructor(settings: Settings) {
    this.#s = settings;
    this.#link = new Link(settings.socketPath);
    this.#clocks = new Clocks(settings.agentId);
  }

  async run(signal: AbortSignal | undefined): Promise<AgentSummary> {
    if (signal?.aborted) return { ...this.#summary };
    await this.#link.open();
    const onAbort = (): void => this.#stop(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort(); // while connecting
    let failure: { error: unknown } | undefined;
    try {
      await this.#claimLoop();
    } catch (err) {
      failure = { error: err };
      this.#stop(err);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      try {
        await this.#shutdown();
      } finally {
        await this.#link.close();
      }
    }
    if (failure !== undefined) throw failure.error;
    return { ...this.#summary };
  }

  #stop(reason: unknown): void {
    if (this.#stopping.signal.aborted) return;
    this.#stopping.abort(reason);
    const grace = setTimeout(
      () => this.#grace.abort(new Error(`the daemon did not answer within ${STOP_GRACE_MS} ms of the stop`)),
      STOP_GRACE_MS,
    );
    grace.unref();
    this.#wake?.();
  }

  get #stopped(): boolean {
    return this.#stopping.signal.aborted;
  }

  // --- claiming ----------------------------------------------------------------------------------

  async #claimLoop(): Promise<void> {
    let backoff = POLL_MIN_MS;
    const params: ParamsOf<"tasks.claim"> = { agent_id: this.#s.agentId, lease_s: this.#s.leaseS };
    if (this.#s.types !== undefined) params.types = this.#s.types;
    while (!this.#stopped) {
      if (this.#slots.size >= this.#s.concurrency) {
        await this.#pause(Infinity); // until a handler settles, or the stop
        continue;
      }
      let task: Task | null;
      try {
        // A claim on the wire is not abandoned at the stop: a task the daemon granted must come
        // back to us, to be released (only the grace period ends it). Waiting for a connection is.
        ({ task } = await this.#link.call("tasks.claim", params, {
          signal: this.#grace.signal,
          connectSignal: this.#stopping.signal,
          retry: true,
        }));
      } catch (err) {
        if (this.#stopped) return;
        if (!transient(err)) throw err;
        await this.#pause(backoff);
        backoff = Math.min(backoff * 2, POLL_MAX_MS);
        continue;
      }
      if (task !== null) {
        this.#summary.claimed += 1;
        this.#start(task);
        backoff = POLL_MIN_MS;
        continue;
      }
      const woken = await this.#pause(backoff);
      backoff = woken ? POLL_MIN_MS : Math.min(backoff * 2, POLL_MAX_MS);
    }
  }

  /** Wait `ms`, or until woken (a slot freed, the stop): true when woken. */
  #pause(ms: number): Promise<boolean> {
    if (this.#stopped) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = ms === Infinity ? undefined : setTimeout(() => done(false), ms);
      const done = (woken: boolean): void => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve(woken);
      };
      this.#wake = () => done(true);
    });
  }

  // --- working -----------------------------------------------------------------------------------

  #start(task: Task): void {
    const held: Held = {
      task,
      version: task.version ?? 1,
      state: "working",
      stop: new AbortController(),
      renewal: undefined,
      finishing: undefined,
    };
    this.#held.set(task.id, held);
    this.#clocks.countOwn(task.conversation_id ?? "system"); // its task.claimed
    if (this.#stopped) return; // claimed as the stop came: released by the shutdown, never run
    const slot = this.#work(held)
      .catch(() => {}) // #work handles its own failures; never an unhandled rejection
      .finally(() => {
        this.#slots.delete(slot);
        this.#wake?.();
      });
    this.#slots.add(slot);
  }

  async #work(held: Held): Promise<void> {
    this.#scheduleRenewal(held);
    const outcome = await this.#runHandler(held);
    clearTimeout(held.renewal);
    if (held.state !== "working") return; // lost or released meanwhile: the result is dropped
    held.state = "finishing";
    held.finishing = this.#finish(held, outcome);
    await held.finishing;
  }

  async #runHandler(held: Held): Promise<Outcome> {
    const { task } = held;
    const context: TaskContext = {
      agentId: this.#s.agentId,
      task,
      signal: held.stop.signal,
      progress: (data = {}) => this.#progress(held, data),
      call: ((method: string, params: Params = {}) => this.#call(held, method, params)) as TaskContext["call"],
      observe: (event) => {
        this.#clocks.observe(event);
      },
    };
    try {
      const value: unknown = await this.#s.handler(task, context);
      if (value === undefined) return { status: "done", outputs: {} };
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        const kind = value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
        return { status: "failed", outputs: { error: `the handler returned ${kind}; outputs must be an object` } };
      }
      return { status: "done", outputs: value as TaskOutputs };
    } catch (err) {
      return { status: "failed", outputs: { error: messageOf(err) } };
    }
  }

  #progress(held: Held, data: Record<string, unknown>): Promise<AppendResult> {
    const signal = held.stop.signal;
    if (signal.aborted) return Promise.reject(signal.reason);
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      return Promise.reject(new TypeError("progress data must be an object"));
    }
    const { task } = held;
    const event: ParamsOf<"log.append"> = {
      id: randomUUID(), // a retry after a lost connection is not written twice
      conversation_id: task.conversation_id ?? "system",
      type: "agent.progress",
      visibility: "status",
      agent_id: this.#s.agentId,
      task_id: task.id,
      data,
    };
    return this.#append("log.append", event, { signal, retry: true }) as Promise<AppendResult>;
  }

  /** A handler's `context.call`: appends get clocks, reads teach them. */
  async #call(held: Held, method: string, params: Params): Promise<unknown> {
    const signal = held.stop.signal;
    signal.throwIfAborted();
    if (method === "log.append" || method === "log.append_many") return this.#append(method, params, { signal });
    const result = await this.#link.call(method as MethodName, params as never, { signal });
    if (method.startsWith("log.")) for (const event of eventsIn(result)) this.#clocks.observe(event);
    return result;
  }

  /**
   * `log.append` (`params` is the event) or `log.append_many` (`params.events`), each event of
   * the agent's own without `clock` or `caused_by` given the clock the runtime knows in its
   * conversation, its own counter one up; sent again (at most MAX_CLOCK_REFUSALS times) after
   * the daemon refused such a clock, with what the refusal says taken in.
   */
  async #append(method: "log.append" | "log.append_many", params: object, options: LinkCallOptions): Promise<unknown> {
    const many = method === "log.append_many";
    const given = many ? (params as { events?: unknown }).events : [params];
    const events: unknown[] = Array.isArray(given) ? given : [];
    const stamped = this.#stamped(events);
    return this.#oneAtATime([...stamped], async () => {
      for (let refusals = 0; ; refusals++) {
        const sent = stamped.size > 0 ? this.#stamp(events, stamped) : events;
        const callParams = stamped.size === 0 ? params : many ? { ...params, events: sent } : sent[0];
        let result: unknown;
        try {
          result = await this.#link.call(method, callParams as never, options);
        } catch (err) {
          if (refusals < MAX_CLOCK_REFUSALS && this.#clocks.refused(err, stamped)) continue;
          throw err;
        }
        const answers: unknown[] = many && Array.isArray(result) ? result : [result];
        events.forEach((event, i) => {
          const answer = answers[i];
          if (!isRecord(event) || typeof event.conversation_id !== "string") return;
          if (isRecord(answer) && isRecord(answer.clock)) this.#clocks.merge(event.conversation_id, answer.clock);
        });
        return result;
      }
    });
  }

  /**
   * The conversations whose events of ours we give clocks: those where every event of ours has
   * neither `clock` nor `caused_by` (a clock sent is stored as sent: the daemon would not merge
   * the causes' clocks into it, so those it computes itself).
   */
  #stamped(events: unknown[]): Set<string> {
    const ours = new Map<string, boolean>();
    for (const event of events) {
      if (!isRecord(event) || event.agent_id !== this.#s.agentId || typeof event.conversation_id !== "string") continue;
      const caused = Array.isArray(event.caused_by) && event.caused_by.length > 0;
      const bare = (event.clock === undefined || event.clock === null) && !caused;
      ours.set(event.conversation_id, (ours.get(event.conversation_id) ?? true) && bare);
    }
    return new Set([...ours].filter(([, bare]) => bare).map(([id]) => id));
  }

  /** `events`, ours in `stamped` conversations with their clocks, one after another. */
  #stamp(events: unknown[], stamped: Set<string>): unknown[] {
    const drafts = new Map([...stamped].map((id) => [id, this.#clocks.known(id)]));
    return events.map((event) => {
      if (!isRecord(event) || event.agent_id !== this.#s.agentId || typeof event.conversation_id !== "string") {
        return event;
      }
      const draft = drafts.get(event.conversation_id);
      if (draft === undefined) return event;
      draft[this.#s.agentId] = (draft[this.#s.agentId] ?? 0) + 1;
      return { ...event, clock: { ...draft } };
    });
  }

  /** Run `fn` once every append before it in these conversations has settled, and before any after it. */
  async #oneAtATime<T>(conversationIds: string[], fn: () => Promise<T>): Promise<T> {
    if (conversationIds.length === 0) return fn();
    const before = conversationIds.map((id) => this.#appending.get(id));
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    for (const id of conversationIds) this.#appending.set(id, mine);
    try {
      await Promise.all(before);
      return await fn();
    } finally {
      release();
      for (const id of conversationIds) if (this.#appending.get(id) === mine) this.#appending.delete(id);
    }
  }

  #scheduleRenewal(held: Held): void {
    const every = (this.#s.leaseS * 1000) / 3;
    const renew = async (): Promise<void> => {
      if (held.state !== "working") return;
      try {
        await this.#link.call(
          "tasks.renew",
          { id: held.task.id, agent_id: this.#s.agentId, lease_s: this.#s.leaseS },
          { signal: held.stop.signal, timeoutMs: Math.max(every, 1000) },
        );
      } catch (err) {
        if (err instanceof RpcError && (err.code === ErrorCode.Conflict || err.code === ErrorCode.NotFound)) {
          this.#lose(held, err);
          return;
        }
        // Anything else (the connection lost, a timeout, a storage fault): try again next time.
      }
      if (held.state === "working") held.renewal = setTimeout(() => void renew(), every);
    };
    held.renewal = setTimeout(() => void renew(), every);
  }

  /** The task is not ours any more: stop working on it, and drop its result. */
  #lose(held: Held, cause: unknown): void {
    if (held.state !== "working") return;
    held.state = "over";
    clearTimeout(held.renewal);
    this.#held.delete(held.task.id);
    this.#summary.dropped += 1;
    held.stop.abort(new LeaseLostError(held.task.id, this.#s.agentId, cause));
  }

  /** Record the outcome, fenced by our agent_id and the version we last saw. */
  async #finish(held: Held, outcome: Outcome): Promise<void> {
    const { task } = held;
    const options: LinkCallOptions = { signal: this.#grace.signal, retry: true };
    try {
      for (;;) {
        const patch: ParamsOf<"tasks.update"> = {
          id: task.id,
          agent_id: this.#s.agentId,
          expected_version: held.version,
          status: outcome.status,
          outputs: outcome.outputs,
        };
        try {
          await this.#link.call("tasks.update", patch, options);
          this.#summary[outcome.status] += 1;
          this.#clocks.countOwn(task.conversation_id ?? "system"); // its task.updated
          return;
        } catch (err) {
          if (err instanceof RpcError && err.code === ErrorCode.Conflict) {
            // Something changed the task since we claimed it. Ours still, the same claim: write
            // again at its version. Already what we wrote (a retry after a lost answer): done.
            const now = await this.#link.call("tasks.get", { id: task.id }, options);
            if (now.status === "running" && now.lease_owner === this.#s.agentId && now.claimed_at === task.claimed_at) {
              held.version = now.version ?? held.version;
              continue;
            }
            if (now.status === outcome.status && now.version === held.version + 1 && now.owner === this.#s.agentId) {
              this.#summary[outcome.status] += 1;
              this.#clocks.countOwn(task.conversation_id ?? "system"); // its task.updated
              return;
            }
            this.#summary.dropped += 1; // someone else's now
            return;
          }
          const refused = err instanceof RpcError ? err.code === ErrorCode.InvalidParams : err instanceof TypeError;
          if (outcome.status === "done" && refused) {
            // The daemon (or JSON) refused these outputs: the task fails with the reason instead.
            outcome = { status: "failed", outputs: { error: `the outputs could not be recorded: ${messageOf(err)}` } };
            continue;
          }
          throw err;
        }
      }
    } catch {
      // Not recorded (the daemon refused, or never came back in time): the lease runs out and
      // the task goes back to pending, or fails after max_attempts.
      this.#summary.dropped += 1;
    } finally {
      held.state = "over";
      this.#held.delete(task.id);
    }
  }

  // --- stopping ----------------------------------------------------------------------------------

  async #shutdown(): Promise<void> {
    const releases: Promise<void>[] = [];
    const finishing: Promise<void>[] = [];
    for (const held of this.#held.values()) {
      if (held.state === "working") releases.push(this.#release(held));
      else if (held.finishing !== undefined) finishing.push(held.finishing);
    }
    await Promise.all([...releases, ...finishing]);
  }

  async #release(held: Held): Promise<void> {
    held.state = "over";
    clearTimeout(held.renewal);
    this.#held.delete(held.task.id);
    held.stop.abort(this.#stopping.signal.reason);
    try {
      await this.#link.call(
        "tasks.release",
        { id: held.task.id, agent_id: this.#s.agentId },
        { signal: this.#grace.signal, retry: true },
      );
      this.#summary.released += 1;
    } catch {
      // Not ours any more (-32001), or no daemon in time: either way its lease ends without us.
    }
  }
}

// --- helpers -------------------------------------------------------------------------------------

/** Errors a claim may meet that pass: the daemon busy, or a fault it may recover from. */
function transient(err: unknown): boolean {
  if (err instanceof ConnectionClosedError || err instanceof TimeoutError || err instanceof DaemonUnavailableError) {
    return true;
  }
  return (
    err instanceof RpcError &&
    (err.code === ErrorCode.Overloaded || err.code === ErrorCode.StorageFailure || err.code === ErrorCode.InternalError)
  );
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  if (typeof err === "string") return err;
  try {
    return JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}
