// capsync data browser: CSV text that a spreadsheet opens as data, never as formulas.
"use strict";

const CapsyncCsv = (() => {
  // A text cell starting with one of these is a formula (or becomes one) in Excel, LibreOffice and Sheets.
  const FORMULA_START = /^[=+\-@\t\r]/;

  /** One CSV cell: JSON for objects, a leading ' on formula-like text, quoted when it needs to be. */
  function cell(v) {
    let s = v === undefined || v === null ? "" : (typeof v === "object" ? JSON.stringify(v) : String(v));
    if (typeof v !== "number" && FORMULA_START.test(s)) s = "'" + s;
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  /** CSV text of a header row and rows of cells. */
  function text(header, rows) {
    return [header, ...rows].map(r => r.map(cell).join(",")).join("\n") + "\n";
  }

  /** Save a CSV of `header` and `rows` as the file `name` (a download from the page itself). */
  function download(name, header, rows) {
    const url = URL.createObjectURL(new Blob([text(header, rows)], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  return { cell, text, download };
})();

if (typeof module !== "undefined") module.exports = CapsyncCsv;
