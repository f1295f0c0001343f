// capsync data browser: a time chart of the numeric fields of tabular readings, drawn on a <canvas>
// from the cloud's aggregates (per time bucket: min, max, mean, count).
"use strict";

const CapsyncChart = (() => {
  const COLORS = ["#2456c7", "#d1495b", "#00a676", "#edae49", "#8e44ad", "#00798c", "#e36414", "#6d597a",
                  "#3d405b", "#81b29a", "#f28482", "#118ab2"];
  /** Series drawn at first; the others start hidden (the legend says so and shows them on a click). */
  const MAX_SERIES = 12;

  function paramsLabel(params) {
    const entries = Object.entries(params && typeof params === "object" ? params : {});
    if (!entries.length) return "";
    const text = entries.length === 1 ? String(entries[0][1]) : entries.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(",");
    return `[${text.length > 40 ? text.slice(0, 39) + "…" : text}]`;
  }

  /**
   * The series of aggregate answers ([{part, answer}] of GET /v1/tabular/aggregate): one per part,
   * resource, method, params and field, as {label, points: [[t_ms, mean, min, max, bucket]], count}.
   * Series of different params (board Analogs A1 and A2) stay apart. Ordered by label.
   */
  function seriesOfAggregates(answers) {
    const keys = new Set(), parts = new Set();
    for (const { part, answer } of answers) {
      for (const s of answer.series) {
        parts.add(part);
        keys.add(JSON.stringify([part, s.resource_type, s.resource_name, s.method, s.params]));
      }
    }
    const out = [];
    for (const { part, answer } of answers) {
      const t0 = answer.start_ns / 1e6, w = answer.bucket_ns / 1e6;
      for (const s of answer.series) {
        let prefix = parts.size > 1 ? `${part}/` : "";
        if (keys.size > 1) prefix += `${s.resource_name}${paramsLabel(s.params)}.`;
        for (const f of s.fields) {
          const points = f.bucket.map((b, i) => [t0 + (b + 0.5) * w, f.mean[i], f.min[i], f.max[i], b]);
          out.push({ label: prefix + f.field, points, count: f.count.reduce((a, b) => a + b, 0) });
        }
      }
    }
    return out.sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0));
  }

  /** Buckets apart that make a gap: more than 3x the series' usual spacing (a slow sensor is not all gaps). */
  function gapAfter(points) {
    const steps = points.slice(1).map((p, j) => p[4] - points[j][4]).sort((a, b) => a - b);
    return steps.length ? Math.max(1, 3 * steps[Math.floor(steps.length / 2)]) : 1;
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

  /**
   * Draw `series` on `canvas` over the window [t0, t1] (ms): each bucket's min..max as a light band,
   * its mean as the line, broken where buckets hold no data (a gap is drawn as a gap). `hidden` is a
   * Set of labels not to draw; with `ownScale` every series is scaled to its own min..max. Returns
   * the number of series drawn.
   */
  function draw(canvas, series, hidden, ownScale, t0, t1) {
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
    canvas.dataset.window = `${t0},${t1}`;
    g.font = "12px system-ui, sans-serif";
    if (!shown.length) {
      g.fillStyle = "#5c6677";
      g.fillText("no numeric fields to chart", 20, 30);
      return 0;
    }
    const m = { left: ownScale ? 46 : 70, right: 16, top: 14, bottom: 30 };
    const w = cssW - m.left - m.right, h = cssH - m.top - m.bottom;
    let y0 = Infinity, y1 = -Infinity;
    for (const s of shown) {
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
      g.fillText(CapsyncTime.axisLabel(v, t1 - t0), X(v), m.top + h + 8);
    }
    g.strokeStyle = "#9aa3b2";
    g.strokeRect(m.left, m.top, w, h);
    // bands (min..max) and mean lines, broken at gaps
    let gaps = 0;
    series.forEach((s, i) => {
      if (hidden.has(s.label) || !s.points.length) return;
      const scale = ownScale ? (y => (s.max > s.min ? (y - s.min) / (s.max - s.min) : 0.5)) : (y => y);
      const color = COLORS[i % COLORS.length];
      g.globalAlpha = 0.25;
      g.strokeStyle = color;
      g.lineWidth = 1;
      g.beginPath();
      for (const [t, , lo, hi] of s.points) { g.moveTo(X(t), Y(scale(lo))); g.lineTo(X(t), Y(scale(hi)) - 0.5); }
      g.stroke();
      g.globalAlpha = 1;
      g.lineWidth = 1.6;
      g.beginPath();
      const limit = gapAfter(s.points);
      s.points.forEach(([t, y, , , b], j) => {
        const gap = j > 0 && b - s.points[j - 1][4] > limit;
        if (gap) gaps += 1;
        if (j && !gap) g.lineTo(X(t), Y(scale(y))); else g.moveTo(X(t), Y(scale(y)));
      });
      g.stroke();
      if (s.points.length < 60) {
        g.fillStyle = color;
        for (const [t, y] of s.points) { g.beginPath(); g.arc(X(t), Y(scale(y)), 2.2, 0, 2 * Math.PI); g.fill(); }
      }
    });
    canvas.dataset.gaps = String(gaps);
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
      const range = Number.isFinite(s.min) ? ` (${+s.min.toPrecision(6)} … ${+s.max.toPrecision(6)})` : "";
      text.textContent = s.label + range;
      item.append(sw, text);
      item.title = "show or hide this series";
      item.addEventListener("click", () => onToggle(s.label));
      el.append(item);
    });
  }

  /** Set each series' overall min and max (what the legend shows and the scales use). */
  function measure(series) {
    for (const s of series) {
      s.min = Math.min(...s.points.map(p => p[2]));
      s.max = Math.max(...s.points.map(p => p[3]));
    }
    return series;
  }

  return { seriesOfAggregates, measure, draw, legend, MAX_SERIES };
})();
