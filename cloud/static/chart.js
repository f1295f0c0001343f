// capsync data browser: a time chart of the numeric fields of tabular readings, drawn on a <canvas>.
"use strict";

const CapsyncChart = (() => {
  const COLORS = ["#2456c7", "#d1495b", "#00a676", "#edae49", "#8e44ad", "#00798c", "#e36414", "#6d597a",
                  "#3d405b", "#81b29a", "#f28482", "#118ab2"];
  const MAX_SERIES = 12;

  /** Every numeric leaf of a payload as [path, value]: {"pose": {"x": 1}} -> ["pose.x", 1]. */
  function numericLeaves(value, prefix, out, depth) {
    if (depth > 6 || out.length > 64) return out;
    if (typeof value === "number" && Number.isFinite(value)) {
      out.push([prefix || "value", value]);
    } else if (Array.isArray(value)) {
      value.slice(0, 32).forEach((v, i) => numericLeaves(v, `${prefix}[${i}]`, out, depth + 1));
    } else if (value && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) numericLeaves(v, prefix ? `${prefix}.${k}` : k, out, depth + 1);
    }
    return out;
  }

  /** The series of `rows` (query API items): [{label, points: [[t_ms, y]]}], most filled first. */
  function seriesOf(rows) {
    const resources = new Set(rows.map(r => `${r.part_id}/${r.resource_name}/${r.method}`));
    const parts = new Set(rows.map(r => r.part_id));
    const byLabel = new Map();
    for (const r of rows) {
      const t = r.requested_ns / 1e6;
      let base = "";
      if (resources.size > 1) base = (parts.size > 1 ? `${r.part_id}/` : "") + `${r.resource_name}.`;
      for (const [path, y] of numericLeaves(r.payload, "", [], 0)) {
        const label = base + path;
        if (!byLabel.has(label)) byLabel.set(label, []);
        byLabel.get(label).push([t, y]);
      }
    }
    return [...byLabel.entries()]
      .map(([label, points]) => ({ label, points }))
      .sort((a, b) => b.points.length - a.points.length)
      .slice(0, MAX_SERIES);
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
    return ticks;
  }

  function timeLabel(ms, spanMs) {
    const iso = new Date(ms).toISOString();
    if (spanMs < 120e3) return iso.slice(11, 23);
    if (spanMs < 2 * 86400e3) return iso.slice(11, 19);
    return iso.slice(0, 16).replace("T", " ");
  }

  /**
   * Draw `series` on `canvas`. `hidden` is a Set of labels not to draw; with `ownScale` every
   * series is scaled to its own min..max. Returns the number of series drawn.
   */
  function draw(canvas, series, hidden, ownScale) {
    const ratio = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 1000, cssH = canvas.clientHeight || 320;
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.fillStyle = "#fff";
    g.fillRect(0, 0, cssW, cssH);
    const shown = series.filter(s => !hidden.has(s.label) && s.points.length);
    canvas.dataset.series = String(shown.length);
    canvas.dataset.points = String(shown.reduce((n, s) => n + s.points.length, 0));
    g.font = "12px system-ui, sans-serif";
    if (!shown.length) {
      g.fillStyle = "#5c6677";
      g.fillText("no numeric fields to chart", 20, 30);
      return 0;
    }
    const m = { left: ownScale ? 46 : 70, right: 16, top: 14, bottom: 30 };
    const w = cssW - m.left - m.right, h = cssH - m.top - m.bottom;
    let t0 = Infinity, t1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of shown) {
      s.min = Infinity; s.max = -Infinity;
      for (const [t, y] of s.points) {
        t0 = Math.min(t0, t); t1 = Math.max(t1, t);
        s.min = Math.min(s.min, y); s.max = Math.max(s.max, y);
      }
      y0 = Math.min(y0, s.min); y1 = Math.max(y1, s.max);
    }
    if (ownScale) { y0 = 0; y1 = 1; }
    if (y1 === y0) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    if (t1 === t0) { t0 -= 500; t1 += 500; }
    const X = t => m.left + (t - t0) / (t1 - t0) * w;
    const Y = y => m.top + h - (y - y0) / (y1 - y0) * h;
    // grid and axes
    g.strokeStyle = "#e6e9ee"; g.lineWidth = 1; g.fillStyle = "#5c6677";
    g.textAlign = "right"; g.textBaseline = "middle";
    for (const v of niceTicks(y0, y1, 6)) {
      g.beginPath(); g.moveTo(m.left, Y(v)); g.lineTo(m.left + w, Y(v)); g.stroke();
      g.fillText(ownScale ? `${Math.round(v * 100)}%` : String(+v.toPrecision(6)), m.left - 6, Y(v));
    }
    g.textAlign = "center"; g.textBaseline = "top";
    for (const v of niceTicks(t0, t1, 6)) {
      g.beginPath(); g.moveTo(X(v), m.top); g.lineTo(X(v), m.top + h); g.stroke();
      g.fillText(timeLabel(v, t1 - t0), X(v), m.top + h + 8);
    }
    g.strokeStyle = "#9aa3b2";
    g.strokeRect(m.left, m.top, w, h);
    // lines
    series.forEach((s, i) => {
      if (hidden.has(s.label) || !s.points.length) return;
      const scale = ownScale ? (y => (s.max > s.min ? (y - s.min) / (s.max - s.min) : 0.5)) : (y => y);
      g.strokeStyle = COLORS[i % COLORS.length];
      g.lineWidth = 1.6;
      g.beginPath();
      s.points.forEach(([t, y], j) => { if (j) g.lineTo(X(t), Y(scale(y))); else g.moveTo(X(t), Y(scale(y))); });
      g.stroke();
      if (s.points.length < 60) {
        g.fillStyle = g.strokeStyle;
        for (const [t, y] of s.points) { g.beginPath(); g.arc(X(t), Y(scale(y)), 2.2, 0, 2 * Math.PI); g.fill(); }
      }
    });
    return shown.length;
  }

  /** Build the clickable legend for `series` into `el`; `onToggle(label)` when one is clicked. */
  function legend(el, series, hidden, onToggle) {
    el.replaceChildren();
    series.forEach((s, i) => {
      const item = document.createElement("span");
      item.className = "item" + (hidden.has(s.label) ? " off" : "");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = COLORS[i % COLORS.length];
      const text = document.createElement("span");
      const range = Number.isFinite(s.min) ? ` (${+s.min.toPrecision(4)} … ${+s.max.toPrecision(4)})` : "";
      text.textContent = s.label + range;
      item.append(sw, text);
      item.title = "show or hide this series";
      item.addEventListener("click", () => onToggle(s.label));
      el.append(item);
    });
  }

  return { seriesOf, draw, legend, numericLeaves };
})();
