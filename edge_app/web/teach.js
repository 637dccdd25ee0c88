// The "Teach" panel: name a class, capture examples of it from the live picture (one
// shot or a burst), see the counts, then learn and switch the running model to the
// result. It talks to /api/teach (status), /api/teach/capture and /api/teach/train
// (POST). Self-contained: it adds its own section and styles to the page.
"use strict";

(() => {
  const token = new URLSearchParams(location.search).get("token");
  const url = (path, params = {}) => {
    const query = new URLSearchParams(params);
    if (token) query.set("token", token);
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  };
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  };

  const style = el("style", {
    textContent: `
.teach { flex: 1 1 100%; background: var(--card); border-radius: 6px; padding: 12px 16px; }
.teach h2 { font-size: 15px; margin: 0 0 8px; }
.teach .row { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
.teach input { background: #0c0f12; color: var(--text); border: 1px solid #39424e;
               border-radius: 4px; padding: 5px 8px; font: inherit; min-width: 12em; }
.teach button { background: #2b3440; color: var(--text); border: 1px solid #39424e;
                border-radius: 4px; padding: 5px 12px; font: inherit; cursor: pointer; }
.teach button:disabled { opacity: 0.5; cursor: default; }
.teach ul { list-style: none; padding: 0; margin: 10px 0 6px; display: flex; flex-wrap: wrap;
            gap: 6px; }
.teach li { background: #232a33; border-radius: 10px; padding: 2px 10px; cursor: pointer; }
.teach li.selected { outline: 1px solid var(--accent); }
.teach .status { color: var(--muted); font-size: 13px; margin: 4px 0 0; }`,
  });
  const name = el("input", { id: "teach-class", placeholder: "class name, e.g. my cat",
                             maxLength: 80 });
  const shot = el("button", { id: "teach-shot", type: "button" }, "Capture");
  const burst = el("button", { id: "teach-burst", type: "button" }, "Burst x10");
  const train = el("button", { id: "teach-train", type: "button" }, "Train and use");
  const counts = el("ul", { id: "teach-counts" });
  const status = el("p", { id: "teach-status", className: "status" }, "");
  const panel = el(
    "section",
    { id: "teach", className: "teach" },
    el("h2", {}, "Teach"),
    el("div", { className: "row" }, name, shot, burst, train),
    counts,
    status,
  );
  document.head.append(style);
  (document.querySelector("main") || document.body).append(panel);

  let training = false;
  function show(data) {
    const selected = name.value.trim();
    counts.replaceChildren(
      ...data.classes.map((c) => {
        const item = el("li", { textContent: `${c.name}: ${c.photos}` });
        item.dataset.name = c.name;
        if (c.name === selected) item.className = "selected";
        item.onclick = () => { name.value = c.name; show(data); };
        return item;
      }),
    );
    training = data.state === "training";
    train.disabled = training;
    const states = { idle: "", training: "Learning... the live picture goes on meanwhile.",
                     done: "", failed: "Failed: " };
    status.textContent = `${states[data.state] || ""}${data.message || ""}` +
      (data.model ? `  (model: ${data.model})` : "");
    status.dataset.state = data.state;
  }

  async function call(method, path, params) {
    // X-Edge-App: the server refuses actions without it (another site cannot send it).
    const headers = { "X-Edge-App": "1" };
    const response = await fetch(url(path, params), { method, cache: "no-store", headers });
    const data = await response.json();
    if (!response.ok && data.error) throw new Error(data.error);
    return data;
  }

  async function capture(count) {
    const cls = name.value.trim();
    if (!cls) { status.textContent = "Name the class first."; return; }
    shot.disabled = burst.disabled = true;
    try {
      show(await call("POST", "api/teach/capture", { class: cls, count, interval_s: 0.1 }));
    } catch (error) {
      status.textContent = error.message;
    } finally {
      shot.disabled = burst.disabled = false;
    }
  }
  shot.onclick = () => capture(1);
  burst.onclick = () => capture(10);
  train.onclick = async () => {
    try { show(await call("POST", "api/teach/train")); } catch (error) {
      status.textContent = error.message;
    }
  };

  // Status each second while learning, every 3 s otherwise; one request at a time.
  function poll() {
    call("GET", "api/teach")
      .then(show)
      .catch(() => {})
      .finally(() => setTimeout(poll, training ? 1000 : 3000));
  }
  poll();
})();
