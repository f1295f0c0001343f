// capsync data browser: image thumbnails with their detections drawn, and downloads of any binary item.
"use strict";

const CapsyncGallery = (() => {
  const THUMB_WIDTH = 320;
  const MAX_THUMBS = 48;
  const EXT = { "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
                "pointcloud/pcd": ".pcd", "application/json": ".json", "text/plain": ".txt", "text/csv": ".csv" };

  function isImage(item) {
    return /^image\/(jpeg|png|gif|webp|bmp)$/.test(item.mime_type || "");
  }

  function fileName(item) {
    if (item.name) return item.name.split("/").pop();
    const base = [item.resource_name, item.method, item.id].filter(Boolean).join("_");
    return base + (EXT[item.mime_type] || ".bin");
  }

  /** Save the item's bytes as a file (fetched with the part's credentials). */
  async function download(item, onError) {
    try {
      const blob = await CapsyncApi.blob(item.part_id, item.url);
      // An opaque type: a blob: URL of an uploaded HTML file would run as the cloud's page if opened.
      const url = URL.createObjectURL(new Blob([blob], { type: "application/octet-stream" }));
      const a = document.createElement("a");
      a.href = url;
      a.download = fileName(item);
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    } catch (e) {
      onError(e);
    }
  }

  function detectionsOf(item) {
    const d = item.metadata && item.metadata.detections;
    return Array.isArray(d) ? d.filter(x => x && typeof x === "object") : [];
  }

  function drawBoxes(g, dets, scale) {
    g.lineWidth = 2;
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "top";
    for (const d of dets) {
      const x = (+d.x_min || 0) * scale, y = (+d.y_min || 0) * scale;
      const w = ((+d.x_max || 0) - (+d.x_min || 0)) * scale, h = ((+d.y_max || 0) - (+d.y_min || 0)) * scale;
      const label = `${d.class_name ?? "?"} ${typeof d.confidence === "number" ? d.confidence.toFixed(2) : ""}`.trim();
      g.strokeStyle = "#ffd60a";
      g.strokeRect(x, y, w, h);
      const tw = g.measureText(label).width + 6;
      g.fillStyle = "rgba(0,0,0,.65)";
      g.fillRect(x, Math.max(0, y - 16), tw, 16);
      g.fillStyle = "#ffd60a";
      g.fillText(label, x + 3, Math.max(0, y - 15));
    }
  }

  async function thumbnail(item, fig, onError) {
    const canvas = document.createElement("canvas");
    canvas.className = "thumb";
    canvas.width = THUMB_WIDTH;
    canvas.height = Math.round(THUMB_WIDTH * 0.75);
    fig.prepend(canvas);
    try {
      const blob = await CapsyncApi.blob(item.part_id, item.url);
      const url = URL.createObjectURL(blob);
      const img = new Image();
      await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = () => reject(new Error("not a decodable image")); img.src = url; });
      const scale = THUMB_WIDTH / (img.naturalWidth || THUMB_WIDTH);
      canvas.height = Math.max(1, Math.round((img.naturalHeight || 1) * scale));
      const g = canvas.getContext("2d");
      g.drawImage(img, 0, 0, canvas.width, canvas.height);
      URL.revokeObjectURL(url);
      const dets = detectionsOf(item);
      drawBoxes(g, dets, scale);
      canvas.dataset.loaded = "1";
      canvas.dataset.detections = String(dets.length);
    } catch (e) {
      canvas.dataset.loaded = "error";
      onError(e);
    }
  }

  function caption(item, onError) {
    const cap = document.createElement("figcaption");
    const title = document.createElement("span");
    title.textContent = `${item.resource_type}/${item.resource_name} · ${item.method}`;
    const when = document.createElement("span");
    when.textContent = item.requested;
    cap.append(title, when);
    for (const d of detectionsOf(item)) {
      const line = document.createElement("span");
      line.className = "det";
      const conf = typeof d.confidence === "number" ? ` ${(d.confidence * 100).toFixed(0)}%` : "";
      line.textContent = `▣ ${d.class_name ?? "?"}${conf} [${d.x_min},${d.y_min}–${d.x_max},${d.y_max}]`;
      cap.append(line);
    }
    const cls = item.metadata && Array.isArray(item.metadata.classifications) ? item.metadata.classifications : [];
    if (cls.length) {
      const line = document.createElement("span");
      line.textContent = "classes: " + cls.slice(0, 3).map(c => `${c.class_name} ${(+c.confidence * 100).toFixed(0)}%`).join(", ");
      cap.append(line);
    }
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "secondary download";
    btn.textContent = "Download";
    btn.addEventListener("click", () => download(item, onError));
    cap.append(btn);
    return cap;
  }

  /** Show `items` (binary query items): images as thumbnails, the rest as a list; returns #thumbnails. */
  function render(galleryEl, filesEl, items, onError) {
    galleryEl.replaceChildren();
    filesEl.replaceChildren();
    let thumbs = 0;
    for (const item of items) {
      if (isImage(item) && thumbs < MAX_THUMBS) {
        thumbs += 1;
        const fig = document.createElement("figure");
        fig.dataset.id = item.id;
        fig.append(caption(item, onError));
        galleryEl.append(fig);
        thumbnail(item, fig, onError);
      } else {
        const li = document.createElement("li");
        const what = item.name || `${item.resource_type}/${item.resource_name} ${item.method} ${item.requested}`;
        li.textContent = `${what} — ${item.mime_type}, ${item.size} bytes`;
        const btn = document.createElement("button");
        btn.type = "button";
        btn.className = "secondary download";
        btn.textContent = "Download";
        btn.addEventListener("click", () => download(item, onError));
        li.append(btn);
        filesEl.append(li);
      }
    }
    return thumbs;
  }

  return { render, download, fileName };
})();
