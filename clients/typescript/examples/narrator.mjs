// A narrator: waits for the controller to grant it a turn, then tells the user, in one plain
// sentence, what happened.
//
//   node examples/narrator.mjs [CONVERSATION] [SOCKET] [TURNS]
//
// CONVERSATION defaults to "example", SOCKET to the daemon's default ($SIDECAR_SOCKET, ...),
// TURNS (how many times to speak before exiting) to 1. Ctrl-C stops it.
// A real narrator would send narrator.prompt's messages to its LLM and say the reply; this one
// builds its sentence from the events that led to the decision, so it needs no LLM.
import { connect, RpcError } from "sidecar-client";

const USAGE = "usage: node examples/narrator.mjs [CONVERSATION] [SOCKET] [TURNS]";
const args = process.argv.slice(2);
if (args.includes("-h") || args.includes("--help")) {
  console.log(USAGE);
  process.exit(0);
}
const [conversation = "example", socketPath, turnsArg = "1"] = args;
const turns = Number(turnsArg);
if (!Number.isInteger(turns) || turns < 1) {
  console.error(`TURNS must be a whole number, 1 or more\n${USAGE}`);
  process.exit(2);
}

/** What a task is called in a sentence: its type and id. */
function named(task) {
  return task.type ? `the ${task.type} task ${task.id}` : `task ${task.id}`;
}

const capitalized = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/**
 * One sentence for the user, from the decision's reason, the newest events before it and the
 * conversation's open tasks.
 */
function sentence(reason, events, working) {
  const newest = (test) => events.findLast(test);
  const taskIn = (event) => event.data?.task;
  switch (reason) {
    case "user_message": {
      const asked = newest((e) => e.type === "user.message");
      const heard = asked?.data?.text ? `You asked: "${String(asked.data.text).slice(0, 80)}". ` : "";
      return working.length
        ? `${heard}${working.length === 1 ? "One task is" : `${working.length} tasks are`} under way: ${working.map(named).join(", ")}.`
        : `${heard}Nothing is running right now.`;
    }
    case "task_done": {
      const task = taskIn(newest((e) => taskIn(e)?.status === "done") ?? {});
      return task ? `${capitalized(named(task))} is done.` : "A task has finished.";
    }
    case "task_failed": {
      const task = taskIn(newest((e) => taskIn(e)?.status === "failed") ?? {});
      const why = task?.outputs?.error ? `: ${String(task.outputs.error)}` : ".";
      return task ? `${capitalized(named(task))} failed${why}` : "A task failed.";
    }
    case "error": {
      const error = newest((e) => e.type.endsWith(".error"));
      const what = error?.data?.message ?? error?.data?.error;
      return what ? `An agent ran into an error: ${String(what).slice(0, 120)}.` : "An agent ran into an error.";
    }
    case "idle":
      return "Still working on it; nothing new from the agents for a while.";
    default:
      return `There is news in this conversation (${reason}).`;
  }
}

const sidecar = await connect(socketPath || undefined);
const stop = new AbortController();
process.once("SIGINT", () => stop.abort());
try {
  const { events } = await sidecar.call("log.tail", { conversation_id: conversation, limit: 1 });
  const fromSeq = events.length ? events[events.length - 1].seq + 1 : 1; // older grants are spent
  let spoken = 0;
  const decisions = sidecar.subscribe(
    { conversation_id: conversation, types: ["controller.decision"], from_seq: fromSeq },
    { signal: stop.signal },
  );
  for await (const decision of decisions) {
    const data = decision.data;
    if (!data.speak_now) continue;
    // What led to the decision: the events just before it, and the tasks still open.
    const { events: recent } = await sidecar.call("log.tail", { conversation_id: conversation, limit: 50 });
    const { tasks } = await sidecar.call("tasks.list_active", {});
    const text = sentence(
      data.reason,
      recent.filter((e) => e.seq < decision.seq),
      tasks.filter((t) => t.conversation_id === conversation),
    );
    try {
      const said = await sidecar.call("narrator.say", { conversation_id: conversation, grant_id: data.grant_id, text });
      console.log(`spoke at seq ${said.seq}: ${text}`);
    } catch (err) {
      // The grant was used, expired or superseded: wait for the next one.
      if (err instanceof RpcError) { console.log(`grant refused (${err.message}); waiting for the next`); continue; }
      throw err;
    }
    if (++spoken >= turns) break; // leaving the loop unsubscribes
  }
} catch (err) {
  if (!stop.signal.aborted) throw err;
} finally {
  await sidecar.close();
}
