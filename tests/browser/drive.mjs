// Drives the capsync data browser in Debian's headless Chromium (playwright-core, no browser download).
//
// Usage: node drive.mjs CONFIG_JSON_FILE
// The config names the cloud URL, the part and secret, the filters to apply, and where to save
// screenshots. Prints one JSON line with what the page showed; exits non-zero on failure.
// Run by tests/test_cloud_browser.py, which checks the numbers.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const result = { console: [], errors: [] };

const browser = await chromium.launch({
  executablePath: cfg.executablePath || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
  page.setDefaultTimeout(cfg.timeoutMs || 15000);
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

  await page.fill("#login-secret", cfg.secret);
  await page.click("#login-button");
  await page.waitForSelector("#parts-section:not([hidden]) .parts-table tbody tr");
  result.partsRows = await page.locator(".parts-table tbody tr").count();
  result.partsText = await page.textContent("#parts");

  // Filter to one tabular resource.
  const f = cfg.filter;
  await page.selectOption("#f-part", cfg.part);
  await page.fill("#f-type", f.resource_type);
  await page.fill("#f-name", f.resource_name);
  await page.fill("#f-method", f.method);
  await page.selectOption("#f-kind", "tabular");
  await page.click("#apply-filters");
  await page.waitForFunction(() => /^Loaded /.test(document.getElementById("status").textContent));
  result.rowCount = Number(await page.getAttribute("#row-count", "data-count"));
  result.rowCountText = await page.textContent("#row-count");
  result.tableRows = await page.locator("#readings tbody tr").count();
  result.resourcesInTable = await page.$$eval("#readings tbody tr td:nth-child(2)", tds => [...new Set(tds.map(td => td.textContent))]);
  result.chart = await page.$eval("#chart", c => {
    const g = c.getContext("2d");
    const px = g.getImageData(0, 0, c.width, c.height).data;
    let colored = 0;
    for (let i = 0; i < px.length; i += 4) {
      const [r, gg, b] = [px[i], px[i + 1], px[i + 2]];
      if (Math.max(r, gg, b) - Math.min(r, gg, b) > 60) colored++;  // line colours, not the grey grid
    }
    return { series: Number(c.dataset.series), points: Number(c.dataset.points), coloredPixels: colored };
  });
  result.legend = await page.$$eval("#legend .item", items => items.map(i => i.textContent));
  await page.screenshot({ path: cfg.screenshots.tabular, fullPage: true });

  // Then the camera's images, with detections drawn.
  await page.fill("#f-type", "");
  await page.fill("#f-name", cfg.imageResource);
  await page.fill("#f-method", "");
  await page.selectOption("#f-kind", "binary");
  await page.click("#apply-filters");
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

  // A read-only SQL query from the page.
  await page.selectOption("#q-lang", "sql");
  await page.fill("#q-text", "SELECT count(*) AS n FROM readings");
  await page.click("#run-query");
  await page.waitForSelector("#query-result tbody tr");
  result.sqlCount = Number(await page.textContent("#query-result tbody tr td"));
  await page.screenshot({ path: cfg.screenshots.gallery, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
