// capsync data browser: signing in as parts and calling the cloud's query API.
//
// Credentials (part id + secret) are kept in this tab's sessionStorage only and sent with every
// request as HTTP Basic auth. The X-Capsync-Browser header asks the cloud to answer a wrong secret
// without a WWW-Authenticate challenge, so the browser never pops up its own password prompt.
"use strict";

const CapsyncApi = (() => {
  const KEY = "capsync.parts";

  /** The parts signed in, as [{part, secret}]. */
  function parts() {
    try {
      const list = JSON.parse(sessionStorage.getItem(KEY) || "[]");
      return Array.isArray(list) ? list.filter(p => p && typeof p.part === "string" && typeof p.secret === "string") : [];
    } catch (e) {
      return [];
    }
  }

  function save(list) {
    sessionStorage.setItem(KEY, JSON.stringify(list));
  }

  function authHeader(secretOf) {
    const bytes = new TextEncoder().encode(`${secretOf.part}:${secretOf.secret}`);
    let bin = "";
    bytes.forEach(b => { bin += String.fromCharCode(b); });
    return "Basic " + btoa(bin);
  }

  /** An error answer of the cloud: status code, short error and detail. */
  class ApiError extends Error {
    constructor(status, error, detail) {
      super(detail ? `${error}: ${detail}` : error);
      this.status = status;
      this.error = error;
      this.detail = detail;
    }
  }

  function credentials(part) {
    const found = parts().find(p => p.part === part);
    if (!found) throw new ApiError(401, "not signed in", `sign in as ${part} first`);
    return found;
  }

  /** fetch() a cloud path as `part`; resolves to the Response, or rejects with ApiError. */
  async function request(part, path, options = {}) {
    const creds = options.creds || credentials(part);
    const headers = Object.assign({}, options.headers || {}, {
      "Authorization": authHeader(creds),
      "X-Capsync-Browser": "1",
    });
    const resp = await fetch(path, { method: options.method || "GET", headers, body: options.body, cache: "no-store" });
    if (!resp.ok) {
      let body = {};
      try { body = await resp.json(); } catch (e) { /* not JSON */ }
      throw new ApiError(resp.status, body.error || `HTTP ${resp.status}`, body.detail || "");
    }
    return resp;
  }

  /** GET a JSON document. */
  async function getJson(part, path, params) {
    const qs = params ? "?" + params.toString() : "";
    return (await request(part, path + qs)).json();
  }

  /** POST a JSON body, get JSON back. */
  async function postJson(part, path, body) {
    const resp = await request(part, path, {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    });
    return resp.json();
  }

  /** Every item of a paged query (/v1/tabular, /v1/binary), up to `cap` items; {items, more}. */
  async function fetchAll(part, path, params, cap) {
    const items = [];
    let cursor = null;
    if (cap <= 0) return { items, more: true };
    for (;;) {
      const q = new URLSearchParams(params);
      q.set("limit", String(Math.min(1000, Math.max(1, cap - items.length))));
      if (cursor) q.set("cursor", cursor);
      const page = await getJson(part, path, q);
      for (const it of page.items) items.push(it);
      cursor = page.next_cursor;
      if (!cursor) return { items, more: false };
      if (items.length >= cap) return { items, more: true };
    }
  }

  /** Check a part's secret against the cloud and remember it; resolves to its summary. */
  async function signIn(part, secret) {
    const summary = await (await request(part, "/v1/summary", { creds: { part, secret } })).json();
    const list = parts().filter(p => p.part !== part);
    list.push({ part, secret });
    save(list);
    return summary;
  }

  function signOut(part) {
    save(parts().filter(p => p.part !== part));
  }

  /** Fetch one binary item's bytes as a Blob. */
  async function blob(part, url) {
    return (await request(part, url)).blob();
  }

  return { parts, signIn, signOut, getJson, postJson, fetchAll, blob, ApiError };
})();
