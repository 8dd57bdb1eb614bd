// citrus-deploy operator console: live fleet rows and deployment output by server-sent events,
// and ages that keep counting. Hand-written; the pages work without it (reload to refresh).
"use strict";

function age(iso) {
  const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (seconds >= size) return `${Math.floor(seconds / size)} ${unit}`;
  }
  return `${seconds} s`;
}

function refreshAges(root) {
  for (const el of root.querySelectorAll("time[data-age]")) el.textContent = age(el.dateTime);
}

function say(id, text) {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
}

function liveFleet(tbody) {
  const source = new EventSource(tbody.dataset.stream);
  source.addEventListener("open", () => say("live", "Live: updates as servers change"));
  source.addEventListener("error", () =>
    say("live", source.readyState === EventSource.CLOSED ? "Live updates stopped: reload the page" : "Reconnecting…"));
  source.addEventListener("fleet", (event) => {
    // The rows come rendered (and escaped) by the server; keep the keyboard focus on the same
    // server's link across the swap.
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focus : undefined;
    tbody.innerHTML = event.data;
    refreshAges(tbody);
    if (focused !== undefined) {
      for (const link of tbody.querySelectorAll("a[data-focus]")) {
        if (link.dataset.focus === focused) { link.focus(); break; }
      }
    }
  });
}

function liveOutput(pre) {
  const source = new EventSource(pre.dataset.stream);
  const atBottom = () => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  const put = (text, replace) => {
    const follow = atBottom();
    if (replace) pre.textContent = text; else pre.append(document.createTextNode(text));
    if (follow) pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("output", (event) => put(JSON.parse(event.data).text, false));
  source.addEventListener("reset", (event) => put(JSON.parse(event.data).text, true));
  source.addEventListener("done", (event) => {
    source.close();
    const state = JSON.parse(event.data).state;
    const badge = document.getElementById("deployment-state");
    if (badge) { badge.textContent = state; badge.className = `badge s-${state}`; }
    say("output-status", `Deployment ${state}. Reload the page for the server's new rows.`);
  });
  source.addEventListener("gone", () => { source.close(); say("output-status", "The deployment is gone."); });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) say("output-status", "Output stopped: reload the page.");
  });
  pre.scrollTop = pre.scrollHeight;
}

document.addEventListener("DOMContentLoaded", () => {
  const tbody = document.getElementById("fleet-rows");
  if (tbody && window.EventSource) liveFleet(tbody);
  const pre = document.getElementById("output");
  if (pre && pre.dataset.stream && window.EventSource) liveOutput(pre);
  refreshAges(document);
  setInterval(() => refreshAges(document), 10000);
});
