// The panels below the charts: top lists, budgets, the limiter and events.
import { compact, dateTime, el, integer, percent, usd } from "./format.js";

function empty(text) {
  return el("p", { class: "empty" }, text);
}

/** Groups of the API (agent, consumer or model), largest spend first. */
export function renderTop(node, groups, { limit = 8, unnamed = "(none)" } = {}) {
  const rows = [...groups]
    .sort((a, b) => (b.cost ?? 0) - (a.cost ?? 0) || b.total_tokens - a.total_tokens)
    .slice(0, limit);
  if (rows.length === 0) {
    node.replaceChildren(empty("No usage in this range."));
    return;
  }
  const largest = Math.max(...rows.map((row) => row.cost ?? 0), 1e-12);
  node.replaceChildren(...rows.map((row) => el(
    "li",
    { "data-group": row.group ?? "" },
    el("div", { class: "row" },
      el("span", { class: "name", title: row.group ?? unnamed }, row.group ?? unnamed),
      el("span", { class: "value", "data-field": "cost" }, usd(row.cost))),
    el("div", { class: "bar" }, el("span", { width: `${((row.cost ?? 0) / largest) * 100}%` })),
    el("div", { class: "sub" },
      el("span", { "data-field": "total_tokens" }, integer(row.total_tokens)), " tokens · ",
      el("span", { "data-field": "events" }, integer(row.events)), " events",
      row.unpriced_events ? ` · ${integer(row.unpriced_events)} unpriced` : ""),
  )));
}

function meterClass(fraction) {
  if (fraction >= 1) return "fill bad";
  if (fraction >= 0.75) return "fill warn";
  return "fill";
}

export function renderBudgets(node, budgets, tz) {
  if (budgets.length === 0) {
    node.replaceChildren(empty("No budgets are attached to this API."));
    return;
  }
  node.replaceChildren(...budgets.map((b) => {
    const fraction = b.limit_usd > 0 ? b.spent_usd / b.limit_usd : 1;
    const meter = el("div", { class: "meter" },
      el("span", { class: meterClass(fraction), width: `${Math.min(fraction, 1) * 100}%` }));
    for (const threshold of b.thresholds ?? b.thresholds_crossed) {
      const crossed = b.thresholds_crossed.includes(threshold);
      meter.append(el("span", {
        class: crossed ? "tick crossed" : "tick",
        left: `calc(${Math.min(threshold, 1) * 100}% - 1px)`,
        title: `${Math.round(threshold * 100)}%${crossed ? " (crossed)" : ""}`,
      }));
    }
    const crossed = b.thresholds_crossed.map((t) => `${Math.round(t * 100)}%`).join(" ");
    return el("div", { class: "budget", "data-budget": b.budget, "data-scope-value": b.scope_value },
      el("div", { class: "row" },
        el("span", { class: "name" }, b.budget, " ",
          el("span", { class: "scope" }, b.scope_value ? `${b.scope} ${b.scope_value}` : b.scope)),
        el("span", { class: "amount" },
          el("span", { "data-field": "spent_usd" }, usd(b.spent_usd)), " of ",
          el("span", { "data-field": "limit_usd" }, usd(b.limit_usd)))),
      meter,
      el("div", { class: "meta" },
        el("span", {}, el("span", { "data-field": "percent" }, percent(b.percent)),
          b.reserved_usd > 0 ? ` · ${usd(b.reserved_usd)} in flight` : "",
          crossed ? ` · thresholds crossed: ${crossed}` : ""),
        el("span", { "data-field": "next_reset" },
          b.next_reset ? `resets ${dateTime(b.next_reset, tz, { seconds: false })}` : "never resets")));
  }));
}

function limitLabel(limit) {
  return `${limit.dimension.replace("_", " ")} per ${limit.unit}`;
}

export function renderLimiter(node, state) {
  if (!state.attached) {
    node.replaceChildren(empty("No rate limiter is attached to this API."));
    return;
  }
  if (state.keys.length === 0) {
    node.replaceChildren(empty("No limiter key is visible to this API key."));
    return;
  }
  node.replaceChildren(...state.keys.map((key) => el("div", { class: "key-block", "data-key": key.key },
    el("p", { class: "key" }, key.key),
    ...key.limits.map((limit) => {
      const fraction = limit.amount > 0 ? limit.used / limit.amount : 1;
      const money = limit.dimension === "cost";
      const show = money ? usd : integer;
      return el("div", { class: "limit", "data-limit": limit.name },
        el("div", { class: "row" }, el("span", {}, limitLabel(limit)),
          el("span", { class: "amount" }, el("span", { "data-field": "used" }, show(limit.used)),
            " / ", show(limit.amount))),
        el("div", { class: "meter" },
          el("span", { class: meterClass(fraction), width: `${Math.min(fraction, 1) * 100}%` })),
        el("div", { class: "meta" }, el("span", {}, `${percent(fraction * 100)} of the window`),
          el("span", {}, `${show(limit.remaining)} left`)));
    }))));
}

export function renderEvents(tbody, events, tz) {
  if (events.length === 0) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: "8", class: "muted" },
      "No events in this range.")));
    return;
  }
  tbody.replaceChildren(...events.map((e) => el("tr", { "data-request-id": e.request_id },
    el("td", { title: e.timestamp }, dateTime(e.timestamp, tz)),
    el("td", {}, e.agent_id),
    el("td", {}, e.consumer_id),
    el("td", { class: e.model ? "" : "muted" }, e.model ?? "—"),
    el("td", { class: "muted" }, e.action),
    el("td", { class: "num" }, integer(e.tokens_in)),
    el("td", { class: "num" }, integer(e.tokens_out)),
    el("td", { class: "num", "data-field": "cost" }, usd(e.cost)))));
}

export function renderKpis(summary) {
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set("kpi-cost", usd(summary.cost));
  set("kpi-cost-sub", summary.unpriced_events
    ? `${integer(summary.unpriced_events)} ${summary.unpriced_events === 1 ? "event" : "events"} without a price`
    : `${usd(summary.events ? (summary.cost ?? 0) / summary.events : 0)} per event`);
  set("kpi-events", integer(summary.events));
  set("kpi-events-sub", `${integer(summary.api_calls)} API calls`);
  set("kpi-tokens", integer(summary.total_tokens));
  set("kpi-tokens-sub", `${compact(summary.tokens_in)} in · ${compact(summary.tokens_out)} out`);
  set("kpi-agents", integer(summary.unique_agents));
  set("kpi-agents-sub", `${integer(summary.unique_consumers)} consumers`);
}
