/**
 * The sidecar client: JSON-RPC 2.0 over the daemon's Unix stream socket, one JSON message per
 * line (NDJSON). One connection carries many calls at once, matched by id, and any number of
 * subscriptions, fed by the `log.event` notifications that carry their id.
 *
 * No runtime dependencies: `node:net` only.
 */

import net from "node:net";
import os from "node:os";
import path from "node:path";

import { ConnectionClosedError, DaemonUnavailableError, ErrorCode, RpcError, TimeoutError } from "./errors.js";
import type { Event, Methods, SubscribeParams } from "./types.js";

/** Every method the daemon's schema knows. */
export type MethodName = keyof Methods;
/** The params a method takes. */
export type ParamsOf<M extends MethodName> = Methods[M]["params"];
/** What a method answers. */
export type ResultOf<M extends MethodName> = Methods[M]["result"];
/** Named params (the daemon takes params as a JSON object). */
export type Params = Record<string, unknown>;

/** The arguments after the method name: params may be left out when none are required. */
export type CallArgs<M extends MethodName> =
  {} extends ParamsOf<M>
    ? [params?: ParamsOf<M>, options?: CallOptions]
    : [params: ParamsOf<M>, options?: CallOptions];

/** The params of a notification: may be left out when none are required. */
export type NotifyArgs<M extends MethodName> = {} extends ParamsOf<M> ? [params?: ParamsOf<M>] : [params: ParamsOf<M>];

/** A method name the schema does not know (so typos in known names are still caught). */
export type OtherMethod<S extends string> = S extends MethodName ? never : S;

export interface CallOptions {
  /** Give up after this long (default: the client's, 30 s); `Infinity`: wait as long as it takes. */
  timeoutMs?: number;
  /** Give up when this signal aborts; the call rejects with `signal.reason`. */
  signal?: AbortSignal;
}

export interface ConnectOptions {
  /** The default `timeoutMs` of every call on this client (30 s). */
  timeoutMs?: number;
  /** How long connecting may take (10 s). */
  connectTimeoutMs?: number;
}

export interface SubscribeOptions {
  /** Timeout of the `log.subscribe` call itself (the events may be as far apart as they like). */
  timeoutMs?: number;
  /** Ends the subscription (and unsubscribes) when it aborts; iteration rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Called with every notification the daemon pushes (`log.event`, `narrator.delta`, ...). */
export type NotificationListener = (method: string, params: unknown) => void;

export const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const MAX_TIMER_MS = 2_147_483_647; // setTimeout's limit; anything longer means "no timeout"

/**
 * `$SIDECAR_SOCKET`, else `$XDG_RUNTIME_DIR/sidecar/sidecar.sock`, else
 * `/tmp/sidecar-$UID/sidecar.sock`: the daemon's own default.
 */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SIDECAR_SOCKET) return env.SIDECAR_SOCKET;
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, "sidecar", "sidecar.sock");
  const uid = typeof process.getuid === "function" ? process.getuid() : os.userInfo().uid;
  return `/tmp/sidecar-${uid}/sidecar.sock`;
}

/**
 * Connect to the daemon on `socketPath` (default: {@link defaultSocketPath}). Rejects with a
 * {@link DaemonUnavailableError} naming the path when nothing answers there.
 */
export function connect(socketPath?: string, options: ConnectOptions = {}): Promise<Client> {
  const target = socketPath || defaultSocketPath();
  return new Promise<Client>((resolve, reject) => {
    const socket = net.createConnection({ path: target });
    const limit = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const fail = (err: unknown): void => {
      clearTimeout(timer);
      socket.removeListener("connect", onConnect);
      socket.removeListener("error", fail);
      socket.destroy();
      reject(new DaemonUnavailableError(target, err));
    };
    const onConnect = (): void => {
      clearTimeout(timer);
      socket.removeListener("error", fail);
      resolve(new Client(socket, target, options));
    };
    const timer = setTimeout(() => {
      const err: NodeJS.ErrnoException = new Error(`connect timed out after ${limit} ms`);
      err.code = "ETIMEDOUT";
      fail(err);
    }, limit);
    socket.once("error", fail);
    socket.once("connect", onConnect);
  });
}

interface Hooks {
  /** Runs synchronously when the answer is parsed, before the promise resolves. */
  result?(result: unknown): void;
  /** Runs once however the call ends (answer, error, timeout, abort, lost connection). */
  done?(): void;
  /** The caller stopped waiting (timeout, abort) before the answer came. */
  abandoned?(id: number): void;
}

