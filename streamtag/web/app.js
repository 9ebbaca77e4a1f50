// streamtag web page: every stream at a glance, and the selected one's genres and recent history, over the
// websocket protocol (docs/protocol.md) plus two small JSON requests (/api/check, /api/history). No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const wsUrl = (() => {
  const u = new URL(params.get("ws") || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`);
  if (token) u.searchParams.set("token", token);
  return u;
})();
const httpBase = `${wsUrl.protocol === "wss:" ? "https" : "http"}://${wsUrl.host}`;
const MINUTES = Math.min(180, Math.max(1, Number(params.get("minutes")) || 10));  // the timeline's span
const MAX_HOPS = 4000;  // live hops kept per stream for the timeline

// one colour per common family, as in `streamtag tag --plot` (streamtag/plot.py); others get a stable one
const FAMILY_COLORS = {
  rock: "#d62728", metal: "#7f1d1d", electronic: "#1f77b4", pop: "#e377c2", dance: "#9467bd", chillout: "#17becf",
  experimental: "#8c564b", jazz: "#ff7f0e", blues: "#3b5ba5", folk: "#2ca02c", country: "#bcbd22",
  "hip-hop": "#4b4b4b", soul: "#b5651d", classical: "#6a3d9a", world: "#1b9e77", "new age": "#66c2a5",
  reggae: "#4daf4a", ambient: "#80b1d3",
};
const FALLBACK = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1", "#9c755f", "#af7aa1", "#86bc86", "#d37295"];
function familyColor(name) {
  const key = String(name || "").toLowerCase();
  if (FAMILY_COLORS[key]) return FAMILY_COLORS[key];
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return FALLBACK[h % FALLBACK.length];
}

const state = {
  ws: null, labels: [], hop: 1, model: "", streams: new Map(), current: params.get("stream") || "", updates: 0,
  dropped: 0, retryMs: 500, mic: null, recording: false, opened: false, refused: false, drawn: 0, familyOf: {},
};

function log(text) {
  const el = $("log");
  el.textContent = `${new Date().toLocaleTimeString()} ${text}\n` + el.textContent.slice(0, 2000);
}

function setStatus(s, text) {
  const el = $("status");
  el.dataset.state = s;
  el.textContent = text || s;
}

function notice(kind, text) {
  const el = $("notice");
  if (!kind) { delete el.dataset.kind; el.textContent = ""; return; }
  el.dataset.kind = kind;
  el.textContent = text;
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

async function api(path) {
  const u = new URL(path, httpBase);
  if (token) u.searchParams.set("token", token);
  const r = await fetch(u, { cache: "no-store" });
  let body = {};
  try { body = await r.json(); } catch (e) { body = { error: `HTTP ${r.status}` }; }
  return { status: r.status, body };
}

// -- what an update says ---------------------------------------------------------------------------
function headline(u) {  // [family, leading genre, confidence]: the smoother's family, else the top genre
  const [topLabel, topP] = (u.top && u.top[0]) || ["", 0];
  const family = u.family || topLabel;
  const conf = u.families && u.families[family] != null ? u.families[family] : topP;
  return [family, topLabel, conf];
}

function stream(name) {
  let s = state.streams.get(name);
  if (!s) {
    s = { name, source: "", title: null, latest: null, ended: null, hops: [], history: [] };
    state.streams.set(name, s);
  }
  return s;
}

// -- overview: one card per stream -------------------------------------------------------------------
function renderOverview() {
  const box = $("overview");
  box.textContent = "";
  if (!state.streams.size) {
    box.innerHTML = '<span class="empty">no streams yet</span>';
    return;
  }
  for (const s of state.streams.values()) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.stream = s.name;
    card.dataset.state = s.ended ? "ended" : "live";
    card.setAttribute("role", "button");
    card.setAttribute("aria-selected", String(s.name === state.current));
    card.innerHTML = '<div class="name"></div><div class="family"><span class="fam"></span><span class="conf"></span></div>' +
      '<div class="ctitle"></div><div class="meter"><div class="lvl"></div></div>';
    card.querySelector(".name").textContent = s.name;
    card.addEventListener("click", () => choose(s.name));
    box.appendChild(card);
    fillCard(card, s);
  }
}

function fillCard(card, s) {
  const u = s.latest;
  const fam = card.querySelector(".fam");
  if (u) {
    const [family, , conf] = headline(u);
    fam.textContent = family;
    card.dataset.family = family;
    card.style.borderLeftColor = familyColor(family);
    card.querySelector(".conf").textContent = `${Math.round(100 * conf)}%`;
    const level = u.level_db == null ? -90 : u.level_db;
    card.querySelector(".lvl").style.width = `${Math.max(0, Math.min(100, (level + 60) / 60 * 100)).toFixed(0)}%`;
    card.querySelector(".meter").title = u.level_db == null ? "level unknown" : `${u.level_db.toFixed(0)} dBFS`;
  } else {
    fam.textContent = "…";
  }
  const title = s.ended ? (s.ended === "ended" ? "ended" : `ended: ${s.ended}`) : (s.title || (u && u.title) || "");
  card.querySelector(".ctitle").textContent = title ? (s.ended ? title : `♪ ${title}`) : "";
  card.dataset.state = s.ended ? "ended" : "live";
}

function updateCard(s) {
  const card = [...$("overview").children].find((c) => c.dataset && c.dataset.stream === s.name);
  if (card) fillCard(card, s); else renderOverview();
}

// -- the selected stream: headline, graded bars ------------------------------------------------------
function showUpdate(u) {
  const [family, genre, conf] = headline(u);
  $("top").textContent = family;
  $("top").dataset.label = (u.top[0] || [""])[0];
  $("top").dataset.family = family;
  $("top").style.color = familyColor(family);
  $("genre").textContent = genre && genre !== family ? `· ${genre}` : "";
  $("confidence").textContent = `${Math.round(100 * conf)}% confidence`;
  $("title").textContent = u.title ? `♪ ${u.title}` : "";
  const bars = $("bars");
  const top = u.top || [];
  while (bars.children.length > top.length) bars.lastChild.remove();
  while (bars.children.length < top.length) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = '<span class="label"></span><div class="track"><div class="fill"></div></div><span class="value">0.00</span>';
    bars.appendChild(row);
  }
  top.forEach(([label, p], i) => {  // the server's ranking (serve --top K: K bars), each bar its smoothed value
    const row = bars.children[i];
    const value = u.probs && u.probs[label] != null ? u.probs[label] : p;
    row.dataset.label = label;
    row.dataset.p = value.toFixed(4);
    row.querySelector(".label").textContent = label;
    row.querySelector(".fill").style.width = `${(100 * value).toFixed(1)}%`;
    // each bar in its genre's family colour (the taxonomy from /api/check; without one a genre is its own family)
    const fam = state.familyOf[label] || (u.family ? (i === 0 ? family : "") : label);
    row.querySelector(".fill").style.background = fam ? familyColor(fam) : "";
    row.dataset.family = fam;
    row.querySelector(".value").textContent = value.toFixed(2);
  });
  state.updates += 1;
  $("updates").textContent = String(state.updates);
  $("updates").dataset.count = String(state.updates);
  $("t").textContent = u.t.toFixed(1);
  $("latency").textContent = u.latency_ms == null ? "–" : u.latency_ms.toFixed(0);
}

