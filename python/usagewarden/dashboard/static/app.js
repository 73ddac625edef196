// The dashboard: reads the usage API with the key the person enters (kept
// in this tab's sessionStorage at most) and draws what it answers.
import { BudgetEditor } from "./budget_editor.js";
import { drawStacked } from "./charts.js";
import { browserZone, dateTime, zones } from "./format.js";
import { renderBudgets, renderEvents, renderKpis, renderLimiter, renderTop } from "./panels.js";

const meta = (name) => document.querySelector(`meta[name="usagewarden-${name}"]`).content;
const API = meta("api");
const NEEDS_KEY = meta("auth") === "key";
const STORAGE_KEY = "usagewarden.api-key";
const PAGE_SIZE = 25;
const TOP_MODELS = 6;
const LIVE_SECONDS = 5;

const $ = (id) => document.getElementById(id);

const state = {
  key: NEEDS_KEY ? sessionStorage.getItem(STORAGE_KEY) : null,
  generation: 0,
  // Cursors of the event pages seen: cursors[i] opens page i.
  cursors: [null],
  page: 0,
  offset: null,
  nextCursor: null,
  total: 0,
  // The filters of what is shown: pages follow them (a cursor is made for them).
  base: null,
  // What the key may do (from /me): budgets are managed with usage:admin.
  scopes: [],
};

