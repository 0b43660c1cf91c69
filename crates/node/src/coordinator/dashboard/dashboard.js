// The crowdtrain dashboard: polls the coordinator's read-only JSON
// (/v1/status, /v1/ledger, /v1/run) and draws it. No framework, no build
// step: the coordinator embeds this file. Everything shown comes from the
// run, some of it from workers (their class, reasons), so it is written as
// text (textContent, SVG attributes), never as HTML.
"use strict";

// How often the page asks: a round that closes shows within this much
// plus one request's time.
const POLL_MS = 500;
// The rounds the chart and the table show (the latest ones).
const ROUNDS = 200;
// The feed: what the participants most want to see checked.
const FEED_KINDS = ["audit", "slash", "auditor-slashed", "update-refused", "round-failed"];
const FEED_LIMIT = 50;

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function element(tag, attributes, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = n, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
}

function percent(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(2) + "%"; }
function number(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function short(hex) { return typeof hex === "string" ? hex.slice(0, 12) : "–"; }

function ago(unixMs) {
  if (!unixMs) return "–";
  const seconds = Math.max(0, (Date.now() - unixMs) / 1000);
  if (seconds < 60) return seconds.toFixed(0) + " s ago";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}

// Worker columns: [heading, value]. Fields a newer coordinator adds (vested
// or escrowed credits, gate state, contract choices) are shown after these,
// as they come.
const WORKER_COLUMNS = [
  ["worker", (w) => w.worker],
  ["key", (w) => short(w.public_key)],
  ["active", (w) => (w.active ? "yes" : "no")],
  ["class", (w) => w.class],
  ["rounds", (w) => w.rounds_assigned],
  ["accepted", (w) => w.submissions_accepted],
  ["late", (w) => w.submissions_late],
  ["rejected", (w) => w.submissions_rejected],
  ["refused", (w) => w.submissions_refused],
  ["verified work", (w) => w.verified_work],
  ["quality", (w) => number(w.quality, 2)],
  ["earned", (w) => w.earned],
  ["slashed", (w) => w.slashed],
  ["credits", (w) => w.credits],
  ["audits passed", (w) => w.audits_passed],
  ["audits failed", (w) => w.audits_failed],
  ["audits judged", (w) => w.audits_judged],
  ["auditor slashes", (w) => w.auditor_slashes],
  ["uploaded", (w) => bytes(w.bytes_uploaded)],
  ["last seen", (w) => ago(w.last_seen_unix_ms)],
];
const KNOWN_WORKER_FIELDS = new Set([
  "worker", "public_key", "active", "class", "rounds_assigned", "submissions_accepted", "submissions_late",
  "submissions_rejected", "submissions_refused", "verified_work", "quality", "earned", "slashed", "credits",
  "audits_passed", "audits_failed", "audits_judged", "auditor_slashes", "bytes_uploaded", "last_seen_unix_ms",
]);
const KNOWN_STATUS_FIELDS = new Set([
  "run_id", "phase", "round", "completed_rounds", "target_rounds", "model", "state_hash", "test_accuracy",
  "bytes_uploaded", "bytes_downloaded", "workers", "rounds", "rounds_total", "max_participants", "admission",
  "opened_ahead", "withdrawn_ahead",
]);

const ROUND_COLUMNS = [
  ["round", (r) => r.round],
  ["status", (r) => r.status],
  ["participants", (r) => r.participants],
  ["committed", (r) => r.committed],
  ["revealed", (r) => r.revealed],
  ["accepted", (r) => r.accepted],
  ["audited", (r) => r.audited],
  ["slashed", (r) => r.slashed],
  ["refused", (r) => r.refused],
  ["accuracy", (r) => percent(r.test_accuracy)],
  ["loss", (r) => number(r.test_loss, 4)],
  ["duration", (r) => (r.closed_unix_ms ? ((r.closed_unix_ms - r.opened_unix_ms) / 1000).toFixed(2) + " s" : "–")],
  ["overhead", (r) => (r.coordinator_overhead_ms === null || r.coordinator_overhead_ms === undefined ? "–" : r.coordinator_overhead_ms + " ms")],
  ["up", (r) => bytes(r.bytes_uploaded)],
  ["down", (r) => bytes(r.bytes_downloaded)],
];

function plain(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function fillTable(table, columns, rows, rowAttributes) {
  const head = element("tr");
  for (const [name] of columns) head.appendChild(element("th", {}, name));
  table.tHead.replaceChildren(head);
  const body = table.tBodies[0];
  const fresh = rows.map((row) => {
    const tr = element("tr", rowAttributes ? rowAttributes(row) : {});
    for (const [, value] of columns) {
      const shown = value(row);
      tr.appendChild(element("td", typeof shown === "string" && isNaN(Number(shown)) ? { class: "text" } : {}, plain(shown)));
    }
    return tr;
  });
  body.replaceChildren(...fresh);
}

function drawWorkers(workers) {
  const extra = [];
  for (const worker of workers) {
    for (const key of Object.keys(worker)) {
      if (!KNOWN_WORKER_FIELDS.has(key) && !extra.includes(key)) extra.push(key);
    }
  }
  const columns = WORKER_COLUMNS.concat(extra.map((key) => [key.replace(/_/g, " "), (w) => w[key]]));
  fillTable($("workers"), columns, workers, (w) => ({
    "data-worker": w.worker,
    class: (w.active ? "" : "inactive") + (w.slashed > 0 ? " slashed" : ""),
  }));
}

// A line chart of accuracy (left axis, 0..1 scaled to the data) and loss
// (right axis) by round, in plain SVG.
function drawAccuracy(rounds) {
  const svg = $("accuracy-chart");
  const points = rounds.filter((r) => r.test_accuracy !== null && r.test_accuracy !== undefined);
  const width = svg.clientWidth || 800, height = svg.clientHeight || 260;
  const left = 48, right = 48, top = 12, bottom = 28;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("data-points", String(points.length));
  const children = [];
  if (points.length === 0) {
    children.push(element("svg:text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no round evaluated yet"));
    svg.replaceChildren(...children);
    return;
  }
  const first = points[0].round, last = points[points.length - 1].round;
  const x = (round) => left + (last === first ? (width - left - right) / 2 : ((round - first) / (last - first)) * (width - left - right));
  const accuracies = points.map((p) => p.test_accuracy);
  let low = Math.min(...accuracies), high = Math.max(...accuracies);
  const pad = Math.max(0.01, (high - low) * 0.1);
  low = Math.max(0, low - pad); high = Math.min(1, high + pad);
  const y = (a) => top + (1 - (a - low) / (high - low || 1)) * (height - top - bottom);
  const losses = points.map((p) => p.test_loss).filter((l) => l !== null && l !== undefined);
  const lossLow = losses.length ? Math.min(...losses) : 0, lossHigh = losses.length ? Math.max(...losses) : 1;
  const yLoss = (l) => top + (1 - (l - lossLow) / (lossHigh - lossLow || 1)) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const value = low + ((high - low) * i) / 4;
    const at = y(value);
    children.push(element("svg:line", { class: "grid", x1: left, x2: width - right, y1: at, y2: at }));
    children.push(element("svg:text", { x: left - 4, y: at + 4, "text-anchor": "end" }, (100 * value).toFixed(1) + "%"));
    if (losses.length) {
      const loss = lossLow + ((lossHigh - lossLow) * i) / 4;
      children.push(element("svg:text", { x: width - right + 4, y: yLoss(loss) + 4 }, loss.toFixed(3)));
    }
  }
  children.push(element("svg:line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  const ticks = Math.min(10, last - first + 1);
  for (let i = 0; i < ticks; i++) {
    const round = Math.round(first + ((last - first) * i) / Math.max(1, ticks - 1));
    children.push(element("svg:text", { x: x(round), y: height - bottom + 16, "text-anchor": "middle" }, round));
  }
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.round).toFixed(1)},${y(p.test_accuracy).toFixed(1)}`).join(" ");
  children.push(element("svg:path", { class: "accuracy", d: path }));
  const lossPoints = points.filter((p) => p.test_loss !== null && p.test_loss !== undefined);
  if (lossPoints.length) {
    const lossPath = lossPoints.map((p, i) => `${i ? "L" : "M"}${x(p.round).toFixed(1)},${yLoss(p.test_loss).toFixed(1)}`).join(" ");
    children.push(element("svg:path", { class: "loss", d: lossPath }));
  }
  for (const p of points) {
    const dot = element("svg:circle", { class: "point", cx: x(p.round), cy: y(p.test_accuracy), r: 3, "data-round": p.round });
    dot.appendChild(element("svg:title", {}, `round ${p.round}: ${percent(p.test_accuracy)}, loss ${number(p.test_loss, 4)}`));
    children.push(dot);
  }
  svg.replaceChildren(...children);
}

function drawBytes(rounds) {
  const svg = $("bytes-chart");
  const width = svg.clientWidth || 500, height = svg.clientHeight || 260;
  const left = 56, right = 8, top = 12, bottom = 28;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const shown = rounds.slice(-60);
  const most = Math.max(1, ...shown.map((r) => Math.max(r.bytes_uploaded || 0, r.bytes_downloaded || 0)));
  const band = (width - left - right) / Math.max(1, shown.length);
  const y = (b) => top + (1 - b / most) * (height - top - bottom);
  const children = [];
  for (let i = 0; i <= 4; i++) {
    const value = (most * i) / 4;
    children.push(element("svg:line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    children.push(element("svg:text", { x: left - 4, y: y(value) + 4, "text-anchor": "end" }, bytes(value)));
  }
  shown.forEach((r, i) => {
    const x0 = left + i * band;
    const bar = Math.max(1, band / 2 - 1);
    const up = element("svg:rect", { class: "up", x: x0, y: y(r.bytes_uploaded || 0), width: bar, height: height - bottom - y(r.bytes_uploaded || 0) });
    up.appendChild(element("svg:title", {}, `round ${r.round}: ${bytes(r.bytes_uploaded)} up`));
    const down = element("svg:rect", { class: "down", x: x0 + bar, y: y(r.bytes_downloaded || 0), width: bar, height: height - bottom - y(r.bytes_downloaded || 0) });
    down.appendChild(element("svg:title", {}, `round ${r.round}: ${bytes(r.bytes_downloaded)} down`));
    children.push(up, down);
    if (shown.length <= 20 || i % Math.ceil(shown.length / 10) === 0) {
      children.push(element("svg:text", { x: x0 + band / 2, y: height - bottom + 16, "text-anchor": "middle" }, r.round));
    }
  });
  children.push(element("svg:line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  svg.replaceChildren(...children);
}

function describe(entry) {
  const e = entry.event[entry.kind] || {};
  switch (entry.kind) {
    case "audit": {
      const verdict = typeof e.verdict === "string" ? e.verdict : Object.keys(e.verdict)[0] + ": " + Object.values(e.verdict)[0];
      const by = e.judged_by === null || e.judged_by === undefined ? "the coordinator" : "worker " + e.judged_by;
      return [`round ${e.round}: worker ${e.worker}'s segment ${e.segment} ${verdict} (judged by ${by})`, e.verdict === "passed" ? "good" : "bad"];
    }
    case "slash":
      return [`round ${e.round}: worker ${e.worker} slashed ${e.amount}: ${e.reason}`, "bad"];
    case "auditor-slashed":
      return [`round ${e.round}: auditor ${e.auditor} slashed ${e.amount} over worker ${e.audited}: ${e.reason}`, "bad"];
    case "update-refused":
      return [`round ${e.round}: worker ${e.worker}'s update refused: ${e.reason}`, "bad"];
    case "round-failed":
      return [`round ${e.round} failed: ${e.reason}`, "bad"];
    default:
      return [`${entry.kind} ${JSON.stringify(e)}`, ""];
  }
}

