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
export {
  LeaseLostError,
  MAX_CLOCK_REFUSALS,
  POLL_MAX_MS,
  POLL_MIN_MS,
  RECONNECT_MAX_MS,
  STOP_GRACE_MS,
  runAgent,
  type AgentHandler,
  type AgentOptions,
  type AgentSummary,
  type ContextCallArgs,
  type TaskContext,
  type TaskOutputs,
} from "./agent.js";
export {
  FOLLOW_BACKOFF_MAX_MS,
  FOLLOW_BACKOFF_MIN_MS,
  follow,
  type FollowOptions,
} from "./follow.js";
export { ConnectionClosedError, DaemonUnavailableError, ErrorCode, RpcError, TimeoutError } from "./errors.js";
export type * from "./types.js";
