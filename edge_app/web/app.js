// The live page: a clean MJPEG picture with the predictions drawn over it here, from the
// same result data as the panel (one source of truth, legible at any size); the chart of
// inference FPS and top score; the events' timeline and gallery.
// Data: Server-Sent Events from /api/events (a result per new result, stats each second);
// ?poll=1 polls /api/latest and /api/stats instead. Stored events from /api/history,
// the chart's first minutes from /api/series. No external libraries: the Pi may be
// offline. URLs are relative so the page also works behind a path prefix.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const withToken = (url) =>
  token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
const $ = (id) => document.getElementById(id);
const shortLabel = (label) => label.split(",")[0].trim();
const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : "-");
const MIN_SHOWN = 0.01; // scores under 1 % are noise to a person
const CHART_SECONDS = 600;

// The human view: never the "background" class (index 0 of 1001-class models), nothing
// under 1 %.
function shown(top) {
  return (top || []).filter((p) => p.index !== 0 && p.label !== "background" && p.score >= MIN_SHOWN);
}

let latestResult = null;
let latestStats = null;
const inferenceFps = () =>
  latestStats && typeof latestStats.inference_fps === "number"
    ? latestStats.inference_fps
    : latestResult && latestResult.fps;

// -- the newest result -----------------------------------------------------------------
function showResult(result) {
  latestResult = result;
  const top = shown(result.top);
  if (top.length) {
    $("top-label").textContent = shortLabel(top[0].label);
    $("top-label").title = top[0].label;
    $("top-score").textContent = `${(top[0].score * 100).toFixed(1)} %  ·  frame ${result.frame}`;
  } else {
    $("top-label").textContent = "uncertain";
    $("top-label").title = "no class above 1 %";
    $("top-score").textContent = `frame ${result.frame}`;
  }
  $("predictions").replaceChildren(...top.map(predictionItem));
  // One inference rate everywhere on the page (the stats' when there are any).
  $("fps").textContent = `${fixed(inferenceFps(), 1)} FPS`;
  $("invoke-ms").textContent = `${fixed(result.inference_ms, 1)} ms`;
  showTrigger(result.trigger);
  drawOverlay();
}

function predictionItem(p) {
  const item = document.createElement("li");
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = shortLabel(p.label);
  label.title = p.label;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `${(p.score * 100).toFixed(0)} %`;
  const track = document.createElement("span");
  track.className = "track";
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.display = "block";
  bar.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
  track.append(bar);
  item.append(label, score, track);
  return item;
}

function showTrigger(trigger) {
  const chip = $("chip-gate");
  const gate = latestStats && latestStats.gate;
  if (!gate || gate.mode === "off") {
    chip.textContent = "gate off";
    chip.className = "chip";
    return;
  }
  const share = typeof gate.gated_share === "number" ? ` · ${(gate.gated_share * 100).toFixed(0)} % skipped` : "";
  chip.textContent = `${trigger || "waiting"}${share}`;
  chip.className = `chip ${trigger === "motion" ? "on" : ""}`;
}

// -- the overlay, drawn over the clean picture ------------------------------------------
function drawOverlay() {
  const canvas = $("overlay");
  const img = $("live");
  const width = img.clientWidth || 640;
  const height = img.clientHeight || 480;
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (!latestResult) return;
  const top = shown(latestResult.top).slice(0, 3);
  // Sized from the picture, within limits a phone and a wall screen can both read.
  const big = Math.max(15, Math.min(34, width / 22));
  const small = Math.round(big * 0.68);
  const pad = Math.round(big * 0.4);
  const lines = top.length
    ? top.map((p, i) => ({ text: `${shortLabel(p.label)}  ${(p.score * 100).toFixed(0)} %`, size: i ? small : big, score: p.score }))
    : [{ text: "uncertain", size: big, score: 0 }];
  const fps = `${fixed(inferenceFps(), 1)} FPS`;
  ctx.textBaseline = "top";
  let boxWidth = 0;
  for (const line of lines) {
    ctx.font = `${line === lines[0] ? "bold " : ""}${line.size}px system-ui, "DejaVu Sans", sans-serif`;
    boxWidth = Math.max(boxWidth, ctx.measureText(line.text).width);
  }
  const boxHeight = lines.reduce((sum, l) => sum + l.size * 1.25, 0);
  ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
  ctx.fillRect(pad / 2, pad / 2, boxWidth + pad * 2, boxHeight + pad);
  let y = pad;
  for (const [i, line] of lines.entries()) {
    ctx.font = `${i === 0 ? "bold " : ""}${line.size}px system-ui, "DejaVu Sans", sans-serif`;
    ctx.fillStyle = i === 0 ? "#50ff50" : "#e8ecf1";
    ctx.fillText(line.text, pad * 1.5, y);
    y += line.size * 1.25;
  }
  ctx.font = `${small}px system-ui, "DejaVu Sans", sans-serif`;
  const fpsWidth = ctx.measureText(fps).width;
  ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
  ctx.fillRect(width - fpsWidth - pad * 2.5, pad / 2, fpsWidth + pad * 2, small * 1.25 + pad / 2);
  ctx.fillStyle = "#e8ecf1";
  ctx.fillText(fps, width - fpsWidth - pad * 1.5, pad * 0.75);
}

