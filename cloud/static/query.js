// capsync data browser: read-only SQL and MQL queries of a part's readings, and the CSV of their result.
"use strict";

const CapsyncQuery = (() => {
  const $ = id => document.getElementById(id);
  const EXAMPLES = {
    sql: "SELECT resource_name, method, count(*) AS n, min(requested) AS first, max(requested) AS last\nFROM readings GROUP BY resource_name, method",
    mql: '[{"$group": {"_id": "$resource_name", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]',
  };
  let last = null;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  const show = v => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));

  async function run(part) {
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
        for (const v of row) {
          const td = el("td", show(v), typeof v === "number" ? "num" : "");
          if (td.textContent.length > 60) td.title = td.textContent.slice(0, 2000);
          tr.append(td);
        }
        return tr;
      }));
      table.dataset.rows = String(res.row_count);
      last = res;
      $("query-csv").hidden = false;
      if (res.truncated) $("query-error").textContent = `showing the first ${res.row_count} rows (${res.truncated_reason || "cut"})`;
    } catch (e) {
      $("query-error").textContent = e instanceof CapsyncApi.ApiError ? `${e.status} ${e.message}` : String(e.message || e);
    }
  }

  /** Wire the query form; `partOf()` names the part to query (the filter's, or the first signed in). */
  function wire(partOf) {
    $("q-lang").addEventListener("change", () => { $("q-text").value = EXAMPLES[$("q-lang").value]; });
    $("q-text").value = EXAMPLES.sql;
    $("query-form").addEventListener("submit", ev => { ev.preventDefault(); run(partOf()); });
    $("query-csv").addEventListener("click", () => {
      if (last) CapsyncCsv.download("query.csv", last.columns, last.rows.map(r => r.map(v => (typeof v === "object" && v !== null ? JSON.stringify(v) : v))));
    });
  }

  return { wire };
})();
