export {
  Client,
  Subscription,
  connect,
  defaultSocketPath,
  DEFAULT_TIMEOUT_MS,
  type CallArgs,
  type CallOptions,
  type ConnectOptions,
  type MethodName,
  type NotificationListener,
  type NotifyArgs,
  type OtherMethod,
  type Params,
  type ParamsOf,
  type ResultOf,
  type SubscribeOptions,
} from "./client.js";
export { ConnectionClosedError, DaemonUnavailableError, ErrorCode, RpcError, TimeoutError } from "./errors.js";
export type * from "./types.js";