// -- timeline: the headline family over the last minutes ----------------------------------------------
function drawTimeline() {
  state.drawn = Date.now();
  const svg = $("timeline");
  const s = state.streams.get(state.current);
  const width = svg.clientWidth || 900;
  const height = svg.clientHeight || 64;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const now = Date.now() / 1000;
  const t0 = now - MINUTES * 60;
  const x = (ts) => ((ts - t0) / (now - t0)) * width;
  const runs = [];  // [start, end, family, source]: the log's segments, then the live hops merged into runs
  if (s) {
    for (const seg of s.history) if (seg.end_ts > t0) runs.push([seg.start_ts, seg.end_ts, seg.family, "log"]);
    const liveFrom = runs.length ? runs[runs.length - 1][1] : -Infinity;
    for (const [ts, family] of s.hops) {
      if (ts <= t0 || ts <= liveFrom) continue;
      const last = runs[runs.length - 1];
      if (last && last[3] === "live" && last[2] === family && ts - last[1] < 4 * state.hop) last[1] = ts;
      else runs.push([ts - state.hop, ts, family, "live"]);
    }
  }
  const parts = [];
  for (let m = 0; m <= MINUTES; m += MINUTES <= 15 ? 1 : 10) {
    const gx = x(now - m * 60);
    parts.push(`<line x1="${gx.toFixed(1)}" x2="${gx.toFixed(1)}" y1="0" y2="${height}" stroke="#2a2f36"/>`);
  }
  const seen = new Map();
  for (const [a, b, family, src] of runs) {
    const xa = Math.max(0, x(a)), xb = Math.min(width, x(b));
    if (xb <= xa) continue;
    seen.set(family, familyColor(family));
    parts.push(`<rect class="run" data-family="" data-source="${src}" x="${xa.toFixed(1)}" y="6" width="${Math.max(1, xb - xa).toFixed(1)}" height="${height - 22}" fill="${familyColor(family)}"></rect>`);
  }
  parts.push(`<text x="4" y="${height - 3}" fill="#8a9099" font-size="10">−${MINUTES} min</text>`);
  parts.push(`<text x="${width - 4}" y="${height - 3}" fill="#8a9099" font-size="10" text-anchor="end">now</text>`);
  svg.innerHTML = parts.join("");
  // family names go in through the DOM, never through markup
  let i = 0;
  const rects = svg.querySelectorAll("rect.run");
  for (const [a, b, family] of runs) {
    if (Math.min(width, x(b)) <= Math.max(0, x(a))) continue;
    const r = rects[i++];
    r.dataset.family = family;
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${family} ${new Date(a * 1000).toLocaleTimeString()}–${new Date(b * 1000).toLocaleTimeString()}`;
    r.appendChild(title);
  }
  svg.dataset.runs = String(rects.length);
  const legend = $("timeline-legend");
  legend.textContent = "";
  for (const [family, color] of seen) {
    const span = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = color;
    span.append(sw, family);
    legend.appendChild(span);
  }
}

async function loadHistory(name) {
  if (!state.recording || !name) return;
  try {
    const { status, body } = await api(`/api/history?stream=${encodeURIComponent(name)}&minutes=${MINUTES}`);
    if (status === 200 && body.segments) {
      stream(name).history = body.segments;
      const n = body.segments.length;
      $("history-note").textContent = `· from the station log (${n} segment${n === 1 ? "" : "s"} logged)`;
      drawTimeline();
    }
  } catch (e) {
    log(`history: ${e.message || e}`);
  }
}

// -- streams -------------------------------------------------------------------------------------------
function showStreams(list) {
  const names = list.map((s) => s.name);
  for (const info of list) {
    const s = stream(info.name);
    s.source = info.source;
    s.title = info.title;
    s.ended = null;
  }
  const sel = $("stream");
  sel.textContent = "";
  if (!list.length) sel.add(new Option("(no streams yet)", ""));
  for (const s of list) sel.add(new Option(s.title ? `${s.name} — ${s.title}` : s.name, s.name));
  const current = state.streams.get(state.current);
  if (current && current.ended && !names.includes(state.current)) sel.add(new Option(`${state.current} (ended)`, state.current));
  renderOverview();
  if (!names.includes(state.current) && !(state.streams.get(state.current) || {}).ended) choose(names[0] || "");
  else sel.value = state.current;
}

function choose(name) {
  state.current = name;
  $("stream").value = name;
  for (const card of $("overview").children) {
    if (card.dataset) card.setAttribute("aria-selected", String(card.dataset.stream === name));
  }
  const s = state.streams.get(name);
  if (s && s.latest) showUpdate(s.latest);
  if (s && s.ended) notice("ended", endedText(name, s.ended));
  else if ($("notice").dataset.kind === "ended") notice(null);
  drawTimeline();
  loadHistory(name);
}

function endedText(name, reason) {
  return reason && reason !== "ended" ? `stream ${name} ended: ${reason}` : `stream ${name} has ended (its input ended)`;
}

function streamEnded(name, reason) {
  const s = stream(name);
  s.ended = reason || "ended";
  updateCard(s);
  log(endedText(name, s.ended));
  if (name === state.current) notice("ended", endedText(name, s.ended));
}

// -- connection ------------------------------------------------------------------------------------------
async function explainRefusal() {
  // A browser is not told why a websocket handshake failed; the same checks over plain HTTP say it.
  try {
    const { status, body } = await api("/api/check");
    if (status === 401 || status === 403 || status === 429) {
      state.refused = status !== 429;
      setStatus("refused", `refused (${status})`);
      const why = String(body.error || `HTTP ${status}`);
      notice("auth", `${status === 403 ? "The server refused this page: " : ""}${why.charAt(0).toUpperCase()}${why.slice(1)}.`);
      return status;
    }
  } catch (e) {
    // the server is unreachable: the usual "disconnected" says it
  }
  return 0;
}

function connect() {
  setStatus("connecting", "connecting…");
  const ws = new WebSocket(wsUrl.toString());
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  state.opened = false;
  ws.onopen = () => { state.retryMs = 500; state.opened = true; };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.dropped) {
      state.dropped += msg.dropped;
      $("dropped").textContent = String(state.dropped);
    }
    switch (msg.type) {
      case "hello":
        setStatus("connected", `connected · ${msg.model}`);
        if ($("notice").dataset.kind === "auth") notice(null);
        $("model").textContent = `model ${msg.model}`;
        state.labels = msg.labels;
        state.hop = msg.hop_seconds || 1;
        send({ type: "subscribe", streams: "*" });  // every stream: the overview shows them all
        showStreams(msg.streams);
        api("/api/check").then(({ body }) => {
          state.recording = !!body.recording;
          state.familyOf = {};
          for (const [family, genres] of Object.entries(body.families || {})) {
            for (const g of genres) state.familyOf[g] = family;
          }
          $("history-note").textContent = state.recording ? "· from the station log" : "· since this page opened";
          loadHistory(state.current);
        }).catch(() => {});
        break;
      case "streams": showStreams(msg.streams); break;
      case "update": {
        const s = stream(msg.stream);
        s.latest = msg;
        s.ended = null;
        s.hops.push([Date.parse(msg.wall) / 1000 || Date.now() / 1000, headline(msg)[0]]);
        if (s.hops.length > MAX_HOPS) s.hops.splice(0, s.hops.length - MAX_HOPS);
        updateCard(s);
        if (msg.stream === state.current) {
          showUpdate(msg);
          if (Date.now() - state.drawn > 250) drawTimeline();
        }
        break;
      }
      case "segment": log(`${msg.stream}: ${msg.family} (${msg.genre}) for ${(msg.end - msg.start).toFixed(0)} s`); break;
      case "audio_started": choose(msg.stream); log(`sending microphone as stream ${msg.stream}`); break;
      case "stream_ended": streamEnded(msg.stream, msg.reason); break;
      case "stream_status": log(`stream ${msg.stream}: ${msg.status} ${msg.detail}`); break;
      case "error": log(`error (${msg.code}): ${msg.message}`); break;
      default: break;
    }
  };
  ws.onclose = async (ev) => {
    stopMic();
    if (!state.opened && await explainRefusal() && state.refused) {
      return;  // a token or address problem: retrying cannot help; the notice says what to do
    }
    setStatus("disconnected", `disconnected (${ev.code}) · retrying in ${(state.retryMs / 1000).toFixed(1)} s`);
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 10000);
  };
  ws.onerror = () => setStatus("error", "connection error");
}

// -- microphone: getUserMedia -> AudioWorklet -> float32 binary frames ---------------------------
async function startMic() {
  const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("worklet.js");
  const node = new AudioWorkletNode(ctx, "pcm-forwarder");
  const name = `browser-${Math.random().toString(36).slice(2, 8)}`;
  send({ type: "audio_start", stream: name, sample_rate: ctx.sampleRate, format: "float32", channels: 1 });
  node.port.onmessage = (ev) => {
    state.sent = (state.sent || 0) + 1;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(ev.data);
  };
  ctx.createMediaStreamSource(media).connect(node);
  const mute = ctx.createGain(); // keeps the graph pulled by the destination without playing the mic back
  mute.gain.value = 0;
  node.connect(mute).connect(ctx.destination);
  state.mic = { media, ctx, node, name };
  $("mic").dataset.on = "1";
  $("mic").textContent = "■ Stop microphone";
}

function stopMic() {
  const mic = state.mic;
  if (!mic) return;
  state.mic = null;
  send({ type: "audio_stop", stream: mic.name });
  mic.media.getTracks().forEach((t) => t.stop());
  mic.ctx.close();
  $("mic").dataset.on = "0";
  $("mic").textContent = "🎤 Tag my microphone";
}

$("mic").addEventListener("click", () => {
  if (state.mic) stopMic();
  else startMic().catch((e) => log(`microphone: ${e.message || e}`));
});
$("stream").addEventListener("change", (ev) => choose(ev.target.value));
$("minutes").textContent = String(MINUTES);
setInterval(drawTimeline, 1000);
setInterval(() => loadHistory(state.current), 60000);  // the log's newest segments (a no-op without --record)

connect();
