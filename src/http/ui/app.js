// The checkpoint dashboard: reads the /v1 API with the token entered (kept
// for this browser tab only) and redraws every two seconds. Builds the page
// with DOM nodes and textContent only: nothing from the API is ever parsed
// as HTML.
"use strict";

const REFRESH_MS = 2000;
const state = { token: sessionStorage.getItem("sinkgate-token") || "", job: location.hash.slice(1) };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else if (name === "width") node.style.width = value; // CSSOM: allowed by the page's CSP
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "—";
}

function ms(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(1)} ms`;
}

function bytes(value) {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = Number(value);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit++; }
  return `${unit ? size.toFixed(1) : size} ${units[unit]}`;
}

function status(name) {
  return el("span", { class: `status status-${name}` }, name);
}

function message(text) {
  const node = document.getElementById("message");
  node.hidden = !text;
  node.textContent = text || "";
}

async function jobSummaries() {
  if (state.job) return [await api(`/v1/jobs/${encodeURIComponent(state.job)}`)];
  return (await api("/v1/jobs")).jobs;
}

async function drawJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  const rows = await Promise.all(jobs.map(async (job) => {
    const id = encodeURIComponent(job.job_id);
    const [committed, deadLetters] = await Promise.all([
      api(`/v1/jobs/${id}/checkpoints?status=committed&limit=1`).then((list) => list.checkpoints[0]).catch(() => null),
      api(`/v1/jobs/${id}/dead-letters?limit=100`).then((list) => list.dead_letters.length).catch(() => null),
    ]);
    const blocked = job.last_decided_checkpoint !== null && job.last_decided_checkpoint !== job.last_committed_checkpoint;
    return el("tr", { class: "link", "data-job": job.job_id, onclick: () => { location.hash = job.job_id; } },
      el("td", {}, job.job_id),
      el("td", {}, job.epoch),
      el("td", {}, job.last_committed_checkpoint ?? "—"),
      el("td", {}, committed ? ago(committed.committed_at) : "—"),
      el("td", {}, job.pending_checkpoints.length ? job.pending_checkpoints.join(", ") : "none"),
      el("td", {}, blocked ? el("span", { class: "blocked" }, `blocked at ${job.last_decided_checkpoint}`) : "ok"),
      el("td", {}, deadLetters === null ? "—" : deadLetters >= 100 ? "100+" : deadLetters));
  }));
  body.replaceChildren(...rows);
}

async function drawJob(jobId) {
  const id = encodeURIComponent(jobId);
  document.getElementById("job-section").hidden = false;
  document.getElementById("job-title").textContent = `Job ${jobId}`;
  const [list, recovery] = await Promise.all([
    api(`/v1/jobs/${id}/checkpoints?limit=50`),
    api(`/v1/jobs/${id}/recovery`).catch((error) => ({ error: error.message })),
  ]);

  const recoveryNode = document.getElementById("recovery");
  if (recovery.error) {
    recoveryNode.replaceChildren(el("p", { class: "blocked" }, recovery.error));
  } else {
    const offsets = Object.entries(recovery.offsets || {}).map(([partition, offset]) => `${partition}: ${offset}`).join(", ");
    recoveryNode.replaceChildren(
      el("p", {}, recovery.checkpoint_id === null ? "nothing committed yet" : `checkpoint ${recovery.checkpoint_id} (epoch ${recovery.epoch})`),
      el("p", { class: "muted" }, `offsets: ${offsets || "—"}`));
  }

  const pendingNode = document.getElementById("pending");
  const pending = list.checkpoints.filter((checkpoint) => checkpoint.status === "pending");
  if (!pending.length) {
    pendingNode.replaceChildren(el("p", { class: "muted" }, "none"));
  } else {
    const oldest = pending[pending.length - 1];
    const details = await api(`/v1/jobs/${id}/checkpoints/${oldest.checkpoint_id}`);
    const waiting = details.acks.filter((ack) => !ack.acked).map((ack) => ack.task_id);
    pendingNode.replaceChildren(
      el("p", {}, `checkpoint ${oldest.checkpoint_id}, triggered ${ago(oldest.triggered_at)}: ${details.acked_tasks} of ${details.total_tasks} tasks acked`),
      el("ul", {}, ...details.acks.map((ack) => el("li", { "data-task": ack.task_id },
        ack.acked ? `${ack.task_id}: acked ${ago(ack.acked_at)}` : `${ack.task_id}: not acked, waiting ${ago(oldest.triggered_at).replace(" ago", "")}`))),
      waiting.length ? el("p", { class: "muted" }, `waiting for ${waiting.join(", ")}`) : null);
  }

  const slowest = Math.max(1, ...list.checkpoints.map((c) => (c.decide_ms || 0) + (c.commit_ms || 0)));
  const rows = list.checkpoints.map((checkpoint) => el("tr", { "data-checkpoint": checkpoint.checkpoint_id },
    el("td", {}, checkpoint.checkpoint_id),
    el("td", {}, status(checkpoint.status)),
    el("td", {}, checkpoint.trigger || "—"),
    el("td", {}, clock(checkpoint.triggered_at)),
    el("td", {}, `${checkpoint.acked_tasks}/${checkpoint.total_tasks}`),
    el("td", {}, ms(checkpoint.decide_ms)),
    el("td", {}, ms(checkpoint.commit_ms)),
    el("td", {},
      el("span", { class: "bar decide", width: `${(100 * (checkpoint.decide_ms || 0)) / slowest}px` }),
      el("span", { class: "bar", width: `${(100 * (checkpoint.commit_ms || 0)) / slowest}px` })),
    el("td", {}, checkpoint.staged_rows ?? "—"),
    el("td", {}, bytes(checkpoint.staged_bytes)),
    el("td", {}, checkpoint.promoted_rows ?? "—"),
    el("td", {}, checkpoint.failure_reason || checkpoint.promotion_error || "")));
  document.querySelector("#checkpoints tbody").replaceChildren(...rows);
}

// One refresh at a time: while the service is slow, the page waits for its
// answers instead of piling requests on it. A refresh asked for meanwhile
// (a click, a new token) runs right after.
let running = null;
let again = false;

function refresh() {
  if (running) { again = true; return running; }
  running = redraw().finally(() => {
    running = null;
    if (again) { again = false; refresh(); }
  });
  return running;
}

async function redraw() {
  try {
    const jobs = await jobSummaries();
    await drawJobs(jobs);
    const selected = location.hash.slice(1);
    if (selected) await drawJob(decodeURIComponent(selected));
    else document.getElementById("job-section").hidden = true;
    message("");
    document.getElementById("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    message(error.status === 401 || error.status === 403
      ? `${error.message} — enter an admin token, or a job's token and its job id`
      : error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").value = state.token;
  document.getElementById("job").value = state.job;
  document.getElementById("access").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = document.getElementById("token").value.trim();
    state.job = document.getElementById("job").value.trim();
    sessionStorage.setItem("sinkgate-token", state.token);
    if (state.job) location.hash = state.job;
    refresh();
  });
  window.addEventListener("hashchange", refresh);
  refresh();
  setInterval(() => { if (!running) refresh(); }, REFRESH_MS);
});