function drawFeed(page) {
  const items = page.entries.map((entry) => {
    const [text, tone] = describe(entry);
    const li = element("li", { class: tone, value: entry.index, "data-kind": entry.kind });
    li.appendChild(element("a", { href: `/v1/ledger/${entry.index}`, title: `ledger entry ${entry.index}, hash ${entry.hash}` }, `#${entry.index}`));
    li.appendChild(document.createTextNode(" " + new Date(entry.unix_ms).toLocaleTimeString() + " " + text));
    return li;
  });
  if (items.length === 0) items.push(element("li", { class: "good" }, "no audits yet"));
  $("feed").replaceChildren(...items);
}

// Whatever a newer coordinator adds to the status (the contract's menu and
// choices, for example): shown as tables or values, as they come.
function drawExtra(status) {
  const keys = Object.keys(status).filter((key) => !KNOWN_STATUS_FIELDS.has(key) && status[key] !== null);
  $("extra").hidden = keys.length === 0;
  const blocks = keys.map((key) => {
    const block = element("div", { "data-field": key });
    block.appendChild(element("h3", {}, key.replace(/_/g, " ")));
    const value = status[key];
    const rows = Array.isArray(value) ? value : typeof value === "object" ? [value] : null;
    if (rows && rows.length && typeof rows[0] === "object") {
      const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))].map((name) => [name.replace(/_/g, " "), (row) => row[name]]);
      const table = element("table");
      table.appendChild(element("thead"));
      table.appendChild(element("tbody"));
      fillTable(table, columns, rows);
      block.appendChild(table);
    } else {
      block.appendChild(element("p", {}, plain(value)));
    }
    return block;
  });
  $("extra-body").replaceChildren(...blocks);
}

