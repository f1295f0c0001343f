// capsync data browser: the time window shown (newest data by default, live while it includes now,
// paged backwards and forwards) and times shown in UTC or the browser's local time.
"use strict";

const CapsyncTime = (() => {
  const MS = 1e6;  // ns per ms
  let zone = "utc";

  /** "utc" or "local": how times are shown and how the From/To fields are read. */
  function setZone(z) { zone = z === "local" ? "local" : "utc"; }
  function getZone() { return zone; }

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  /** A time (ns since the epoch, or an RFC 3339 text with ns) as text in the chosen zone, to the ms. */
  function format(ns, which) {
    const z = which || zone;
    const d = new Date(Number(ns) / MS);
    if (z === "utc") return d.toISOString().replace("T", " ").replace("Z", " UTC");
    const off = -d.getTimezoneOffset();
    const sign = off >= 0 ? "+" : "-";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:` +
      `${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)} ${sign}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  }

  /** A chart axis label for `ms` given the window's span. */
  function axisLabel(ms, spanMs) {
    const text = format(ms * MS);
    if (spanMs < 120e3) return text.slice(11, 23);
    if (spanMs < 2 * 86400e3) return text.slice(11, 19);
    return text.slice(0, 16);
  }

  /** The value of a datetime-local field as an RFC 3339 UTC text, read in the chosen zone; null when empty. */
  function fieldToIso(value) {
    if (!value) return null;
    const full = value.length === 16 ? value + ":00" : value;
    if (zone === "utc") return full + "Z";
    const d = new Date(full);  // a datetime-local text without zone is local time
    return Number.isNaN(d.getTime()) ? null : d.toISOString();
  }

  /** A time in ms as the text of a datetime-local field in the chosen zone. */
  function msToField(ms) {
    const d = new Date(ms);
    if (zone === "utc") return d.toISOString().slice(0, 19);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /**
   * The window to show, as {startMs, endMs, live}: the From/To fields when both are set; else the last
   * `spanMs` up to now when the newest data (`newestMs`) is that recent (live), else the `spanMs` up to
   * the newest data; `endMs` (paging) overrides the end.
   */
  function windowOf(spanMs, newestMs, fieldStart, fieldEnd, pagedEndMs) {
    const now = Date.now();
    const from = fieldToIso(fieldStart), to = fieldToIso(fieldEnd);
    if (from && to) {
      const s = Date.parse(from), e = Date.parse(to);
      return { startMs: s, endMs: e, live: e >= now };
    }
    let end;
    if (pagedEndMs != null) end = pagedEndMs;
    else if (newestMs == null || newestMs >= now - spanMs) end = now;
    else end = newestMs + 1;
    end = Math.min(end, now + 1000);
    return { startMs: end - spanMs, endMs: end, live: end >= now - 1000 };
  }

  return { setZone, getZone, format, axisLabel, fieldToIso, msToField, windowOf, MS };
})();