interface Pending {
  resolve(value: unknown): void;
  reject(reason: unknown): void;
  settle(): void;
  hooks: Hooks | undefined;
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function toRpcError(error: unknown): RpcError {
  if (!isObject(error)) {
    return new RpcError(ErrorCode.InternalError, `malformed error object: ${JSON.stringify(error)}`);
  }
  const code = typeof error.code === "number" ? error.code : ErrorCode.InternalError;
  const message = typeof error.message === "string" ? error.message : "";
  return new RpcError(code, message, error.data);
}

/** A connection to the daemon. Make one with {@link connect}. */
export class Client {
  /** The socket this client is connected to. */
  readonly socketPath: string;
  /** Resolves once the connection is gone, whoever closed it. */
  readonly closed: Promise<void>;

  #socket: net.Socket;
  #timeoutMs: number;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  #subs = new Map<number, Subscription>();
  #subscribing = 0; // log.subscribe calls in flight
  #orphans: Array<{ method: string; params: Json }> = []; // notifications of not-yet-registered subscriptions
  #lateSubscribes = new Set<number>(); // ids of abandoned log.subscribe calls
  #listeners = new Set<NotificationListener>();
  #buffer = "";
  #closedError: ConnectionClosedError | undefined;
  #serverError: RpcError | undefined; // an error the daemon sent with id null (e.g. just before hanging up)
  #resolveClosed!: () => void;

