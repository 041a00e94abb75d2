// heatrec console: live values on the overview from the SSE stream, key figures refreshed every few seconds.
// No framework and no build step; the pages work without this script (values are then as loaded).
"use strict";

function fmt(v) {
  // The same rule as service/ui/views.py fmt().
  if (v === null || v === undefined || !isFinite(v)) return "\u2014";
  return Math.abs(v) >= 1000 ? v.toFixed(1) : v.toFixed(2);
}

function setText(id, text) {
  const el = document.getElementById(id);
  if (el && el.textContent !== text) el.textContent = text;
}

function pumpText(c) {
  const parts = c.running.map((hp) => hp + " running");
  const down = Object.entries(c.not_running).map(([hp, why]) => hp + " not running: " + why);
  const all = parts.join(", ") + (parts.length && down.length ? "; " : "") + down.join(", ");
  return all || "none";
}

function startLive(live) {
  const rows = new Map();
  document.querySelectorAll("tr[data-point]").forEach((tr) => rows.set(tr.dataset.point, tr));
  const state = document.getElementById("stream-state");
  const source = new EventSource(live.dataset.stream);
  source.addEventListener("open", () => { state.textContent = "Live values: connected"; });
  source.addEventListener("error", () => { state.textContent = "Live values: reconnecting\u2026"; });
  source.addEventListener("revoked", () => { source.close(); window.location.assign("/ui/login"); });
  source.addEventListener("sample", (ev) => {
    const s = JSON.parse(ev.data);
    const tr = rows.get(s.point);
    if (!tr) return;
    tr.querySelector(".value").textContent = fmt(s.value);
    const q = tr.querySelector(".q");
    const quality = s.quality.toLowerCase();
    q.className = "q q-" + quality;
    q.textContent = quality;
    tr.querySelector(".time").textContent = s.source_time.slice(11, 19);
  });
  source.addEventListener("alarm", () => refresh(live));
  window.addEventListener("pagehide", () => source.close());
  setInterval(() => refresh(live), 3000);
}

async function refresh(live) {
  const r = await fetch(live.dataset.status, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { window.location.assign("/ui/login"); return; }
  if (!r.ok) return;
  const k = await r.json();
  setText("k-alarms", String(k.alarms_active));
  setText("k-unacked", String(k.alarms_unacked));
  const c = k.control;
  if (!c) return;
  setText("k-supply", c.supply);
  setText("k-target", c.target);
  setText("k-source", c.target_source);
  setText("k-headroom", c.headroom);
  setText("k-mode", c.mode);
  setText("k-constraint", c.constraint);
  setText("k-pumps", pumpText(c));
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && window.EventSource) startLive(live);
});