const closedSeenAt = new Map();

function drawStatus(status) {
  $("run-id").textContent = short(status.run_id);
  $("run-id").title = status.run_id;
  $("phase").textContent = status.phase;
  $("round").textContent = status.round === null || status.round === undefined ? "–" : status.round;
  $("completed").textContent = `${status.completed_rounds} / ${status.target_rounds}`;
  $("completed").setAttribute("data-completed", status.completed_rounds);
  $("accuracy").textContent = percent(status.test_accuracy);
  const active = status.workers.filter((w) => w.active).length;
  $("active").textContent = `${active} / ${status.workers.length}`;
  $("bytes").textContent = `${bytes(status.bytes_uploaded)} / ${bytes(status.bytes_downloaded)}`;
  $("admission").textContent = status.admission || "–";
  drawWorkers(status.workers);
  drawAccuracy(status.rounds);
  drawBytes(status.rounds);
  for (const r of status.rounds) {
    if (r.status === "closed" && !closedSeenAt.has(r.round)) closedSeenAt.set(r.round, Date.now());
  }
  // When this page first showed each round closed: what "a new round shows
  // within a second" is measured by.
  fillTable($("rounds"), ROUND_COLUMNS, status.rounds.slice().reverse(), (r) => ({
    "data-round": r.round,
    "data-status": r.status,
    "data-closed-seen-at": closedSeenAt.get(r.round) || "",
  }));
  drawExtra(status);
}

