// The live page: the MJPEG picture, plus predictions and stats polled from /api/latest
// (4 times a second) and /api/stats (each second). Polling rather than the event stream
// (/api/events, used with ?events=1): a page that always has a request open never
// counts as loaded for tools such as headless Chromium's --virtual-time-budget.
// URLs are relative so the page also works behind a path prefix.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? `${url}?token=${encodeURIComponent(token)}` : url);
const $ = (id) => document.getElementById(id);
const shortLabel = (label) => label.split(",")[0].trim();
const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : "-");

function showResult(result) {
  const top = result.top || [];
  if (top.length) {
    $("top-label").textContent = shortLabel(top[0].label);
    $("top-label").title = top[0].label;
    $("top-score").textContent = `${(top[0].score * 100).toFixed(1)} %  ·  frame ${result.frame}`;
  } else {
    $("top-label").textContent = "nothing above the threshold";
    $("top-score").textContent = `frame ${result.frame}`;
  }
  const list = $("predictions");
  list.replaceChildren(
    ...top.map((p) => {
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
    })
  );
  $("fps").textContent = `${fixed(result.fps, 1)} FPS`;
  $("invoke-ms").textContent = `${fixed(result.inference_ms, 1)} ms`;
}

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
  showState(stats.state || stats.source_state || "unknown");
  $("device").textContent = stats.device_id ? `· ${stats.device_id}` : "";
  $("fps").textContent = `${fixed(stats.inference_fps, 1)} FPS`;
  $("camera-fps").textContent = `${fixed(stats.camera_fps, 1)} FPS`;
  $("invoke-ms").textContent = `${fixed(stats.invoke_ms, 1)} ms`;
  $("latency").textContent = `${fixed(stats.latency_ms_p50, 0)} / ${fixed(stats.latency_ms_p95, 0)} ms`;
  $("frames").textContent = `${stats.frames ?? "-"} / ${stats.dropped ?? "-"}`;
  $("source").textContent = stats.source || "-";
  $("model").textContent = stats.model || "-";
  $("runtime").textContent = `${stats.runtime || "-"}, ${stats.threads ?? "?"} threads`;
  $("mqtt").textContent = stats.mqtt
    ? (stats.mqtt.connected ? `connected · ${stats.mqtt.published} sent` : "reconnecting")
    : "off";
  $("viewers").textContent = stats.web ? String(stats.web.viewers) : "-";
  $("uptime").textContent = `${Math.round(stats.uptime_s || 0)} s`;
}

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
    setTimeout(() => { img.src = withToken("stream.mjpg") + (token ? "&" : "?") + "t=" + Date.now(); }, 2000);
  };
  img.src = withToken("stream.mjpg");
}

function startEvents() {
  const events = new EventSource(withToken("api/events"));
  events.addEventListener("result", (e) => showResult(JSON.parse(e.data)));
  events.addEventListener("stats", (e) => showStats(JSON.parse(e.data)));
  events.onerror = () => showState("offline");
}

for (const id of ["link-latest", "link-stats", "link-metrics", "link-snapshot"]) {
  const link = $(id);
  link.href = withToken(link.getAttribute("href"));
}
startPicture();
if (new URLSearchParams(location.search).get("events") === "1") {
  fetchJson("api/latest").then(showResult).catch(() => {});
  startEvents();
} else {
  poll("api/latest", showResult, 250);
  poll("api/stats", showStats, 1000);
}
