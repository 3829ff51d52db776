// A narrator: waits for the controller to grant it a turn, then speaks one line with the grant.
//   node examples/narrator.mjs CONVERSATION [SOCKET] [TURNS]
// A real narrator would send prompt.messages to its LLM; this one keeps to the facts.
import { connect, RpcError } from "../dist/src/index.js";

const [conversation, socketPath, turnsArg] = process.argv.slice(2);
const turns = Number(turnsArg ?? 1);
const sidecar = await connect(socketPath);
try {
  const { events } = await sidecar.call("log.tail", { conversation_id: conversation, limit: 1 });
  const fromSeq = events.length ? events[events.length - 1].seq + 1 : 1; // old grants are spent
  let spoken = 0;
  const decisions = sidecar.subscribe({ conversation_id: conversation, types: ["controller.decision"], from_seq: fromSeq });
  for await (const decision of decisions) {
    const data = decision.data;
    if (!data.speak_now) continue;
    const prompt = await sidecar.call("narrator.prompt", { conversation_id: conversation, budget_tokens: 1000, reason: data.reason });
    const lines = prompt.messages[prompt.messages.length - 1].content.split("\n");
    try {
      const said = await sidecar.call("narrator.say", {
        conversation_id: conversation, grant_id: data.grant_id, text: `(${data.reason}) Latest: ${lines[lines.length - 1].slice(0, 120)}`,
      });
      console.log(`spoke at seq ${said.seq}`);
    } catch (err) {
      if (err instanceof RpcError) { console.log(`grant refused: ${JSON.stringify(err.data)}`); continue; }
      throw err;
    }
    if (++spoken >= turns) break; // leaving the loop unsubscribes
  }
} finally {
  await sidecar.close();
}