function flatten(value, prefix, rows) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, rows);
  } else {
    rows.push([prefix, value]);
  }
  return rows;
}

function drawConfig(run) {
  const body = run && run.body ? run.body : run;
  const rows = flatten(body, "", []);
  $("config").tBodies[0].replaceChildren(...rows.map(([key, value]) => {
    const tr = element("tr");
    tr.appendChild(element("td", {}, key));
    tr.appendChild(element("td", { class: "text" }, plain(value)));
    return tr;
  }));
}

async function json(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

let configShown = false;

async function poll() {
  try {
    const [status, feed] = await Promise.all([
      json(`/v1/status?rounds_limit=${ROUNDS}`),
      json(`/v1/ledger?kinds=${FEED_KINDS.join(",")}&limit=${FEED_LIMIT}`),
    ]);
    drawStatus(status);
    drawFeed(feed);
    if (!configShown) {
      drawConfig(await json("/v1/run"));
      configShown = true;
    }
    $("connection").textContent = "live";
    $("connection").className = "live";
    $("updated").textContent = new Date().toLocaleTimeString();
    document.body.setAttribute("data-updated", String(Date.now()));
  } catch (error) {
    $("connection").textContent = "cannot reach the coordinator (" + error.message + "); retrying";
    $("connection").className = "stale";
  }
  setTimeout(poll, POLL_MS);
}

poll();
