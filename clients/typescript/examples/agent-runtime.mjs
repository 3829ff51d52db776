// An agent under the runtime (runAgent): claims ready tasks of one type, works through their
// steps with progress on the activity rail, and finishes them. SIGTERM (or Ctrl-C) stops it
// cleanly: the tasks it holds go straight back to pending for another agent, and it exits 0.
//
//   node examples/agent-runtime.mjs [TYPE] [SOCKET] [CONCURRENCY]
//
// TYPE defaults to "example.count", SOCKET to the daemon's default ($SIDECAR_SOCKET, ...),
// CONCURRENCY to 1. A task's inputs: `steps` (default 3), `step_ms` (default 100, the pause that
// stands for the work of each step) and `fail` (a message: the task fails with it). Try it:
//
//   node examples/agent-runtime.mjs &
//   sidecar call tasks.create '{"type": "example.count", "conversation_id": "example", "inputs": {"steps": 5}}'
//   kill %1          # SIGTERM: gives back what it holds, then exits 0
//
// A second SIGTERM or Ctrl-C while it is stopping ends it at once (the default action): the
// leases then run out on their own.
import { setTimeout as delay } from "node:timers/promises";
import { runAgent } from "sidecar-client";

const USAGE = "usage: node examples/agent-runtime.mjs [TYPE] [SOCKET] [CONCURRENCY]";
const args = process.argv.slice(2);
if (args.includes("-h") || args.includes("--help")) {
  console.log(USAGE);
  process.exit(0);
}
const [type = "example.count", socketPath, concurrencyArg = "1"] = args;
const concurrency = Number(concurrencyArg);
if (!Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`CONCURRENCY must be a whole number from 1\n${USAGE}`);
  process.exit(2);
}

// One id per process: two agents sharing an id could renew and finish each other's tasks.
const agentId = `ts-worker-${process.pid}`;

// The runtime installs no signal handlers: the program decides what SIGTERM means. Here it
// aborts the runtime's signal, which releases every held task and resolves runAgent.
const stop = new AbortController();
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.once(signal, () => {
    console.log(`${signal}: releasing held tasks`);
    stop.abort(new Error(`stopped by ${signal}`));
  });
}

/** Count through the task's steps; what it returns becomes the task's outputs. */
async function count(task, { progress, signal }) {
  const { steps = 3, step_ms: stepMs = 100, fail } = task.inputs ?? {};
  console.log(`${task.id} claimed (attempt ${task.attempts})`);
  for (let step = 1; step <= steps; step++) {
    // The context's signal aborts when the agent stops or the lease is lost: stop working then.
    await delay(stepMs, undefined, { signal });
    await progress({ msg: `step ${step} of ${steps}`, step, steps });
  }
  if (fail) throw new Error(String(fail)); // the task fails, with this message as outputs.error
  console.log(`${task.id} counted ${steps} steps`);
  return { counted: steps };
}

try {
  console.log(`${agentId} claiming ${type} tasks, ${concurrency} at a time`);
  const summary = await runAgent({ agentId, handler: count, types: [type], socketPath, concurrency, signal: stop.signal });
  const { claimed, done, failed, released, dropped } = summary;
  console.log(`${agentId} stopped: claimed ${claimed}, done ${done}, failed ${failed}, released ${released}, dropped ${dropped}`);
} catch (err) {
  console.error(`${agentId}: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
