// Types for scripts/gen-types.mjs (plain JavaScript, so the tests can import it).

/** The text of src/types.ts for an OpenRPC document (the result of `rpc.discover`). */
export function generate(doc: unknown): string;

/** `$SIDECAR_SOCKET`, else `$XDG_RUNTIME_DIR/sidecar/sidecar.sock`, else `/tmp/sidecar-$UID/sidecar.sock`. */
export function defaultSocketPath(env?: NodeJS.ProcessEnv): string;

/** Ask the daemon on `socketPath` for its OpenRPC document. */
export function fetchDocument(socketPath: string, options?: { timeoutMs?: number }): Promise<unknown>;

/** The command line; resolves to the exit status. */
export function main(argv?: string[]): Promise<number>;