// -- stats ------------------------------------------------------------------------------
function showState(state) {
  const badge = $("state");
  badge.textContent = state;
  badge.className = `badge ${state}`;
  const notes = {
    retrying: "The camera is unavailable; retrying. The picture resumes when it returns.",
    stalled: "No frames are arriving.",
    ended: "The video has ended; showing the last frame.",
  };
  $("picture-note").textContent = notes[state] || "";
}

function showStats(stats) {
  latestStats = stats;
  const state = stats.state || stats.source_state || "unknown";
  showState(state);
  $("device").textContent = stats.device_id ? `· ${stats.device_id}` : "";
  $("fps").textContent = `${fixed(stats.inference_fps, 1)} FPS`;
  $("camera-fps").textContent = `${fixed(stats.camera_fps, 1)} FPS`;
  $("invoke-ms").textContent = `${fixed(stats.invoke_ms, 1)} ms`;
  $("latency").textContent = `${fixed(stats.latency_ms_p50, 0)} / ${fixed(stats.latency_ms_p95, 0)} ms`;
  $("frames").textContent = `${stats.frames ?? "-"} / ${stats.dropped ?? "-"}`;
  $("source").textContent = stats.source || "-";
  $("model").textContent = stats.model || "-";
  $("runtime").textContent = `${stats.runtime || "-"}, ${stats.threads ?? "?"} threads`;
  const mqtt = stats.mqtt
    ? (stats.mqtt.connected ? `connected · ${stats.mqtt.published} sent` : "reconnecting")
    : "off";
  $("mqtt").textContent = mqtt;
  $("chip-mqtt").textContent = `MQTT ${stats.mqtt ? (stats.mqtt.connected ? "on" : "down") : "off"}`;
  $("chip-mqtt").className = `chip ${stats.mqtt ? (stats.mqtt.connected ? "on" : "bad") : ""}`;
  $("chip-camera").textContent = `camera ${stats.source_state || "-"}`;
  $("chip-camera").className = `chip ${stats.source_state === "running" ? "on" : "bad"}`;
  $("viewers").textContent = stats.web ? String(stats.web.viewers) : "-";
  $("uptime").textContent = `${Math.round(stats.uptime_s || 0)} s`;
  const gate = stats.gate || { mode: "off" };
  $("gate").textContent = gate.mode === "off"
    ? "off (every frame)"
    : `${(100 * (gate.gated_share || 0)).toFixed(0)} % skipped · ${gate.motion} motion · ${gate.refresh} refresh`;
  showTrigger(latestResult && latestResult.trigger);
  showEventStatus(stats.events);
  addSample({ t: Date.now() / 1000, fps: stats.inference_fps, score: stats.score });
  drawTimeline();
  drawOverlay();
}

let knownMark = "";
let historyAt = 0;
function showEventStatus(events) {
  const chip = $("chip-events");
  if (!events) {
    chip.textContent = "events off";
    chip.className = "chip";
    $("events-status").textContent = "off";
    return;
  }
  const active = events.active || [];
  chip.textContent = active.length ? `● ${active.map(shortLabel).join(", ")}` : "no event";
  chip.className = `chip ${active.length ? "rec" : ""}`;
  $("events-status").textContent = `${active.length} active · ${events.stored} stored · ${events.codec}`;
  // New history only when an event started or ended (and, while one records, every
  // few seconds for its better snapshot).
  const mark = `${events.started}/${events.ended}`;
  const now = Date.now();
  if (mark !== knownMark || (active.length && now - historyAt > 5000)) {
    if (knownMark !== "") loadHistory();
    knownMark = mark;
    historyAt = now;
  }
}

// -- the chart --------------------------------------------------------------------------
const samples = [];
function addSample(sample) {
  if (samples.length && sample.t - samples[samples.length - 1].t < 0.5) return;
  samples.push(sample);
  const oldest = Date.now() / 1000 - CHART_SECONDS;
  while (samples.length && samples[0].t < oldest) samples.shift();
  drawChart();
}

