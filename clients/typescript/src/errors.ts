/** Errors the client rejects with. */

/** The JSON-RPC error codes: the standard ones and the sidecar's own (CONTRACT.md section 3). */
export const ErrorCode = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  /** `expected_seq` / `expected_version` does not match. */
  Conflict: -32001,
  NotFound: -32002,
  /** User-visible text outside `chat.user_message` / `narrator.say`. */
  Forbidden: -32003,
  /** No valid speak grant (unknown, used, or expired). */
  GateClosed: -32004,
  /** Back-pressure (and a subscription dropped for falling behind): try again later. */
  Overloaded: -32005,
  /** Disk full, I/O error: nothing was written. */
  StorageFailure: -32006,
} as const;

/** The daemon answered with a JSON-RPC error object. */
export class RpcError extends Error {
  override readonly name = "RpcError";
  /** The JSON-RPC error code, e.g. -32002 (see {@link ErrorCode}). */
  readonly code: number;
  /** The error object's `data` (e.g. `{last_seq}` for a conflict), if any. */
  readonly data: unknown;

  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

/** Nothing answers on the socket; the message names the socket path that was tried. */
export class DaemonUnavailableError extends Error {
  override readonly name = "DaemonUnavailableError";
  readonly socketPath: string;
  /** The system error code, e.g. `ENOENT` or `ECONNREFUSED`. */
  readonly code: string | undefined;

  constructor(socketPath: string, cause: unknown) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code;
    const why = cause instanceof Error ? cause.message : String(cause);
    super(
      `no sidecar daemon answers on ${socketPath} (${why}); ` +
        "start one with `sidecar serve`, or point SIDECAR_SOCKET at it",
      { cause },
    );
    this.socketPath = socketPath;
    this.code = code;
  }
}

/** The connection went away (the daemon stopped or died, or `close()` was called). */
export class ConnectionClosedError extends Error {
  override readonly name = "ConnectionClosedError";
  readonly socketPath: string;

  constructor(socketPath: string, reason?: string, cause?: unknown) {
    super(`connection to ${socketPath} closed${reason ? ` (${reason})` : ""}`, cause === undefined ? {} : { cause });
    this.socketPath = socketPath;
  }
}

/** A call got no answer within its `timeoutMs`. The connection itself stays usable. */
export class TimeoutError extends Error {
  override readonly name = "TimeoutError";
  readonly method: string;
  readonly timeoutMs: number;

  constructor(method: string, timeoutMs: number, socketPath: string) {
    super(`${method}: no answer from ${socketPath} within ${timeoutMs} ms`);
    this.method = method;
    this.timeoutMs = timeoutMs;
  }
}
