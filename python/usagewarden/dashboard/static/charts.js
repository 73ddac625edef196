// Spend and tokens over time, stacked by model, with the plotly.js bundle
// the server ships (window.Plotly); without it, a note saying what to install.

const COLOURS = ["#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6",
  "#94a3b8"];

/** A bucket label of the API as a plotly date (local wall time of the zone asked). */
function xValue(label, bucket) {
  if (bucket === "hour") return label.slice(0, 16).replace("T", " ");
  return label;
}

function layout(bucket, yTitle, money) {
  return {
    barmode: "stack",
    bargap: 0.15,
    margin: { l: 56, r: 12, t: 8, b: 40 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12,
      color: "#334155" },
    xaxis: { type: bucket === "week" ? "category" : "date", gridcolor: "#eef2f7",
      linecolor: "#e2e8f0", tickformat: bucket === "hour" ? "%d %b %H:%M" : undefined },
    yaxis: { title: { text: yTitle }, gridcolor: "#eef2f7", zeroline: false, rangemode: "tozero",
      tickprefix: money ? "$" : "", separatethousands: true },
    legend: { orientation: "h", y: -0.18, x: 0 },
    hovermode: "x unified",
  };
}

export function chartsAvailable() {
  return typeof window.Plotly === "object" && window.Plotly !== null;
}

/**
 * `series`: [{name, rows}] where rows are the API's groups (bucket label → totals),
 * already split by model with a last "other" series for the rest.
 */
export function drawStacked(node, series, bucket, field, { money = false, title = "" } = {}) {
  if (!chartsAvailable()) {
    node.replaceChildren(Object.assign(document.createElement("p"), {
      className: "empty",
      textContent: "Charts need the plotly package: pip install 'usagewarden[dashboard]'",
    }));
    return;
  }
  const traces = series.map((s, i) => ({
    type: "bar",
    name: s.name,
    x: s.rows.map((row) => xValue(row.group, bucket)),
    y: s.rows.map((row) => row[field] ?? 0),
    customdata: s.rows.map((row) => row.group),
    marker: { color: COLOURS[i % COLOURS.length] },
    hovertemplate: money ? "%{fullData.name}: $%{y:,.4f}<extra></extra>"
      : "%{fullData.name}: %{y:,}<extra></extra>",
  }));
  window.Plotly.react(node, traces, layout(bucket, title, money), {
    displayModeBar: false,
    responsive: true,
  });
}
