// The whole protocol through a client generated from openapi/openapi.json
// (openapi-typescript types + openapi-fetch), against the real service:
// register, attempt, write, a rejected row, trigger, ack, recovery, and a
// fenced request. Everything here is checked by the TypeScript compiler
// against the document first: a shape the document gets wrong fails `tsc`.
//
// Run by scripts/typescript-client.sh (SINKGATE_URL: a service with the
// table `ts_sink` in its database).
import assert from "node:assert/strict";
import { test } from "node:test";

import createClient from "openapi-fetch";

import type { components, paths } from "./schema.js";

type Problem = components["schemas"]["Problem"];

const baseUrl = process.env.SINKGATE_URL ?? "http://127.0.0.1:18090";
const client = createClient<paths>({ baseUrl });
const job = { params: { path: { job: "ts" } } };

function problemKind(problem: Problem | undefined): string | undefined {
  return problem?.type.replace("urn:sinkgate:problem:", "");
}

test("a processor's whole protocol, through the generated client", async () => {
  const registered = await client.PUT("/v1/jobs/{job}", {
    ...job,
    body: { tasks: ["t0"], sink: { table: "ts_sink", mode: "append" } },
  });
  assert.ok(registered.data, JSON.stringify(registered.error));
  assert.deepEqual(registered.data.tasks, ["t0"]);

  const attempt = await client.POST("/v1/jobs/{job}/attempts", { ...job, body: {} });
  assert.ok(attempt.data, JSON.stringify(attempt.error));
  const epoch = attempt.data.epoch;
  assert.deepEqual(attempt.data.recovery.offsets, {});

  const written = await client.POST("/v1/jobs/{job}/writes", {
    ...job,
    body: { task_id: "t0", epoch, batch_id: "t0-0-0", rows: [{ id: 1, word: "hello" }, { id: 2, word: "world" }] },
  });
  assert.equal(written.response.status, 201, JSON.stringify(written.error));
  assert.equal(written.data?.staged_rows, 2);
  assert.equal(written.data?.duplicate, false);

  // A row that does not fit the sink: 422, naming row and column.
  const rejected = await client.POST("/v1/jobs/{job}/writes", {
    ...job,
    body: { task_id: "t0", epoch, batch_id: "t0-0-2", rows: [{ id: 3, word: "ok" }, { id: "three", word: "no" }] },
  });
  assert.equal(rejected.response.status, 422);
  assert.equal(problemKind(rejected.error), "row-rejected");
  assert.equal(rejected.error?.row, 2);
  assert.equal(rejected.error?.column, "id");

  const triggered = await client.POST("/v1/jobs/{job}/checkpoints", { ...job, body: { epoch } });
  assert.ok(triggered.data, JSON.stringify(triggered.error));
  const id = triggered.data.checkpoint_id;

  const acked = await client.POST("/v1/jobs/{job}/checkpoints/{id}/acks", {
    params: { path: { job: "ts", id } },
    body: { task_id: "t0", epoch, offsets: { "0": 2 } },
  });
  assert.ok(acked.data, JSON.stringify(acked.error));
  let status = acked.data.status;
  for (let tries = 0; status !== "committed" && tries < 100; tries++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    const details = await client.GET("/v1/jobs/{job}/checkpoints/{id}", { params: { path: { job: "ts", id } } });
    assert.ok(details.data, JSON.stringify(details.error));
    status = details.data.status;
  }
  assert.equal(status, "committed");

  const recovery = await client.GET("/v1/jobs/{job}/recovery", job);
  assert.ok(recovery.data, JSON.stringify(recovery.error));
  assert.equal(recovery.data.checkpoint_id, id);
  assert.deepEqual(recovery.data.offsets, { "0": 2 });

  // A newer attempt fences this epoch: the old instance is a zombie.
  const successor = await client.POST("/v1/jobs/{job}/attempts", { ...job, body: {} });
  assert.ok(successor.data);
  const fenced = await client.POST("/v1/jobs/{job}/writes", {
    ...job,
    body: { task_id: "t0", epoch, batch_id: "t0-0-2", rows: [{ id: 3, word: "late" }] },
  });
  assert.equal(fenced.response.status, 409);
  assert.equal(problemKind(fenced.error), "fenced");
  assert.equal(fenced.error?.current_epoch, successor.data.epoch);
});
