// Budgets kept in the ledger database: shown with their spend, and created,
// edited, reset and deleted through the usage API's /budgets/managed routes
// (keys with the usage:admin scope only).
import { dateTime, el } from "./format.js";
import { renderBudgets } from "./panels.js";

const ROUTES = "/budgets/managed";

/** The form's fields as the API's budget definition. */
function definition(form) {
  const value = (id) => form.querySelector(`#${id}`).value.trim();
  const thresholds = value("bf-thresholds")
    ? value("bf-thresholds").split(",").map((t) => Number(t.trim()))
    : [];
  const period = value("bf-period");
  const body = {
    limit_usd: Number(value("bf-limit")),
    // A rolling window is its number of seconds.
    period: /^[0-9.]+$/.test(period) ? Number(period) : period,
    scope: value("bf-scope"),
    match: value("bf-match") || null,
    thresholds,
    action: value("bf-action"),
    downgrade_to: value("bf-action") === "downgrade" ? value("bf-downgrade") || null : null,
    tz: value("bf-tz"),
    soft: form.querySelector("#bf-soft").checked,
  };
  return body;
}

function fill(form, budget) {
  const set = (id, v) => { form.querySelector(`#${id}`).value = v ?? ""; };
  set("bf-name", budget?.name);
  set("bf-limit", budget?.limit_usd);
  const periods = form.querySelector("#bf-period");
  for (const option of [...periods.options]) if (option.dataset.rolling) option.remove();
  if (typeof budget?.period === "number") {
    // A rolling window keeps its length when the budget is edited.
    const option = new Option(`rolling ${budget.period} s`, String(budget.period));
    option.dataset.rolling = "1";
    periods.append(option);
  }
  set("bf-period", budget ? String(budget.period) : "monthly");
  form.querySelector("#bf-soft").checked = Boolean(budget?.soft);
  set("bf-scope", budget?.scope ?? "global");
  set("bf-match", budget?.match);
  set("bf-thresholds", (budget?.thresholds ?? [0.5, 0.75, 0.9, 1]).join(", "));
  set("bf-action", budget?.action ?? "block");
  set("bf-downgrade", budget?.downgrade_to);
  if (budget) set("bf-tz", budget.tz);
}

/** The messages of a refused request: the API's own, with the fields it names. */
function explain(error) {
  const fields = (error.detail?.errors ?? []).map((e) => e.loc.slice(1).join("."));
  return fields.length ? `${error.message} (${fields.join(", ")})` : error.message;
}

export class BudgetEditor {
  /**
   * `call(method, path, params, body)` asks the API (and throws its errors);
   * `changed()` runs after every change, to redraw what depends on budgets.
   */
  constructor({ call, changed, zone, namespace }) {
    this.call = call;
    this.changed = changed;
    this.zone = zone;
    this.namespace = namespace;
    this.section = document.getElementById("managed");
    this.list = document.getElementById("managed-list");
    this.form = document.getElementById("budget-form");
    this.editing = null;
    this.records = new Map();
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    document.getElementById("bf-cancel").addEventListener("click", () => this.edit(null));
  }

  params() {
    const namespace = this.namespace();
    return namespace ? { namespace } : {};
  }

  /** Shows the section to keys that may manage budgets, and loads them. */
  async load(scopes) {
    this.section.hidden = !scopes.includes("usage:admin");
    if (this.section.hidden) return;
    const [listed, status] = await Promise.all([
      this.call("GET", ROUTES, this.params()),
      this.call("GET", `${ROUTES}/status`, this.params()),
    ]);
    this.records = new Map(listed.budgets.map((b) => [b.name, b]));
    const rows = status.budgets.map((row) => ({
      ...row, thresholds: this.records.get(row.budget)?.thresholds ?? row.thresholds_crossed,
    }));
    // A budget with no spend yet per scope value still gets its line.
    for (const record of listed.budgets) {
      if (!rows.some((row) => row.budget === record.name)) {
        rows.push({
          budget: record.name, scope: record.scope, scope_value: record.match ?? "",
          spent_usd: 0, reserved_usd: 0, limit_usd: record.limit_usd, percent: 0,
          next_reset: null, thresholds: record.thresholds, thresholds_crossed: [],
        });
      }
    }
    renderBudgets(this.list, rows, this.zone());
    if (rows.length === 0) {
      this.list.replaceChildren(el("p", { class: "empty" },
        "No budget is stored for this namespace yet: create one below."));
    }
    for (const node of this.list.querySelectorAll(".budget")) this.addActions(node);
    if (!document.getElementById("bf-tz").value) document.getElementById("bf-tz").value = this.zone();
    document.body.dataset.managed = String(Number(document.body.dataset.managed ?? 0) + 1);
  }

  addActions(node) {
    const name = node.dataset.budget;
    const record = this.records.get(name);
    const button = (label, action, cls = "ghost small") => {
      const b = el("button", { type: "button", class: cls, "data-action": action }, label);
      b.addEventListener("click", () => this.act(action, name));
      return b;
    };
    const details = record
      ? `${record.period} · ${record.action} · ${record.tz}`
        + (record.reset_at ? ` · reset ${dateTime(record.reset_at, this.zone(), { seconds: false })}` : "")
      : "";
    node.append(el("div", { class: "actions" },
      el("span", { class: "details" }, details),
      button("Edit", "edit"), button("Reset spend", "reset"), button("Delete", "delete", "ghost small danger")));
  }

  edit(name) {
    this.editing = name;
    fill(this.form, name ? this.records.get(name) : null);
    document.getElementById("bf-name").readOnly = name !== null;
    document.getElementById("bf-submit").textContent = name ? `Save ${name}` : "Create budget";
    document.getElementById("bf-cancel").hidden = name === null;
    document.getElementById("bf-error").textContent = "";
    if (name === null) document.getElementById("bf-tz").value = this.zone();
  }

  async act(action, name) {
    if (action === "edit") {
      this.edit(name);
      return;
    }
    const path = `${ROUTES}/${encodeURIComponent(name)}`;
    await this.run(() => (action === "delete"
      ? this.call("DELETE", path, this.params())
      : this.call("POST", `${path}/reset`, this.params())));
  }

  async save() {
    const body = definition(this.form);
    await this.run(async () => {
      if (this.editing) {
        await this.call("PUT", `${ROUTES}/${encodeURIComponent(this.editing)}`, this.params(), body);
      } else {
        const name = document.getElementById("bf-name").value.trim();
        await this.call("POST", ROUTES, this.params(), { name, ...body });
      }
      this.edit(null);
    });
  }

  async run(work) {
    const error = document.getElementById("bf-error");
    error.textContent = "";
    try {
      await work();
    } catch (failure) {
      error.textContent = explain(failure);
      document.body.dataset.budgetError = String(Number(document.body.dataset.budgetError ?? 0) + 1);
      return;
    }
    await this.changed();
  }
}