// A canvas sized to its box at the screen's pixel ratio (sharp on a phone), cleared;
// drawing then uses CSS pixels.
function clearCanvas(canvas, fallbackHeight) {
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || fallbackHeight;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function drawChart() {
  const { ctx, width, height } = clearCanvas($("chart"), 180);
  const left = 34, right = 34, topPad = 8, bottom = 20;
  const plotW = width - left - right, plotH = height - topPad - bottom;
  const now = Date.now() / 1000;
  const span = samples.length ? Math.min(CHART_SECONDS, Math.max(60, now - samples[0].t)) : 60;
  const maxFps = Math.max(5, ...samples.map((s) => s.fps || 0)) * 1.15;
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#2c333d";
  ctx.fillStyle = "#8b97a6";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = topPad + (plotH * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(left + plotW, y);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(((maxFps * (4 - i)) / 4).toFixed(0), left - 4, y + 4);
    ctx.textAlign = "left";
    ctx.fillText(`${(100 * (4 - i)) / 4}%`, left + plotW + 4, y + 4);
  }
  ctx.textAlign = "center";
  const minutes = span / 60;
  for (let m = 0; m <= minutes + 1e-6; m += minutes > 4 ? 2 : 1) {
    const x = left + plotW - (m * 60 * plotW) / span;
    ctx.fillText(m ? `-${m} min` : "now", x, height - 5);
  }
  const line = (key, scale, colour) => {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    for (const s of samples) {
      const value = s[key];
      if (typeof value !== "number") { started = false; continue; }
      const x = left + plotW - ((now - s.t) * plotW) / span;
      const y = topPad + plotH - Math.min(1, value / scale) * plotH;
      if (x < left) continue;
      if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      started = true;
    }
    ctx.stroke();
  };
  line("fps", maxFps, "#4fa3ff");
  line("score", 1, "#ffb43c");
}

// -- events: timeline, gallery, viewer ------------------------------------------------------
let events = [];
let nextCursor = null;

function timeText(unix) {
  const d = new Date(unix * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

async function loadHistory(more = false) {
  const query = `api/history?limit=24${more && nextCursor ? `&before=${nextCursor}` : ""}`;
  try {
    const page = await fetchJson(query);
    events = more ? events.concat(page.events) : page.events;
    nextCursor = page.next;
    showGallery();
  } catch (err) {
    /* the service restarted: the next stats tick tries again */
  }
}

let gallerySignature = "";
function showGallery() {
  const gallery = $("gallery");
  // Rebuilt only when something changed: a card is never swapped under a click.
  const signature = events.map((e) => `${e.id}:${e.state}:${e.top_score}:${e.clip}`).join("|");
  if (signature === gallerySignature && gallery.childElementCount) return;
  gallerySignature = signature;
  $("more").hidden = !nextCursor;
  $("events-count").textContent = events.length ? `${events.length}${nextCursor ? "+" : ""} shown` : "";
  if (!events.length) {
    const empty = document.createElement("p");
    empty.className = "muted empty";
    empty.textContent = "No events yet.";
    gallery.replaceChildren(empty);
  } else {
    gallery.replaceChildren(...events.map(eventCard));
  }
  drawTimeline();
}

function eventCard(event) {
  const card = document.createElement("button");
  card.className = `event-card ${event.state}`;
  card.dataset.id = event.id;
  card.title = `${event.label} · open the snapshot and play the clip`;
  const thumb = document.createElement("img");
  thumb.className = "thumb";
  thumb.loading = "lazy";
  thumb.alt = shortLabel(event.label);
  // The score in the URL: a better snapshot of a recording event is a new picture.
  if (event.snapshot) thumb.src = withToken(`${event.snapshot}?v=${event.top_score}`);
  const label = document.createElement("span");
  label.className = "event-label";
  label.textContent = shortLabel(event.label);
  const meta = document.createElement("span");
  meta.className = "event-meta";
  const duration = event.duration_s ? ` · ${event.duration_s.toFixed(1)} s` : "";
  meta.textContent = `${(event.top_score * 100).toFixed(0)} % · ${timeText(event.start)}${duration}`;
  if (event.state === "active") {
    const live = document.createElement("span");
    live.className = "event-live";
    live.textContent = "recording";
    card.append(live);
  }
  card.append(thumb, label, meta);
  card.addEventListener("click", () => openEvent(event));
  return card;
}

function drawTimeline() {
  const { ctx, width, height } = clearCanvas($("timeline"), 36);
  ctx.fillStyle = "#232a33";
  ctx.fillRect(0, 8, width, height - 22);
  if (!events.length) return;
  const now = Date.now() / 1000;
  const first = Math.min(...events.map((e) => e.start));
  const span = Math.max(600, now - first) * 1.02;
  const hue = (name) => [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);
  for (const e of events) {
    const x0 = width - ((now - e.start) * width) / span;
    const end = e.end ?? now;
    const x1 = width - ((now - end) * width) / span;
    ctx.fillStyle = `hsl(${hue(e.name)}, 70%, 60%)`;
    ctx.fillRect(x0, 8, Math.max(3, x1 - x0), height - 22);
  }
  ctx.fillStyle = "#8b97a6";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(timeText(now - span), 2, height - 2);
  ctx.textAlign = "right";
  ctx.fillText("now", width - 2, height - 2);
}

function openEvent(event) {
  const dialog = $("viewer");
  dialog.dataset.event = event.id;
  $("viewer-title").textContent =
    `${shortLabel(event.label)} · ${(event.top_score * 100).toFixed(0)} % · ${timeText(event.start)}`;
  $("viewer-snapshot").src = event.snapshot ? withToken(event.snapshot) : "";
  const video = $("viewer-video");
  const stream = $("viewer-stream");
  video.pause();
  video.removeAttribute("src");
  stream.removeAttribute("src");
  video.hidden = stream.hidden = true;
  const note = $("viewer-clip-note");
  if (!event.clip) {
    note.textContent = event.state === "active" ? "clip: still recording" : "no clip";
  } else if (event.clip_type && video.canPlayType(event.clip_type)) {
    video.hidden = false;
    video.src = withToken(event.clip);
    video.play().catch(() => {}); // muted, so allowed without a gesture
    note.innerHTML = "";
    note.append("clip · ", downloadLink(event.clip));
  } else {
    // This browser cannot play the file (Motion JPEG in AVI): the service sends it
    // frame by frame instead.
    stream.hidden = false;
    stream.src = withToken(event.clip_stream);
    note.innerHTML = "";
    note.append("clip (as frames) · ", downloadLink(event.clip));
  }
  if (!dialog.open) dialog.showModal();
}

function downloadLink(path) {
  const link = document.createElement("a");
  link.href = withToken(path);
  link.textContent = "download";
  link.download = "";
  return link;
}

function closeViewer() {
  $("viewer-video").pause();
  $("viewer-stream").removeAttribute("src"); // ends the frame stream
  $("viewer").close();
}

// -- plumbing --------------------------------------------------------------------------
async function fetchJson(url) {
  const response = await fetch(withToken(url), { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// Each poll starts after the previous one finished: a slow link never piles requests up.
function poll(url, show, every) {
  const again = () => setTimeout(() => poll(url, show, every), every);
  fetchJson(url)
    .then((data) => { show(data); again(); })
    .catch(() => {
      if (url.endsWith("stats")) showState("offline");
      again();
    });
}

function startPicture() {
  const img = $("live");
  img.onerror = () => {
    // The service restarted or the stream broke: try again shortly.
    setTimeout(() => { img.src = withToken(`stream.mjpg?t=${Date.now()}`); }, 2000);
  };
  img.onload = drawOverlay;
  img.src = withToken("stream.mjpg");
}

function startEvents() {
  const source = new EventSource(withToken("api/events"));
  source.addEventListener("result", (e) => showResult(JSON.parse(e.data)));
  source.addEventListener("stats", (e) => showStats(JSON.parse(e.data)));
  source.onerror = () => showState("offline");
}

async function loadSeries() {
  try {
    const data = await fetchJson("api/series");
    for (const s of data.samples) addSample(s);
  } catch (err) {
    /* an older service: the chart fills from the live stats */
  }
}

for (const id of ["link-latest", "link-stats", "link-history", "link-metrics", "link-snapshot", "link-overlay"]) {
  const link = $(id);
  link.href = withToken(link.getAttribute("href"));
}
$("viewer-close").addEventListener("click", closeViewer);
$("viewer").addEventListener("close", () => { $("viewer-video").pause(); $("viewer-stream").removeAttribute("src"); });
$("more").addEventListener("click", () => loadHistory(true));
window.addEventListener("resize", () => { drawOverlay(); drawChart(); drawTimeline(); });
startPicture();
loadSeries();
loadHistory();
fetchJson("api/latest").then(showResult).catch(() => {});
if (params.get("poll") === "1") {
  poll("api/latest", showResult, 250);
  poll("api/stats", showStats, 1000);
} else {
  startEvents();
}