  /** @internal Use {@link connect}. */
  constructor(socket: net.Socket, socketPath: string, options: ConnectOptions = {}) {
    this.socketPath = socketPath;
    this.#socket = socket;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.closed = new Promise<void>((resolve) => {
      this.#resolveClosed = resolve;
    });
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.#onData(chunk));
    socket.on("end", () => this.#lost("the daemon hung up"));
    socket.on("error", (err: Error) => this.#lost(err.message, err));
    socket.on("close", () => {
      this.#lost();
      this.#resolveClosed();
    });
  }

  /** True once the connection is gone (or closing). */
  get isClosed(): boolean {
    return this.#closedError !== undefined;
  }

  /**
   * Call `method` with named `params`; resolves with the result, rejects with {@link RpcError}
   * on a JSON-RPC error, {@link TimeoutError} after `timeoutMs`, `signal.reason` on abort, or
   * {@link ConnectionClosedError} when the connection goes away first. Calls are multiplexed:
   * as many as you like may be in flight at once.
   */
  call<M extends MethodName>(method: M, ...args: CallArgs<M>): Promise<ResultOf<M>>;
  call<R = unknown, S extends string = string>(
    method: OtherMethod<S>,
    params?: Params,
    options?: CallOptions,
  ): Promise<R>;
  call(method: string, params?: unknown, options?: CallOptions): Promise<unknown> {
    return this.#request(method, params, options ?? {}, undefined);
  }

  /** Send a notification: no answer is owed, none comes. Throws if the connection is gone. */
  notify<M extends MethodName>(method: M, ...args: NotifyArgs<M>): void;
  notify<S extends string>(method: OtherMethod<S>, params?: Params): void;
  notify(method: string, params?: unknown): void {
    if (this.#closedError) throw this.#closedError;
    checkParams(params);
    this.#socket.write(JSON.stringify({ jsonrpc: "2.0", method, params: params ?? {} }) + "\n");
  }

  /**
   * The events matching `params` (the filter of `log.query`, and `from_seq` to replay history
   * first), as an async iterable: history first, then live events, in seq order with no gap.
   *
   * The `log.subscribe` request is sent at once; `ready` resolves with the subscription id once
   * the daemon has answered (events that arrive before you iterate are kept). Leaving a
   * `for await` loop (or `return()`) sends `log.unsubscribe`. The iteration ends when the
   * daemon shuts down (`sys.shutdown`), and rejects with `RpcError(-32005)` (data: the
   * `log.overflow` params, with where to resume) if the daemon dropped the subscription for
   * falling behind, or with {@link ConnectionClosedError} if the connection goes away.
   */
  subscribe(params: SubscribeParams = {}, options: SubscribeOptions = {}): Subscription {
    const sub = new Subscription((s) => this.#unsubscribe(s));
    this.#subscribing += 1;
    const hooks: Hooks = {
      // Events may follow the answer in the same chunk: register before anything else runs.
      result: (result) => {
        const sid = isObject(result) ? result.subscription : undefined;
        if (typeof sid !== "number") return;
        sub._setId(sid);
        if (sub._left) {
          this.#notifyQuietly("log.unsubscribe", { subscription: sid });
          return;
        }
        this.#subs.set(sid, sub);
        if (this.#orphans.length > 0) {
          const mine = this.#orphans.filter((o) => o.params.subscription === sid);
          this.#orphans = this.#orphans.filter((o) => o.params.subscription !== sid);
          for (const o of mine) this.#route(sub, o.method, o.params);
        }
      },
      done: () => {
        this.#subscribing -= 1;
        if (this.#subscribing === 0) this.#orphans = [];
      },
      abandoned: (id) => {
        this.#lateSubscribes.add(id);
      },
    };
    const callOptions: CallOptions = {};
    if (options.timeoutMs !== undefined) callOptions.timeoutMs = options.timeoutMs;
    if (options.signal !== undefined) callOptions.signal = options.signal;
    const ready = this.#request("log.subscribe", params, callOptions, hooks).then((result) => {
      const sid = isObject(result) ? result.subscription : undefined;
      if (typeof sid !== "number") {
        throw new RpcError(ErrorCode.InternalError, `log.subscribe answered without a subscription id`, result);
      }
      return sid;
    });
    sub._start(ready, options.signal);
    return sub;
  }

  /** Listen to every notification the daemon pushes; returns a function that stops listening. */
  onNotification(listener: NotificationListener): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * Close the connection. Pending calls reject and subscriptions end with
   * {@link ConnectionClosedError}; what was already written (e.g. notifications) is flushed
   * first. Resolves once the socket is closed.
   */
  close(): Promise<void> {
    if (this.#closedError === undefined) {
      this.#fail(new ConnectionClosedError(this.socketPath, "closed by the client"));
      const socket = this.#socket;
      socket.end(() => socket.destroy());
      setTimeout(() => socket.destroy(), 1000).unref(); // a daemon that does not read (stopped)
    }
    return this.closed;
  }

  /** Let the process exit even though this connection is open. */
  unref(): this {
    this.#socket.unref();
    return this;
  }

  /** Undo {@link unref}. */
  ref(): this {
    this.#socket.ref();
    return this;
  }

  // --- requests ------------------------------------------------------------------------------

  #request(method: string, params: unknown, options: CallOptions, hooks: Hooks | undefined): Promise<unknown> {
    return new Promise<unknown>((resolve, reject) => {
      const refuse = (err: unknown): void => {
        hooks?.done?.();
        reject(err);
      };
      if (this.#closedError) return refuse(this.#closedError);
      const { signal } = options;
      if (signal?.aborted) return refuse(signal.reason);
      let line: string;
      const id = this.#nextId++;
      try {
        checkParams(params);
        line = JSON.stringify({ jsonrpc: "2.0", id, method, params: params ?? {} }) + "\n";
      } catch (err) {
        return refuse(err);
      }
      const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => abandon(signal?.reason);
      const settle = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        hooks?.done?.();
      };
      const entry: Pending = { resolve, reject, settle, hooks };
      const abandon = (reason: unknown): void => {
        if (this.#pending.get(id) !== entry) return; // answered meanwhile
        this.#pending.delete(id);
        settle();
        hooks?.abandoned?.(id);
        reject(reason);
      };
      this.#pending.set(id, entry);
      if (Number.isFinite(timeoutMs) && timeoutMs <= MAX_TIMER_MS) {
        timer = setTimeout(() => abandon(new TimeoutError(method, timeoutMs, this.socketPath)), Math.max(0, timeoutMs));
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#socket.write(line);
    });
  }

  #notifyQuietly(method: string, params: Json): void {
    if (this.#closedError) return;
    try {
      this.#socket.write(JSON.stringify({ jsonrpc: "2.0", method, params }) + "\n");
    } catch {
      // the connection is going away: the daemon drops the subscription with it
    }
  }

  async #unsubscribe(sub: Subscription): Promise<void> {
    const sid = sub.id;
    if (sid === undefined) return; // not answered yet: the answer's hook unsubscribes
    if (this.#subs.get(sid) !== sub) return; // already ended on the daemon's side, or by the connection
    this.#subs.delete(sid);
    if (this.#closedError) return;
    try {
      await this.#request("log.unsubscribe", { subscription: sid }, {}, undefined);
    } catch {
      // gone already (overflow crossing our request) or the connection went away: either way, done
    }
  }

  // --- reading ---------------------------------------------------------------------------------

  #onData(chunk: string): void {
    const data = this.#buffer + chunk;
    let start = 0;
    let nl = data.indexOf("\n", this.#buffer.length);
    while (nl !== -1) {
      const line = data.slice(start, nl);
      start = nl + 1;
      if (line.trim() !== "") this.#onLine(line);
      if (this.#closedError) {
        this.#buffer = "";
        return;
      }
      nl = data.indexOf("\n", start);
    }
    this.#buffer = data.slice(start);
  }

  #onLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (err) {
      this.#fail(new ConnectionClosedError(this.socketPath, "the daemon sent a line that is not JSON", err));
      this.#socket.destroy();
      return;
    }
    if (Array.isArray(message)) {
      for (const item of message) this.#onMessage(item);
    } else {
      this.#onMessage(message);
    }
  }

  #onMessage(message: unknown): void {
    if (!isObject(message)) return;
    const hasId = Object.prototype.hasOwnProperty.call(message, "id");
    if (typeof message.method === "string") {
      if (hasId) {
        // The daemon does not call its clients; answer as the specification asks.
        this.#notifyQuietlyRaw({
          jsonrpc: "2.0",
          id: message.id,
          error: { code: ErrorCode.MethodNotFound, message: `Method not found: ${message.method}` },
        });
        return;
      }
      this.#onNotification(message.method, isObject(message.params) ? message.params : {});
      return;
    }
    if (hasId) this.#onResponse(message);
  }

  #notifyQuietlyRaw(message: Json): void {
    if (this.#closedError) return;
    this.#socket.write(JSON.stringify(message) + "\n");
  }

  #onResponse(message: Json): void {
    const id = message.id;
    const isError = Object.prototype.hasOwnProperty.call(message, "error") && message.error != null;
    if (id === null || id === undefined) {
      // An error the daemon could not tie to a request: a line it could not parse, or the
      // reason it is about to hang up (refused peer, message too large).
      if (isError) this.#serverError = toRpcError(message.error);
      return;
    }
    const entry = typeof id === "number" ? this.#pending.get(id) : undefined;
    if (entry === undefined) {
      // A late answer to a call that gave up waiting. A subscription nobody reads: drop it.
      if (typeof id === "number" && this.#lateSubscribes.delete(id) && !isError && isObject(message.result)) {
        const sid = message.result.subscription;
        if (typeof sid === "number") this.#notifyQuietly("log.unsubscribe", { subscription: sid });
      }
      return;
    }
    this.#pending.delete(id as number);
    if (isError) {
      entry.settle();
      entry.reject(toRpcError(message.error));
      return;
    }
    try {
      entry.hooks?.result?.(message.result);
    } finally {
      entry.settle();
    }
    entry.resolve(message.result);
  }

  #onNotification(method: string, params: Json): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(method, params);
      } catch (err) {
        process.nextTick(() => {
          throw err;
        });
      }
    }
    if (method === "sys.shutdown") {
      const subs = [...this.#subs.values()];
      this.#subs.clear();
      for (const sub of subs) sub._end();
      return;
    }
    const sid = params.subscription;
    if (typeof sid !== "number") return;
    const sub = this.#subs.get(sid);
    if (sub === undefined) {
      // Possibly a subscription whose answer we have not parsed yet (the daemon answers
      // first, but keep them anyway while a log.subscribe is in flight).
      if (this.#subscribing > 0) this.#orphans.push({ method, params });
      return;
    }
    this.#route(sub, method, params);
  }

  #route(sub: Subscription, method: string, params: Json): void {
    if (method === "log.event") {
      sub._push(params.event as Event);
    } else if (method === "log.overflow") {
      if (sub.id !== undefined) this.#subs.delete(sub.id);
      sub._end(new RpcError(ErrorCode.Overloaded, "subscription dropped: the reader fell too far behind", params));
    }
    // Other notifications of a subscription (narrator.delta) go to onNotification listeners only.
  }

  // --- the end ---------------------------------------------------------------------------------

  #lost(reason?: string, cause?: unknown): void {
    if (this.#closedError) return;
    const server = this.#serverError;
    if (server !== undefined) {
      this.#fail(new ConnectionClosedError(this.socketPath, `${server.message} (code ${server.code})`, server));
    } else {
      this.#fail(new ConnectionClosedError(this.socketPath, reason, cause));
    }
    this.#socket.destroy();
  }

  /** Everything waiting learns that the connection is gone. */
  #fail(error: ConnectionClosedError): void {
    if (this.#closedError) return;
    this.#closedError = error;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) {
      entry.settle();
      entry.reject(error);
    }
    const subs = [...this.#subs.values()];
    this.#subs.clear();
    for (const sub of subs) sub._end(error);
    this.#orphans = [];
    this.#lateSubscribes.clear();
  }
}

