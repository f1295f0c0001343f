// capsync data browser: sign-in, the parts overview, filters, the readings table and chart, the gallery,
// and SQL/MQL queries. Everything comes from the cloud's query API (see docs/cloud.md).
"use strict";

(() => {
  const MAX_ROWS = 10000;       // readings fetched for the count, the chart and the CSV
  const MAX_BINARY = 500;       // binary items listed
  const TABLE_ROWS = 500;       // readings shown in the table
  const MAX_COLUMNS = 16;
  const $ = id => document.getElementById(id);
  const state = { summaries: new Map(), rows: [], binary: [], series: [], hidden: new Set() };

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "hint";
  }

  function showError(e) {
    status(e instanceof CapsyncApi.ApiError ? `${e.status} ${e.message}` : String(e.message || e), true);
  }

  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  // -- sign-in and the parts overview ----------------------------------------------------------

  async function refresh() {
    const parts = CapsyncApi.parts();
    state.summaries.clear();
    await Promise.all(parts.map(async p => {
      try {
        state.summaries.set(p.part, await CapsyncApi.getJson(p.part, "/v1/summary"));
      } catch (e) {
        if (e.status === 401) CapsyncApi.signOut(p.part);
        showError(e);
      }
    }));
    renderSignedIn();
    renderParts();
    renderFilterChoices();
    const any = state.summaries.size > 0;
    for (const id of ["parts-section", "filter-section", "tabular-section", "binary-section", "query-section"]) $(id).hidden = !any;
  }

  function renderSignedIn() {
    const box = $("signed-in");
    box.replaceChildren();
    for (const part of state.summaries.keys()) {
      const chip = el("span", undefined, "chip");
      const out = el("button", "×");
      out.type = "button";
      out.title = `sign out of ${part}`;
      out.addEventListener("click", () => { CapsyncApi.signOut(part); refresh(); });
      chip.append(el("span", part), out);
      box.append(chip);
    }
  }

  function renderParts() {
    const box = $("parts");
    box.replaceChildren();
    for (const [part, summary] of state.summaries) {
      box.append(el("div", `${part} — ${summary.resources.length} capture method(s)`, "part-name"));
      const table = el("table", undefined, "parts-table");
      const head = el("tr");
      for (const h of ["type", "name", "method", "data", "items", "files", "size", "first (UTC)", "last (UTC)", "tags"]) head.append(el("th", h));
      table.append(el("thead"), el("tbody"));
      table.tHead.append(head);
      for (const r of summary.resources) {
        const tr = el("tr", undefined, "clickable");
        tr.title = "show this resource";
        for (const v of [r.resource_type || "(file)", r.resource_name, r.method, r.data_kind, r.items, r.files,
                         bytes(r.bytes), r.first || "", r.last || "", r.tags.join(", ")]) {
          tr.append(el("td", String(v), typeof v === "number" ? "num" : ""));
        }
        tr.addEventListener("click", () => {
          $("f-part").value = part;
          $("f-type").value = r.resource_type;
          $("f-name").value = r.resource_name;
          $("f-method").value = r.method;
          $("f-kind").value = r.data_kind;
          apply();
        });
        table.tBodies[0].append(tr);
      }
      box.append(table);
    }
  }

  function renderFilterChoices() {
    const sel = $("f-part");
    const current = sel.value;
    sel.replaceChildren(el("option", "all signed-in parts"));
    sel.options[0].value = "";
    for (const part of state.summaries.keys()) {
      const o = el("option", part);
      o.value = part;
      sel.append(o);
    }
    sel.value = state.summaries.has(current) ? current : "";
    const all = [...state.summaries.values()].flatMap(s => s.resources);
    for (const [id, key] of [["dl-types", "resource_type"], ["dl-names", "resource_name"], ["dl-methods", "method"]]) {
      $(id).replaceChildren(...[...new Set(all.map(r => r[key]).filter(Boolean))].sort().map(v => { const o = el("option"); o.value = v; return o; }));
    }
    const mql = [...state.summaries.values()].some(s => s.mql);
    const opt = $("q-lang").querySelector('option[value="mql"]');
    opt.disabled = !mql;
    opt.textContent = mql ? "MQL (MongoDB)" : "MQL (needs the MongoDB store)";
  }

  // -- filters and results ---------------------------------------------------------------------

  function utc(value) {
    if (!value) return null;
    return (value.length === 16 ? value + ":00" : value) + "Z";
  }

  function params() {
    const p = new URLSearchParams();
    for (const [id, name] of [["f-type", "resource_type"], ["f-name", "resource_name"], ["f-method", "method"]]) {
      const v = $(id).value.trim();
      if (v) p.set(name, v);
    }
    const start = utc($("f-start").value), end = utc($("f-end").value);
    if (start) p.set("start", start);
    if (end) p.set("end", end);
    for (const t of $("f-tags").value.split(",").map(s => s.trim()).filter(Boolean)) p.append("tag", t);
    return p;
  }

  async function apply() {
    const parts = $("f-part").value ? [$("f-part").value] : [...state.summaries.keys()];
    const kind = $("f-kind").value;
    const p = params();
    const began = performance.now();
    status("Loading…");
    $("apply-filters").disabled = true;
    try {
      const rows = [], binary = [];
      let more = false;
      for (const part of parts) {
        if (kind !== "binary") {
          const got = await CapsyncApi.fetchAll(part, "/v1/tabular", p, MAX_ROWS - rows.length);
          rows.push(...got.items);
          more = more || got.more;
        }
        if (kind !== "tabular") binary.push(...(await CapsyncApi.fetchAll(part, "/v1/binary", p, MAX_BINARY)).items);
      }
      const byTime = (a, b) => a.requested_ns - b.requested_ns;
      state.rows = rows.sort(byTime);
      state.binary = binary.sort(byTime);
      state.hidden.clear();
      $("tabular-section").hidden = kind === "binary";
      $("binary-section").hidden = kind === "tabular";
      renderRows(more);
      renderBinary();
      const ms = Math.round(performance.now() - began);
      status(`Loaded ${rows.length}${more ? "+" : ""} readings and ${binary.length} binary items from ${parts.length} part(s) in ${ms} ms.`);
    } catch (e) {
      showError(e);
    } finally {
      $("apply-filters").disabled = false;
    }
  }

  function leaves(value, prefix, out) {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) leaves(v, prefix ? `${prefix}.${k}` : k, out);
    } else {
      out[prefix || "value"] = value;
    }
    return out;
  }

  function columnsOf(rows) {
    const counts = new Map();
    for (const r of rows.slice(0, 2000)) for (const k of Object.keys(leaves(r.payload, "", {}))) counts.set(k, (counts.get(k) || 0) + 1);
    const keys = [...counts.keys()];
    return keys.length <= MAX_COLUMNS ? keys : null;  // null: show the payload as JSON
  }

  function cells(r, cols) {
    const flat = cols ? leaves(r.payload, "", {}) : null;
    const multi = state.summaries.size > 1;
    const head = [r.requested, ...(multi ? [r.part_id] : []), `${r.resource_type}/${r.resource_name}`, r.method];
    const body = cols ? cols.map(c => flat[c]) : [JSON.stringify(r.payload)];
    return [...head, ...body, r.tags.join(" ")];
  }

  function headers(cols) {
    return ["requested (UTC)", ...(state.summaries.size > 1 ? ["part"] : []), "resource", "method", ...(cols || ["payload"]), "tags"];
  }

  function renderRows(more) {
    const rows = state.rows;
    const count = $("row-count");
    count.textContent = `${rows.length}${more ? "+" : ""} reading${rows.length === 1 ? "" : "s"}`;
    count.dataset.count = String(rows.length);
    const cols = columnsOf(rows);
    const table = $("readings");
    const head = el("tr");
    for (const h of headers(cols)) head.append(el("th", h));
    table.tHead.replaceChildren(head);
    const frag = document.createDocumentFragment();
    for (const r of rows.slice(0, TABLE_ROWS)) {
      const tr = el("tr");
      for (const v of cells(r, cols)) {
        const isNum = typeof v === "number";
        const text = v === undefined ? "" : (typeof v === "object" && v !== null ? JSON.stringify(v) : String(isNum ? +v.toPrecision(8) : v));
        tr.append(el("td", text, isNum ? "num" : (cols ? "" : "json")));
      }
      frag.append(tr);
    }
    table.tBodies[0].replaceChildren(frag);
    $("table-note").textContent = rows.length > TABLE_ROWS ? `The table shows the first ${TABLE_ROWS}; the chart and the CSV have all ${rows.length}.` : "";
    state.series = CapsyncChart.seriesOf(rows);
    // Fields of very different magnitudes (pressure ~1000, voltage ~12) each get their own scale.
    const spans = state.series.map(s => Math.max(...s.points.map(p => Math.abs(p[1])))).filter(v => v > 0);
    $("own-scale").checked = spans.length > 1 && Math.max(...spans) / Math.min(...spans) > 20;
    redrawChart();
  }

  function redrawChart() {
    CapsyncChart.draw($("chart"), state.series, state.hidden, $("own-scale").checked);
    CapsyncChart.legend($("legend"), state.series, state.hidden, label => {
      if (state.hidden.has(label)) state.hidden.delete(label); else state.hidden.add(label);
      redrawChart();
    });
  }

  function renderBinary() {
    const n = CapsyncGallery.render($("gallery"), $("files"), state.binary, showError);
    const count = $("binary-count");
    count.textContent = `${state.binary.length} item(s), ${n} shown as images`;
    count.dataset.count = String(state.binary.length);
  }

  function downloadCsv() {
    const cols = columnsOf(state.rows);
    const csv = CapsyncCsv.text(headers(cols), state.rows.map(r => cells(r, cols)));
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const a = el("a");
    a.href = url;
    a.download = "readings.csv";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  // -- queries -----------------------------------------------------------------------------------

  const EXAMPLES = {
    sql: "SELECT resource_name, method, count(*) AS n, min(requested) AS first, max(requested) AS last\nFROM readings GROUP BY resource_name, method",
    mql: '[{"$group": {"_id": "$resource_name", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]',
  };

  async function runQuery(ev) {
    ev.preventDefault();
    const part = $("f-part").value || [...state.summaries.keys()][0];
    const lang = $("q-lang").value;
    $("query-error").textContent = "";
    try {
      let body;
      if (lang === "sql") body = { query: $("q-text").value };
      else {
        try { body = { pipeline: JSON.parse($("q-text").value) }; } catch (e) { throw new Error(`the pipeline is not JSON: ${e.message}`); }
      }
      const res = await CapsyncApi.postJson(part, `/v1/tabular/${lang}`, body);
      const table = $("query-result");
      const head = el("tr");
      for (const c of res.columns) head.append(el("th", c));
      table.tHead.replaceChildren(head);
      table.tBodies[0].replaceChildren(...res.rows.map(row => {
        const tr = el("tr");
        for (const v of row) tr.append(el("td", typeof v === "object" && v !== null ? JSON.stringify(v) : String(v), typeof v === "number" ? "num" : ""));
        return tr;
      }));
      table.dataset.rows = String(res.row_count);
      if (res.truncated) $("query-error").textContent = `showing the first ${res.row_count} rows`;
    } catch (e) {
      $("query-error").textContent = e instanceof CapsyncApi.ApiError ? `${e.status} ${e.message}` : String(e.message || e);
    }
  }

  // -- wiring ------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      $("login-error").textContent = "";
      const part = $("login-part").value.trim(), secret = $("login-secret").value;
      try {
        await CapsyncApi.signIn(part, secret);
        $("login-secret").value = "";
        $("login-part").value = "";
        await refresh();
        await apply();
      } catch (e) {
        $("login-error").textContent = e.status === 401 ? "unknown part or wrong secret" : String(e.message || e);
      }
    });
    $("filter-form").addEventListener("submit", ev => { ev.preventDefault(); apply(); });
    $("clear-filters").addEventListener("click", () => {
      for (const id of ["f-type", "f-name", "f-method", "f-start", "f-end", "f-tags"]) $(id).value = "";
      $("f-kind").value = "all";
      apply();
    });
    $("own-scale").addEventListener("change", redrawChart);
    $("download-csv").addEventListener("click", downloadCsv);
    $("q-lang").addEventListener("change", () => { $("q-text").value = EXAMPLES[$("q-lang").value]; });
    $("q-text").value = EXAMPLES.sql;
    $("query-form").addEventListener("submit", runQuery);
    window.addEventListener("resize", () => { if (state.series.length) redrawChart(); });
    refresh().then(() => { if (state.summaries.size) apply(); });
  });
})();
