// src/types.ts must be exactly what the generator makes of the running daemon's rpc.discover.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { type Client, connect } from "../src/index.js";
import { type Daemon, PACKAGE_ROOT, startDaemon, stopCleanly } from "./daemon.js";

type Generator = typeof import("../scripts/gen-types.mjs");

const GENERATOR = path.join(PACKAGE_ROOT, "scripts", "gen-types.mjs");
const TYPES = path.join(PACKAGE_ROOT, "src", "types.ts");

describe("generated types", { timeout: 30_000 }, () => {
  let daemon: Daemon;
  let client: Client;
  let gen: Generator;

  before(async () => {
    gen = (await import(pathToFileURL(GENERATOR).href)) as Generator;
    daemon = await startDaemon();
    client = await connect(daemon.socket);
  });

  after(() => stopCleanly(daemon, client));

  it("src/types.ts matches the daemon's schema byte for byte (run `npm run gen` if not)", async () => {
    const doc = await client.call("rpc.discover");
    const fresh = gen.generate(doc);
    const checkedIn = await readFile(TYPES, "utf8");
    assert.equal(
      checkedIn,
      fresh,
      "src/types.ts has drifted from the daemon: run `npm run gen -- --socket PATH` and commit it",
    );
  });

  it("the generator is deterministic: key order in the document does not matter", async () => {
    const doc = (await client.call("rpc.discover")) as Record<string, unknown>;
    const shuffled = reverseKeys(doc);
    assert.equal(gen.generate(shuffled), gen.generate(doc));
    assert.equal(gen.generate(doc), gen.generate(JSON.parse(JSON.stringify(doc))));
  });

  it("the command line fetches over --socket and checks", async () => {
    const run = promisify(execFile);
    const { stdout } = await run(process.execPath, [GENERATOR, "--socket", daemon.socket, "--out", "-"]);
    assert.equal(stdout, await readFile(TYPES, "utf8"));
    await run(process.execPath, [GENERATOR, "--socket", daemon.socket, "--check", "--out", TYPES]);
  });

  it("maps JSON Schema to TypeScript", () => {
    const out = gen.generate({
      methods: [
        {
          name: "x.do",
          params: [
            { name: "a", required: true, schema: { type: "string" } },
            { name: "b", required: false, schema: { anyOf: [{ type: "integer" }, { type: "null" }] } },
          ],
          result: { name: "x.do.result", schema: { type: "array", items: { $ref: "#/components/schemas/Thing" } } },
        },
      ],
      components: {
        schemas: {
          Thing: {
            description: "A thing. */ not a comment end",
            type: "object",
            properties: {
              "odd-key": { type: "boolean" },
              kind: { enum: ["b", "a"], default: "a" },
              tags: { type: "array", items: { anyOf: [{ type: "string" }, { type: "null" }] } },
              nested: { type: "object", properties: { n: { type: "number" } }, required: ["n"] },
              free: { type: "object" },
              map: { type: "object", additionalProperties: { type: "integer" } },
            },
            required: ["kind", "odd-key"],
          },
          Empty: { type: "object", properties: {}, additionalProperties: false },
        },
      },
    });
    assert.match(out, /export type Empty = Record<string, never>;/);
    assert.match(out, /\/\*\* A thing\. \*\\\/ not a comment end \*\/\nexport interface Thing \{/);
    assert.match(out, /  "odd-key": boolean;/);
    assert.match(out, /  \/\*\* @default "a" \*\/\n  kind: "a" \| "b";/);
    assert.match(out, /  tags\?: \(string \| null\)\[\];/);
    assert.match(out, /  nested\?: \{\n    n: number;\n  \};/);
    assert.match(out, /  free\?: Record<string, unknown>;/);
    assert.match(out, /  map\?: Record<string, number>;/);
    assert.match(out, /  "x\.do": \{\n    params: \{\n      a: string;\n      b\?: number \| null;\n    \};\n    result: Thing\[\];\n  \};/);
    assert.ok(out.indexOf("export type Empty") < out.indexOf("export interface Thing"));
  });
});

function reverseKeys(value: unknown): any {
  if (Array.isArray(value)) return value.map(reverseKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value)
        .reverse()
        .map(([k, v]) => [k, reverseKeys(v)]),
    );
  }
  return value;
}