function checkParams(params: unknown): void {
  if (params !== undefined && (params === null || typeof params !== "object")) {
    const kind = params === null ? "null" : typeof params;
    throw new TypeError(`params must be an object (named params) or an array, not ${kind}`);
  }
}

/**
 * The events of one subscription: an async iterable (and its own iterator). Leaving a
 * `for await` loop over it, or calling `return()` / `close()`, unsubscribes.
 */
export class Subscription implements AsyncIterableIterator<Event> {
  /** Resolves with the subscription id once the daemon has answered `log.subscribe`. */
  readonly ready: Promise<number>;

  #id: number | undefined;
  #queue: Event[] = [];
  #waiters: Array<{ resolve(r: IteratorResult<Event, undefined>): void; reject(e: unknown): void }> = [];
  #done = false; // no more events will come
  #error: { value: unknown } | undefined; // thrown once, after the events already queued
  #left = false; // the user left: the daemon must be told
  #leave: (sub: Subscription) => Promise<void>;
  #signal: AbortSignal | undefined;
  #onAbort: (() => void) | undefined;
  #resolveReady!: (id: number) => void;
  #rejectReady!: (err: unknown) => void;

  /** @internal Use {@link Client.subscribe}. */
  constructor(leave: (sub: Subscription) => Promise<void>) {
    this.#leave = leave;
    this.ready = new Promise<number>((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    this.ready.catch(() => {}); // a failed subscribe surfaces through iteration too
  }

  /** The daemon's subscription id (once it has answered). */
  get id(): number | undefined {
    return this.#id;
  }

  /** True once no more events will come (ended, unsubscribed, or failed). */
  get ended(): boolean {
    return this.#done;
  }

  /** @internal */
  get _left(): boolean {
    return this.#left;
  }

  /** @internal */
  _setId(id: number): void {
    this.#id = id;
  }

  /** @internal */
  _start(ready: Promise<number>, signal: AbortSignal | undefined): void {
    ready.then(
      (id) => this.#resolveReady(id),
      (err) => {
        this.#rejectReady(err);
        this._end(err);
      },
    );
    if (signal !== undefined && !this.#done) {
      this.#signal = signal;
      this.#onAbort = () => {
        if (this.#done) return;
        this.#left = true;
        this._end(signal.reason);
        void this.#leave(this);
      };
      signal.addEventListener("abort", this.#onAbort, { once: true });
    }
  }

  /** @internal */
  _push(event: Event): void {
    if (this.#done) return;
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter.resolve({ value: event, done: false });
    else this.#queue.push(event);
  }

  /** @internal No more events: the end, or `error` after the queued events. */
  _end(error?: unknown): void {
    if (this.#done) return;
    this.#done = true;
    if (error !== undefined) this.#error = { value: error };
    if (this.#signal !== undefined && this.#onAbort !== undefined) {
      this.#signal.removeEventListener("abort", this.#onAbort);
    }
    for (const waiter of this.#waiters.splice(0)) this.#finish(waiter.resolve, waiter.reject);
  }

  #finish(resolve: (r: IteratorResult<Event, undefined>) => void, reject: (e: unknown) => void): void {
    const error = this.#error;
    if (error !== undefined) {
      this.#error = undefined;
      reject(error.value);
    } else {
      resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<Event, undefined>> {
    const event = this.#queue.shift();
    if (event !== undefined) return Promise.resolve({ value: event, done: false });
    return new Promise((resolve, reject) => {
      if (this.#done) this.#finish(resolve, reject);
      else this.#waiters.push({ resolve, reject });
    });
  }

  /** Unsubscribe (what `break` in a `for await` loop calls); resolves once the daemon agreed. */
  async return(): Promise<IteratorResult<Event, undefined>> {
    this.#left = true;
    this.#queue.length = 0;
    this.#error = undefined;
    this._end();
    await this.#leave(this);
    return { value: undefined, done: true };
  }

  /** Same as {@link return}. */
  async close(): Promise<void> {
    await this.return();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
