// capsync data browser: sign-in, the parts overview, filters, the readings table and chart, the gallery,
// and SQL/MQL queries. Everything comes from the cloud's query API (see docs/cloud.md).
"use strict";

(() => {
  const PAGE_ROWS = 500;        // readings per page of the table (newest first; "Older rows" loads the next)
  const MAX_BINARY = 200;       // binary items listed (the newest of the window)
  const MAX_COLUMNS = 16;
  const LIVE_EVERY_MS = 5000;   // refresh while the window includes now
  const $ = id => document.getElementById(id);
  const state = { summaries: new Map(), rows: [], cursors: new Map(), binary: [], series: [], hidden: new Set(),
                  win: null, pagedEnd: null, loading: false, truncated: false };

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
      for (const h of ["type", "name", "method", "data", "items", "files", "size", "first", "last", "tags"]) head.append(el("th", h));
      table.append(el("thead"), el("tbody"));
      table.tHead.append(head);
      for (const r of summary.resources) {
        const tr = el("tr", undefined, "clickable");
        tr.title = "show this resource";
        for (const v of [r.resource_type || "(file)", r.resource_name, r.method, r.data_kind, r.items, r.files,
                         bytes(r.bytes), r.first_ns == null ? "" : CapsyncTime.format(r.first_ns),
                         r.last_ns == null ? "" : CapsyncTime.format(r.last_ns), r.tags.join(", ")]) {
          tr.append(el("td", String(v), typeof v === "number" ? "num" : ""));
        }
        tr.addEventListener("click", () => {
          $("f-part").value = part;
          $("f-type").value = r.resource_type;
          $("f-name").value = r.resource_name;
          $("f-method").value = r.method;
          $("f-kind").value = r.data_kind;
          state.pagedEnd = null;
          apply();
        });
        table.tBodies[0].append(tr);
      }
      const wrap = el("div", undefined, "table-wrap");
      wrap.append(table);
      box.append(wrap);
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

  function params() {
    const p = new URLSearchParams();
    for (const [id, name] of [["f-type", "resource_type"], ["f-name", "resource_name"], ["f-method", "method"]]) {
      const v = $(id).value.trim();
      if (v) p.set(name, v);
    }
    for (const t of $("f-tags").value.split(",").map(s => s.trim()).filter(Boolean)) p.append("tag", t);
    return p;
  }

  /** The newest data time (ms) of the resources the filters select, from the parts' summaries. */
  function newestMs(parts, kind) {
    let newest = null;
    const want = { resource_type: $("f-type").value.trim(), resource_name: $("f-name").value.trim(), method: $("f-method").value.trim() };
    for (const part of parts) {
      for (const r of (state.summaries.get(part) || { resources: [] }).resources) {
        if (Object.entries(want).some(([k, v]) => v && r[k] !== v) || r.last_ns == null) continue;
        if (kind !== "all" && r.data_kind !== kind) continue;
        newest = Math.max(newest ?? -Infinity, r.last_ns / 1e6);
      }
    }
    return newest;
  }

  function windowParams(p, win) {
    const q = new URLSearchParams(p);
    q.set("start", new Date(win.startMs).toISOString());
    q.set("end", new Date(win.endMs).toISOString());
    return q;
  }

  /** Load the window: the chart from aggregates, the newest page of rows, the newest binary items. */
  async function apply(quiet) {
    if (state.loading) return;
    const parts = $("f-part").value ? [$("f-part").value] : [...state.summaries.keys()];
    const kind = $("f-kind").value;
    const win = CapsyncTime.windowOf(Number($("f-window").value) * 1000, newestMs(parts, kind), $("f-start").value,
                                     $("f-end").value, state.pagedEnd);
    const p = windowParams(params(), win);
    const began = performance.now();
    if (!quiet) status("Loading…");
    state.loading = true;
    $("apply-filters").disabled = true;
    try {
      const binary = [], answers = [];
      state.rows = [];
      state.cursors.clear();
      for (const part of parts) {
        if (kind !== "binary") {
          const agg = new URLSearchParams(p);
          agg.set("buckets", String(Math.max(50, Math.min(1000, Math.round(($("chart").clientWidth || 1000) / 2)))));
          answers.push({ part, answer: await CapsyncApi.getJson(part, "/v1/tabular/aggregate", agg) });
          await olderRows(part, p);
        }
        if (kind !== "tabular") {
          const q = new URLSearchParams(p);
          q.set("order", "desc");
          binary.push(...(await CapsyncApi.fetchAll(part, "/v1/binary", q, MAX_BINARY)).items);
        }
      }
      state.win = win;
      state.binary = binary.sort((a, b) => b.requested_ns - a.requested_ns);
      state.series = CapsyncChart.measure(CapsyncChart.seriesOfAggregates(answers));
      if (!quiet) {
        state.hidden = new Set(state.series.slice(CapsyncChart.MAX_SERIES).map(s => s.label));
        const spans = state.series.map(s => Math.max(Math.abs(s.min), Math.abs(s.max))).filter(v => v > 0);
        $("own-scale").checked = spans.length > 1 && Math.max(...spans) / Math.min(...spans) > 20;
      }
      state.truncated = answers.some(a => a.answer.truncated);
      $("live").checked = win.live && !$("f-end").value;
      $("tabular-section").hidden = kind === "binary";
      $("binary-section").hidden = kind === "tabular";
      renderRows();
      redrawChart();
      renderBinary();
      const ms = Math.round(performance.now() - began);
      $("window-text").textContent = `${CapsyncTime.format(win.startMs * 1e6)} → ${CapsyncTime.format(win.endMs * 1e6)}`;
      status(`Loaded the window: ${state.series.length} series from aggregates, the newest ${state.rows.length} readings ` +
             `and ${binary.length} binary items from ${parts.length} part(s) in ${ms} ms.`);
    } catch (e) {
      showError(e);
    } finally {
      state.loading = false;
      $("apply-filters").disabled = false;
    }
  }

  /** The next page (older) of a part's readings in the window, newest first. */
  async function olderRows(part, p) {
    const q = new URLSearchParams(p || windowParams(params(), state.win));
    q.set("order", "desc");
    q.set("limit", String(PAGE_ROWS));
    const cursor = state.cursors.get(part);
    if (cursor === null) return;
    if (cursor) q.set("cursor", cursor);
    const page = await CapsyncApi.getJson(part, "/v1/tabular", q);
    state.rows.push(...page.items);
    state.rows.sort((a, b) => b.requested_ns - a.requested_ns);
    state.cursors.set(part, page.next_cursor);
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

  function cells(r, cols, forCsv) {
    const flat = cols ? leaves(r.payload, "", {}) : null;
    const multi = state.summaries.size > 1;
    const when = forCsv ? [r.requested, CapsyncTime.format(r.requested_ns, "local")] : [CapsyncTime.format(r.requested_ns)];
    const params = Object.keys(r.params || {}).length ? JSON.stringify(r.params) : "";
    const head = [...when, ...(multi ? [r.part_id] : []), `${r.resource_type}/${r.resource_name}`, r.method, params];
    const body = cols ? cols.map(c => flat[c]) : [JSON.stringify(r.payload)];
    return [...head, ...body, r.tags.join(" ")];
  }

  function headers(cols, forCsv) {
    const when = forCsv ? ["requested (UTC)", "requested (local)"] : [`requested (${CapsyncTime.getZone() === "utc" ? "UTC" : "local"})`];
    return [...when, ...(state.summaries.size > 1 ? ["part"] : []), "resource", "method", "params", ...(cols || ["payload"]), "tags"];
  }

  function renderRows() {
    const rows = state.rows;
    const more = [...state.cursors.values()].some(Boolean);
    const count = $("row-count");
    count.textContent = `newest ${rows.length}${more ? "" : " (all)"} reading${rows.length === 1 ? "" : "s"} of the window`;
    count.dataset.count = String(rows.length);
    $("older-rows").hidden = !more;
    const cols = columnsOf(rows);
    const table = $("readings");
    const head = el("tr");
    for (const h of headers(cols)) head.append(el("th", h));
    table.tHead.replaceChildren(head);
    const frag = document.createDocumentFragment();
    for (const r of rows) {
      const tr = el("tr");
      for (const v of cells(r, cols)) {
        const isNum = typeof v === "number";
        const text = v === undefined ? "" : (typeof v === "object" && v !== null ? JSON.stringify(v) : String(isNum ? +v.toPrecision(8) : v));
        const td = el("td", text, isNum ? "num" : (cols ? "" : "json"));
        if (text.length > 60) td.title = text.slice(0, 2000);
        tr.append(td);
      }
      frag.append(tr);
    }
    table.tBodies[0].replaceChildren(frag);
    $("table-note").textContent = state.truncated ? "The chart's aggregate was cut (too many series × fields × buckets): narrow the filters." : "";
  }

  function redrawChart() {
    const win = state.win || { startMs: 0, endMs: 1 };
    CapsyncChart.draw($("chart"), state.series, state.hidden, $("own-scale").checked, win.startMs, win.endMs);
    const hidden = state.series.filter(s => state.hidden.has(s.label)).length;
    $("series-note").textContent = hidden ? `${hidden} of ${state.series.length} series hidden: click a name in the legend to show it.` : "";
    $("series-note").dataset.hidden = String(hidden);
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
    CapsyncCsv.download("readings.csv", headers(cols, true), state.rows.map(r => cells(r, cols, true)));
  }

  /** Move the window by `steps` of its own width (negative: back in time); live again once it reaches now. */
  function page(steps) {
    if (!state.win) return;
    const span = state.win.endMs - state.win.startMs;
    $("f-start").value = "";
    $("f-end").value = "";
    state.pagedEnd = steps === 0 ? null : state.win.endMs + steps * span;
    if (state.pagedEnd !== null && state.pagedEnd >= Date.now()) state.pagedEnd = null;
    apply();
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
    $("filter-form").addEventListener("submit", ev => { ev.preventDefault(); state.pagedEnd = null; apply(); });
    $("clear-filters").addEventListener("click", () => {
      for (const id of ["f-type", "f-name", "f-method", "f-start", "f-end", "f-tags"]) $(id).value = "";
      $("f-kind").value = "all";
      state.pagedEnd = null;
      apply();
    });
    $("win-earlier").addEventListener("click", () => page(-1));
    $("win-later").addEventListener("click", () => page(1));
    $("win-now").addEventListener("click", () => page(0));
    $("older-rows").addEventListener("click", async () => {
      try {
        for (const part of [...state.cursors.keys()]) await olderRows(part);
        renderRows();
      } catch (e) { showError(e); }
    });
    $("f-zone").addEventListener("change", () => {
      CapsyncTime.setZone($("f-zone").value);
      for (const l of document.querySelectorAll(".zone")) l.textContent = $("f-zone").value === "utc" ? "UTC" : "local";
      renderParts();
      if (state.win) { renderRows(); redrawChart(); apply(true); }
    });
    setInterval(() => { if ($("live").checked && !document.hidden && state.win) apply(true); }, LIVE_EVERY_MS);

    $("own-scale").addEventListener("change", redrawChart);
    $("download-csv").addEventListener("click", downloadCsv);
    CapsyncQuery.wire(() => $("f-part").value || [...state.summaries.keys()][0]);
    window.addEventListener("resize", () => { if (state.series.length) redrawChart(); });
    refresh().then(() => { if (state.summaries.size) apply(); });
  });
})();
