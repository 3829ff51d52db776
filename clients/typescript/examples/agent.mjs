// An agent: takes a task, reports progress to the activity rail, sends heartbeats, finishes.
//
//   node examples/agent.mjs [CONVERSATION] [SOCKET] [STEPS] [STEP_MS]
//
// CONVERSATION defaults to "example", SOCKET to the daemon's default ($SIDECAR_SOCKET, ...),
// STEPS to 3 and STEP_MS (a pause that stands for the work of each step) to 0. The task it
// creates always ends: `done`, or `failed` with the reason when a call fails or on Ctrl-C.
// It never writes user-visible text: that is the narrator's job, and the daemon refuses it.
import { randomUUID } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import { connect } from "sidecar-client";

const USAGE = "usage: node examples/agent.mjs [CONVERSATION] [SOCKET] [STEPS] [STEP_MS]";
const args = process.argv.slice(2);
if (args.includes("-h") || args.includes("--help")) {
  console.log(USAGE);
  process.exit(0);
}
const [conversation = "example", socketPath, stepsArg = "3", stepMsArg = "0"] = args;
const steps = Number(stepsArg);
const stepMs = Number(stepMsArg);
if (!Number.isInteger(steps) || steps < 0 || !Number.isFinite(stepMs) || stepMs < 0) {
  console.error(`STEPS and STEP_MS must be whole numbers\n${USAGE}`);
  process.exit(2);
}

const me = "ts-coder";
const sidecar = await connect(socketPath || undefined);
// Ctrl-C (or SIGTERM) aborts the step in progress; the task is then marked failed, not left running.
const stop = new AbortController();
for (const signal of ["SIGINT", "SIGTERM"]) process.once(signal, () => stop.abort(new Error(`stopped by ${signal}`)));

let task;
try {
  task = await sidecar.call("tasks.create", {
    type: "example", id: `${me}-${randomUUID().slice(0, 8)}`, owner: me, conversation_id: conversation,
  });
  task = await sidecar.call("tasks.update", { id: task.id, status: "running", expected_version: task.version });
  console.log(`${task.id} running in conversation ${conversation}`);
  for (let step = 1; step <= steps; step++) {
    if (stepMs > 0) await delay(stepMs, undefined, { signal: stop.signal });
    stop.signal.throwIfAborted();
    await sidecar.call("log.append", {
      conversation_id: conversation, type: "agent.progress", visibility: "status", agent_id: me,
      task_id: task.id, data: { msg: `step ${step} of ${steps}` },
    }, { signal: stop.signal });
    await sidecar.call("controller.heartbeat", { conversation_id: conversation, agent_id: me, task_id: task.id });
  }
  const done = await sidecar.call("tasks.update", { id: task.id, status: "done" });
  console.log(`${task.id} done at version ${done.version}`);
} catch (err) {
  const reason = stop.signal.aborted ? stop.signal.reason : err;
  const message = reason instanceof Error ? reason.message : String(reason);
  if (task !== undefined) {
    // Whatever went wrong, the task does not stay open: it fails, with the reason.
    const failed = await sidecar.call("tasks.update", { id: task.id, status: "failed", outputs: { error: message } });
    console.error(`${task.id} failed at version ${failed.version}: ${message}`);
  } else {
    console.error(`agent: ${message}`);
  }
  process.exitCode = stop.signal.aborted ? 130 : 1;
} finally {
  await sidecar.close();
}
