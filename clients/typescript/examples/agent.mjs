// An agent: takes a task, reports progress to the activity rail, sends heartbeats, finishes.
//   node examples/agent.mjs CONVERSATION [SOCKET] [STEPS]
// It never writes user-visible text: that is the narrator's job, and the daemon refuses it.
import { randomUUID } from "node:crypto";
import { connect } from "../dist/src/index.js";

const [conversation, socketPath, stepsArg] = process.argv.slice(2);
const steps = Number(stepsArg ?? 3);
const me = "ts-coder";
const sidecar = await connect(socketPath);
try {
  const task = await sidecar.call("tasks.create", {
    type: "example", id: `${me}-${randomUUID().slice(0, 8)}`, owner: me, conversation_id: conversation,
  });
  await sidecar.call("tasks.update", { id: task.id, status: "running", expected_version: task.version });
  for (let step = 1; step <= steps; step++) {
    await sidecar.call("log.append", {
      conversation_id: conversation, type: "agent.progress", visibility: "status", agent_id: me,
      task_id: task.id, data: { msg: `step ${step} of ${steps}` },
    });
    await sidecar.call("controller.heartbeat", { conversation_id: conversation, agent_id: me, task_id: task.id });
  }
  const done = await sidecar.call("tasks.update", { id: task.id, status: "done" });
  console.log(`${task.id} done at version ${done.version}`);
} finally {
  await sidecar.close();
}