class ApiError extends Error {
  constructor(status, message, detail = null) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

/** One request to the usage API with the key; a JSON `body` for writes. */
async function call(method, path, params = {}, body = undefined) {
  const url = new URL(API + path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = response.statusText;
    let detail = null;
    try {
      detail = (await response.json())?.detail ?? null;
      message = detail?.message ?? message;
    } catch { /* not JSON */ }
    throw new ApiError(response.status, message, detail);
  }
  return response.json();
}

const api = (path, params = {}) => call("GET", path, params);

// --- what is asked: namespace, range and zone --------------------------------------------

function tz() {
  return $("tz").value || browserZone();
}

function range() {
  const seconds = Number($("range").value);
  const end = new Date();
  const start = new Date(end.getTime() - seconds * 1000);
  return { seconds, start: start.toISOString(), end: end.toISOString() };
}

/** Hours for up to two days, days up to four months, weeks beyond. */
function bucketFor(seconds) {
  if (seconds <= 2 * 86400) return "hour";
  if (seconds <= 120 * 86400) return "day";
  return "week";
}

function filters(span) {
  return { namespace: $("namespace").value, start: span.start, end: span.end };
}

// --- loading ------------------------------------------------------------------------------

/** One bucketed series per top model, and "other" for the rest (and unnamed models). */
async function seriesByModel(base, bucket, zone, models) {
  const total = (await api("/aggregate", { ...base, group_by: bucket, tz: zone })).groups;
  const top = models.filter((m) => m.group !== null)
    .sort((a, b) => (b.cost ?? 0) - (a.cost ?? 0) || b.total_tokens - a.total_tokens)
    .slice(0, TOP_MODELS);
  const perModel = await Promise.all(top.map((m) => api("/aggregate",
    { ...base, group_by: bucket, tz: zone, model: m.group })));
  const labels = total.map((row) => row.group);
  const align = (groups) => {
    const byLabel = new Map(groups.map((row) => [row.group, row]));
    return labels.map((label) => byLabel.get(label) ?? { group: label, cost: 0, total_tokens: 0 });
  };
  const series = top.map((m, i) => ({ name: m.group, rows: align(perModel[i].groups) }));
  const rest = total.map((row, i) => {
    const cost = series.reduce((sum, s) => sum - (s.rows[i].cost ?? 0), row.cost ?? 0);
    const tokens = series.reduce((sum, s) => sum - s.rows[i].total_tokens, row.total_tokens);
    // Sums of float USD: back to whole nano-USD, the ledger's unit.
    return { group: row.group, cost: Math.max(Math.round(cost * 1e9) / 1e9, 0), total_tokens: tokens };
  });
  if (rest.some((row) => row.cost > 0 || row.total_tokens > 0)) {
    series.push({ name: top.length ? "other" : "all", rows: rest });
  }
  return series;
}

/** The key's one namespace; every namespace of the ledger only when the API is open. */
async function loadNamespaces() {
  const select = $("namespace");
  const previous = select.value;
  const me = await api("/me");
  state.scopes = me.scopes;
  $("whoami").textContent = me.namespace ? `${me.id} · ${me.namespace}` : "no authentication";
  let names = [me.namespace];
  if (me.namespace === null) {
    const { groups } = await api("/aggregate", { group_by: "namespace" });
    names = groups.map((g) => g.group).filter((g) => g !== null).sort();
  }
  const options = names.length > 1 ? [["", "All namespaces"]] : [];
  for (const name of names) options.push([name, name]);
  if (options.length === 0) options.push(["", "—"]);
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

async function loadEvents(base) {
  const params = { ...base, limit: PAGE_SIZE };
  if (state.offset !== null) params.offset = state.offset;
  else params.cursor = state.cursors[state.page];
  const page = await api("", params);
  state.nextCursor = page.next_cursor;
  renderEvents($("events-table").tBodies[0], page.events, tz());
  const first = state.offset !== null ? state.offset : state.page * PAGE_SIZE;
  const shown = page.events.length;
  $("events-range").textContent = shown
    ? `${(first + 1).toLocaleString("en-US")}–${(first + shown).toLocaleString("en-US")} of ${state.total.toLocaleString("en-US")}, oldest first`
    : "";
  $("events-prev").disabled = state.offset !== null ? state.offset === 0 : state.page === 0;
  $("events-first").disabled = $("events-prev").disabled;
  $("events-next").disabled = !page.next_cursor;
  $("events-latest").disabled = !page.next_cursor;
  // How many pages of events have been shown (tests wait on it).
  document.body.dataset.eventPages = String(Number(document.body.dataset.eventPages ?? 0) + 1);
}

async function loadLimiter() {
  renderLimiter($("limiter"), await api("/limiter"));
  $("limiter-updated").textContent = `live · ${dateTime(new Date().toISOString(), tz())}`;
}

async function refresh() {
  const generation = ++state.generation;
  document.body.dataset.state = "loading";
  const span = range();
  const zone = tz();
  const bucket = bucketFor(span.seconds);
  const base = filters(span);
  state.base = base;
  try {
    const [summary, agents, consumers, models, budgets, settings] = await Promise.all([
      api("/summary", base),
      api("/aggregate", { ...base, group_by: "agent" }),
      api("/aggregate", { ...base, group_by: "consumer" }),
      api("/aggregate", { ...base, group_by: "model" }),
      api("/budgets"),
      api("/budgets/settings"),
    ]);
    const series = await seriesByModel(base, bucket, zone, models.groups);
    if (generation !== state.generation) return;
    state.total = summary.events;
    $("period").textContent = `${dateTime(span.start, zone, { seconds: false })} – ${dateTime(span.end, zone, { seconds: false })} · ${zone}`;
    renderKpis(summary);
    for (const id of ["bucket-spend", "bucket-tokens"]) $(id).textContent = `per ${bucket}`;
    drawStacked($("chart-spend"), series, bucket, "cost", { money: true, title: "USD" });
    drawStacked($("chart-tokens"), series, bucket, "total_tokens", { title: "tokens" });
    renderTop($("top-agents"), agents.groups);
    renderTop($("top-consumers"), consumers.groups);
    renderTop($("top-models"), models.groups, { unnamed: "(no model)" });
    // A stored budget and one given in code may share a name: keyed by namespace too.
    const key = (b) => `${b.namespace ?? ""}/${b.budget}`;
    const thresholds = new Map(settings.budgets.map((b) => [key(b), b.thresholds]));
    renderBudgets($("budgets"), budgets.budgets.map((b) => ({ ...b,
      thresholds: thresholds.get(key(b)) ?? b.thresholds_crossed })), zone);
    await Promise.all([loadEvents(base), loadLimiter(), editor.load(state.scopes)]);
    if (generation !== state.generation) return;
    $("updated").textContent = `Updated ${dateTime(new Date().toISOString(), zone)}`;
    $("banner").hidden = true;
    document.body.dataset.state = "ready";
    document.body.dataset.generation = String(generation);
  } catch (error) {
    if (generation !== state.generation) return;
    failed(error);
  }
}

function failed(error) {
  document.body.dataset.state = "error";
  if (error instanceof ApiError && error.status === 401 && NEEDS_KEY) {
    signOut(error.message);
    return;
  }
  const banner = $("banner");
  banner.textContent = error instanceof ApiError
    ? `The usage API answered ${error.status}: ${error.message}`
    : `The usage API could not be reached: ${error.message}`;
  banner.className = "banner error";
  banner.hidden = false;
}

// --- events paging --------------------------------------------------------------------------

function resetPaging() {
  state.cursors = [null];
  state.page = 0;
  state.offset = null;
}

async function turnPage(change) {
  change();
  try {
    await loadEvents(state.base);
  } catch (error) {
    failed(error);
  }
}

function wirePaging() {
  $("events-next").addEventListener("click", () => turnPage(() => {
    if (state.offset !== null) {
      state.offset += PAGE_SIZE;
      return;
    }
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
  }));
  $("events-prev").addEventListener("click", () => turnPage(() => {
    if (state.offset !== null) state.offset = Math.max(state.offset - PAGE_SIZE, 0);
    else state.page = Math.max(state.page - 1, 0);
  }));
  $("events-first").addEventListener("click", () => turnPage(resetPaging));
  $("events-latest").addEventListener("click", () => turnPage(() => {
    state.offset = Math.max(state.total - PAGE_SIZE, 0);
  }));
}

// --- signing in and out -------------------------------------------------------------------

function signOut(message = "") {
  state.key = null;
  sessionStorage.removeItem(STORAGE_KEY);
  $("dashboard").hidden = true;
  $("controls").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  document.body.dataset.state = "signed-out";
  $("api-key").focus();
}

async function open() {
  $("signin").hidden = true;
  $("controls").hidden = false;
  $("dashboard").hidden = false;
  $("signout").hidden = !NEEDS_KEY;
  try {
    await loadNamespaces();
  } catch (error) {
    failed(error);
    return;
  }
  resetPaging();
  await refresh();
}

function wire() {
  const zone = browserZone();
  $("tz").replaceChildren(...zones(zone).map((name) => new Option(name, name)));
  $("tz").value = zone;
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    $("api-key").value = "";
    if ($("remember").checked) sessionStorage.setItem(STORAGE_KEY, state.key);
    open();
  });
  $("signout").addEventListener("click", () => signOut());
  $("refresh").addEventListener("click", () => refresh());
  for (const id of ["namespace", "range"]) {
    $(id).addEventListener("change", () => { resetPaging(); refresh(); });
  }
  $("tz").addEventListener("change", () => refresh());
  wirePaging();
  window.setInterval(() => {
    if (document.visibilityState === "visible" && document.body.dataset.state === "ready") {
      loadLimiter().catch(failed);
    }
  }, LIVE_SECONDS * 1000);
}

function loadCharts() {
  if (meta("charts") !== "1") return Promise.resolve();
  return new Promise((resolve) => {
    const script = document.createElement("script");
    script.src = `${meta("static")}plotly.min.js`;
    script.onload = resolve;
    script.onerror = resolve;
    document.head.append(script);
  });
}

const editor = new BudgetEditor({
  call,
  changed: () => refresh(),
  zone: tz,
  namespace: () => $("namespace").value,
});

wire();
await loadCharts();
if (NEEDS_KEY && !state.key) signOut();
else open();
