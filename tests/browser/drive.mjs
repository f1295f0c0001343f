// Drives the capsync data browser in Debian's headless Chromium (playwright-core, no browser download).
//
// Usage: node drive.mjs CONFIG_JSON_FILE
// The config names the cloud URL, the part and secret, where to save screenshots and downloads, and a
// file to create once the newest data is shown (the test then commits a reading the page must show by
// itself). Prints one JSON line with what the page showed; exits non-zero on failure.
// Run by tests/test_cloud_browser.py, which checks the numbers against the data it wrote.
import { readFileSync, writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const result = { console: [], errors: [], layout: {} };

const browser = await chromium.launch({
  executablePath: cfg.executablePath || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});

const loadedText = () => /^Loaded the window/.test(document.getElementById("status").textContent);

async function applyAndWait(page) {
  await page.evaluate(() => { document.getElementById("status").textContent = ""; });
  await page.click("#apply-filters");
  await page.waitForFunction(loadedText);
}

async function chartOf(page) {
  return page.$eval("#chart", c => {
    const g = c.getContext("2d");
    const px = g.getImageData(0, 0, c.width, c.height).data;
    let colored = 0;
    for (let i = 0; i < px.length; i += 4) {
      const [r, gg, b] = [px[i], px[i + 1], px[i + 2]];
      if (Math.max(r, gg, b) - Math.min(r, gg, b) > 60) colored++;  // line colours, not the grey grid
    }
    return { series: Number(c.dataset.series), points: Number(c.dataset.points), gaps: Number(c.dataset.gaps), coloredPixels: colored };
  });
}

try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true,
                                             timezoneId: cfg.timezone || "UTC" });
  const page = await context.newPage();
  page.setDefaultTimeout(cfg.timeoutMs || 20000);
  page.on("console", m => { if (m.type() === "error") result.console.push(m.text()); });
  page.on("pageerror", e => result.errors.push(String(e)));
  page.on("request", r => { if (!r.url().startsWith(cfg.url) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) result.errors.push(`external request: ${r.url()}`); });

  await page.goto(cfg.url + "/");
  // A wrong secret is refused by the page's own form, with no browser password prompt.
  await page.fill("#login-part", cfg.part);
  await page.fill("#login-secret", "not-the-secret");
  await page.click("#login-button");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.length > 0);
  result.wrongSecretMessage = await page.textContent("#login-error");

  // Signing in shows the newest data at once: the last hour, newest first, live.
  await page.fill("#login-secret", cfg.secret);
  await page.click("#login-button");
  await page.waitForSelector("#parts-section:not([hidden]) .parts-table tbody tr");
  result.partsRows = await page.locator(".parts-table tbody tr").count();
  result.partsText = await page.textContent("#parts");
  await page.waitForFunction(loadedText);
  result.newest = {
    firstCell: await page.textContent("#readings tbody tr:first-child td:first-child"),
    rows: await page.locator("#readings tbody tr").count(),
    live: await page.isChecked("#live"),
  };
  await page.screenshot({ path: cfg.screenshots.newest, fullPage: true });
  writeFileSync(cfg.loadedPath, "1");
  await page.waitForFunction(v => [...document.querySelectorAll("#readings tbody tr:first-child td")].some(td => td.textContent.includes(String(v))),
                             cfg.liveValue, { timeout: 30000 });
  result.liveSeen = true;

  // A day of board Analogs: the chart comes from the aggregates; A1 and A2 are two series.
  await page.selectOption("#f-window", "86400");
  await page.fill("#f-type", "board");
  await page.fill("#f-name", "b1");
  await page.fill("#f-method", "Analogs");
  await page.selectOption("#f-kind", "tabular");
  const [aggResponse] = await Promise.all([
    page.waitForResponse(r => r.url().includes("/v1/tabular/aggregate")),
    applyAndWait(page),
  ]);
  result.day = { aggregate: await aggResponse.json(), chart: await chartOf(page),
                 legend: await page.$$eval("#legend .item", items => items.map(i => i.textContent)) };
  await page.screenshot({ path: cfg.screenshots["day-1400"], fullPage: true });

  // Every resource: more series than are drawn at first, and the page says so.
  for (const id of ["#f-type", "#f-name", "#f-method"]) await page.fill(id, "");
  await applyAndWait(page);
  result.allSeries = { hidden: Number(await page.getAttribute("#series-note", "data-hidden")), note: await page.textContent("#series-note") };

  // The system sensor's wide JSON: nothing may push the page wider than the window.
  await page.fill("#f-name", "system");
  await page.selectOption("#f-window", "3600");
  for (const width of [1400, 1024]) {
    await page.setViewportSize({ width, height: 900 });
    await applyAndWait(page);
    result.layout[String(width)] = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
      applyRight: document.getElementById("apply-filters").getBoundingClientRect().right,
      jsonCells: document.querySelectorAll("#readings td.json").length,
    }));
    await page.screenshot({ path: cfg.screenshots[`wide-${width}`], fullPage: true });
  }
  await page.setViewportSize({ width: 1400, height: 1000 });

  // The loaded rows as CSV (UTC and local time), and local time in the table. A live refresh may
  // be reloading the table right now (a slow machine): download once rows are there again.
  await page.waitForFunction(() => document.querySelectorAll("#readings tbody tr td.json").length > 0);
  const [rowsCsv] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")]);
  await rowsCsv.saveAs(cfg.readingsCsvPath);
  await page.selectOption("#f-zone", "local");
  await page.waitForFunction(() => document.querySelector("#readings th").textContent.includes("local"));
  result.local = { firstCell: await page.textContent("#readings tbody tr:first-child td:first-child"),
                   zoneLabel: await page.textContent("label .zone") };
  await page.selectOption("#f-zone", "utc");

  // A read-only SQL query from the page, downloaded as CSV.
  await page.selectOption("#q-lang", "sql");
  await page.fill("#q-text", "SELECT resource_name, count(*) AS n FROM readings GROUP BY resource_name ORDER BY resource_name");
  await page.click("#run-query");
  await page.waitForSelector("#query-result tbody tr");
  const [queryCsv] = await Promise.all([page.waitForEvent("download"), page.click("#query-csv")]);
  await queryCsv.saveAs(cfg.queryCsvPath);

  // Then the vision service's images, with detections drawn.
  await page.fill("#f-name", cfg.imageResource);
  await page.selectOption("#f-kind", "binary");
  await applyAndWait(page);
  await page.waitForSelector('#gallery canvas.thumb[data-loaded="1"]');
  await page.waitForFunction(() => !document.querySelector('#gallery canvas.thumb:not([data-loaded])'));
  result.binaryCount = Number(await page.getAttribute("#binary-count", "data-count"));
  result.thumbnails = await page.$$eval('#gallery canvas.thumb[data-loaded="1"]', cs => cs.map(c => ({
    width: c.width, height: c.height, detections: Number(c.dataset.detections),
  })));
  result.detectionLines = await page.locator("#gallery figcaption .det").count();
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#gallery figure button.download")]);
  result.downloadName = download.suggestedFilename();
  await download.saveAs(cfg.downloadPath);
  await page.screenshot({ path: cfg.screenshots.gallery, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
