// Formatting numbers, money and times the same way everywhere on the page.

const INTEGER = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

/** USD: cents from $1 up, four decimals below (so small spends do not read $0.00). */
export function usd(value) {
  if (value === null || value === undefined) return "—";
  const digits = Math.abs(value) >= 1 || value === 0 ? 2 : 4;
  return "$" + value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function integer(value) {
  return INTEGER.format(value);
}

/** 1234567 → "1.23M", for the small print beside exact figures. */
export function compact(value) {
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 })
    .format(value);
}

export function percent(value) {
  return `${value.toFixed(1)}%`;
}

/** An ISO instant as a date and time in the zone `tz`. */
export function dateTime(iso, tz, { seconds = true } = {}) {
  if (!iso) return "—";
  return new Intl.DateTimeFormat("en-GB", {
    timeZone: tz,
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined,
    hour12: false,
  }).format(new Date(iso));
}

/** The zone's name as the browser knows it, e.g. "Europe/Paris". */
export function browserZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

/** Every IANA zone the browser knows, with `first` at the top. */
export function zones(first) {
  const known = typeof Intl.supportedValuesOf === "function"
    ? Intl.supportedValuesOf("timeZone") : [];
  const all = new Set(["UTC", ...known]);
  all.delete(first);
  return [first, ...all];
}

/** A plain element: `el("td", {class: "num"}, "12")`. Text is never parsed as HTML. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "width") node.style.width = value;
    else if (name === "left") node.style.left = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
