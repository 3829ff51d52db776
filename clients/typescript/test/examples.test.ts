// The example programs in examples/ run against a real daemon, as the README shows them.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { it } from "node:test";

import { connect } from "../src/index.js";
import { PACKAGE_ROOT, eventually, startDaemon } from "./daemon.js";

function run(script: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(PACKAGE_ROOT, "examples", script), ...args], {
      cwd: PACKAGE_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out, err }));
  });
}

it("the agent works and the narrator speaks once its turn is granted", { timeout: 60_000 }, async () => {
  const daemon = await startDaemon({ config: "[controller]\nmin_gap_s = 0.1\n" });
  try {
    const narrator = run("narrator.mjs", ["ts-ex", daemon.socket, "1"]);
    const client = await connect(daemon.socket);
    try {
      // Let the narrator subscribe first, so the decision reaches it live.
      await eventually(async () => (await client.call("sys.stats")).subscriptions >= 1, "the narrator", 1000);
      const agent = await run("agent.mjs", ["ts-ex", daemon.socket, "3"]);
      assert.equal(agent.code, 0, agent.err);
      assert.match(agent.out, /done at version 3/);
      const spoke = await narrator;
      assert.equal(spoke.code, 0, spoke.err);
      assert.match(spoke.out, /spoke at seq \d+/);
      const { events } = await client.call("log.query", { conversation_id: "ts-ex", limit: 100 });
      const kinds = events.map((e) => e.type);
      assert.equal(kinds.filter((k) => k === "agent.progress").length, 3);
      const said = events.filter((e) => e.type === "narrator.message");
      assert.equal(said.length, 1);
      assert.equal(said[0]!.visibility, "user");
    } finally {
      await client.close();
    }
  } finally {
    await daemon.stop();
    await daemon.cleanup();
  }
});
