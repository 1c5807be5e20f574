// fogmesh charts: the one set of chart code for the dashboard (/ui) and the scenario report.
// Pure functions from data to SVG markup; no dependencies, no DOM. The dashboard loads this file
// before app.js; mesh/scenario/_report_html.py inlines it into report.html, which renders each
// <div data-chart="{json}"> with drawCharts().
"use strict";

const COLORS = ["#1769aa", "#8e44ad", "#16a085", "#d35400", "#2c3e50", "#c0392b"];

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// series: [{color, points: [[x, y], ...], dash, width}]; x in seconds (Unix or simulated).
// Options: slo (a dashed red line at y), unit, marks ([{at, label}]: vertical lines), bands
// ([{from, to, label}]: shaded spans, e.g. faults), height, empty (text when nothing to draw),
// t0/t1 (the x range; default the data's, at least minSpan wide), xLabel (x -> tick text).
function chart(series, { slo, unit = "", marks, bands, height = 200, empty = "No data.",
  t0, t1, minSpan = 0, xLabel = (t) => `t=${t.toFixed(0)} s` } = {}) {
  const W = 640, H = height, L = 48, R = 10, T = 16, B = 26;
  const points = series.flatMap((s) => s.points);
  if (!points.length) return `<div class="empty">${esc(empty)}</div>`;
  const hi = t1 ?? Math.max(...points.map((p) => p[0]));
  const lo = t0 ?? Math.min(hi - minSpan, ...points.map((p) => p[0]));
  const span = hi - lo || 1;
  const top = Math.max(slo || 0, ...points.map((p) => p[1])) * 1.1 || 1;
  const magnitude = 10 ** Math.floor(Math.log10(top / 4));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * magnitude).find((st) => st * 4 >= top);
  const vmax = step * 4;
  const x = (t) => L + ((t - lo) / span) * (W - L - R);
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  const grid = [0, 1, 2, 3, 4].map((i) => {
    const v = step * i;
    return `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#edf1f5"/>
      <text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" font-size="13" fill="#66727f">${+v.toFixed(2)}</text>`;
  });
  const ticks = [0, 0.5, 1].map((f) => {
    const t = lo + span * f;
    return `<text x="${x(t)}" y="${H - 6}" text-anchor="${f === 0 ? "start" : f === 1 ? "end" : "middle"}" font-size="13" fill="#66727f">${esc(xLabel(t))}</text>`;
  });
  const shaded = (bands || []).filter((b) => b.to >= lo && b.from <= hi).map((b) => {
    const a = x(Math.max(lo, b.from)), z = x(Math.min(hi, b.to));
    return `<rect x="${a}" y="${T}" width="${Math.max(1, z - a)}" height="${H - T - B}" fill="#d33a2c" opacity="0.08"/>
      <text x="${a + 3}" y="${T + 12}" font-size="12" fill="#b03a2e">${esc(b.label)}</text>`;
  });
  const lines = series.filter((s) => s.points.length).map((s) => {
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    const [lx, ly] = s.points[s.points.length - 1];
    const dot = s.dash ? "" : `<circle cx="${x(lx).toFixed(1)}" cy="${y(ly).toFixed(1)}" r="3" fill="${s.color}"/>`;
    return `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.width || 2}" ${s.dash ? 'stroke-dasharray="5 4"' : ""} stroke-linejoin="round"/>${dot}`;
  });
  // Each mark in view (a route switch, a migration): where the module moved.
  const switches = (marks || []).filter((m) => m.at >= lo && m.at <= hi).map((m) =>
    `<line x1="${x(m.at)}" x2="${x(m.at)}" y1="${T}" y2="${H - B}" stroke="#5b6b7a" stroke-dasharray="2 3"/>
     <text x="${x(m.at) + (x(m.at) > W * 0.7 ? -4 : 4)}" y="${H - B - 4}" font-size="12" fill="#5b6b7a"
       text-anchor="${x(m.at) > W * 0.7 ? "end" : "start"}">${esc(m.label)}</text>`);
  const sloLine = slo ? `<line x1="${L}" x2="${W - R}" y1="${y(slo)}" y2="${y(slo)}" stroke="#d33a2c" stroke-dasharray="6 4" stroke-width="1.5"/>
    <text x="${W - R}" y="${y(slo) - 5}" text-anchor="end" font-size="13" fill="#d33a2c">SLO ${slo} ${esc(unit)}</text>` : "";
  return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="chart">${shaded.join("")}${grid.join("")}${ticks.join("")}${sloLine}${switches.join("")}${lines.join("")}
</svg>`;
}

// A legend under a chart: [{color, label, dash}].
function legend(items) {
  return `<div class="legend">${items.map((i) =>
    `<span><i style="background:${i.color}${i.dash ? ";opacity:0.55" : ""}"></i>${esc(i.label)}</span>`).join("")}</div>`;
}

function sparkline(values, color) {
  const W = 160, H = 34;
  if (values.length < 2) return "";
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const d = values.map((v, i) => `${i ? "L" : "M"}${((i / (values.length - 1)) * W).toFixed(1)},${(H - 3 - ((v - lo) / span) * (H - 6)).toFixed(1)}`).join("");
  return `<svg class="spark" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none"><path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"/></svg>`;
}

// The report: each <div data-chart='{"series": [...], "options": {...}, "legend": [...]}'>
// becomes its chart (series' colors default to COLORS in order).
function drawCharts(root) {
  for (const el of (root || document).querySelectorAll("[data-chart]")) {
    const spec = JSON.parse(el.getAttribute("data-chart"));
    const series = spec.series.map((s, i) => ({ color: COLORS[i % COLORS.length], ...s }));
    el.innerHTML = chart(series, spec.options || {}) + (spec.legend ? legend(spec.legend.map(
      (item, i) => ({ color: series[item.series ?? i]?.color, ...item }))) : "");
  }
}
