// streamtag web page: live genre bars over the websocket protocol (docs/protocol.md). No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsUrl = (() => {
  const u = new URL(params.get("ws") || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`);
  if (params.get("token")) u.searchParams.set("token", params.get("token"));
  return u.toString();
})();

const state = {
  ws: null, labels: [], streams: [], current: params.get("stream") || "", updates: 0, dropped: 0,
  retryMs: 500, mic: null,
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

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

// -- bars ----------------------------------------------------------------------------------------
function buildBars(labels) {
  const bars = $("bars");
  bars.textContent = "";
  for (const label of labels) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = label;
    row.dataset.p = "0";
    row.innerHTML = '<span class="label"></span><div class="track"><div class="fill"></div></div><span class="value">0.00</span>';
    row.querySelector(".label").textContent = label;
    bars.appendChild(row);
  }
}

function showUpdate(u) {
  const [topLabel, topP] = u.top[0] || ["", 0];
  for (const row of $("bars").children) {
    const p = u.probs[row.dataset.label] ?? 0;
    row.dataset.p = p.toFixed(4);
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".value").textContent = p.toFixed(2);
    row.classList.toggle("is-top", row.dataset.label === topLabel);
  }
  // highest first, so the page reads like the terminal dashboard
  const rows = [...$("bars").children].sort((a, b) => b.dataset.p - a.dataset.p);
  for (const row of rows) $("bars").appendChild(row);
  $("top").textContent = `${topLabel} ${(100 * topP).toFixed(0)}%`;
  $("top").dataset.label = topLabel;
  $("title").textContent = u.title ? `♪ ${u.title}` : "";
  state.updates += 1;
  $("updates").textContent = String(state.updates);
  $("updates").dataset.count = String(state.updates);
  $("t").textContent = u.t.toFixed(1);
  $("latency").textContent = u.latency_ms == null ? "–" : u.latency_ms.toFixed(0);
}

// -- streams -------------------------------------------------------------------------------------
function showStreams(streams) {
  state.streams = streams;
  const sel = $("stream");
  sel.textContent = "";
  if (!streams.length) sel.add(new Option("(no streams yet)", ""));
  for (const s of streams) sel.add(new Option(s.title ? `${s.name} — ${s.title}` : s.name, s.name));
  const names = streams.map((s) => s.name);
  if (!names.includes(state.current)) choose(names[0] || "");
  else sel.value = state.current;
}

function choose(name) {
  if (state.current && state.current !== name && state.streams.some((s) => s.name === state.current)) {
    send({ type: "unsubscribe", streams: [state.current] });
  }
  state.current = name;
  $("stream").value = name;
  if (name) send({ type: "subscribe", streams: [name] });
}

// -- connection ----------------------------------------------------------------------------------
function connect() {
  setStatus("connecting", "connecting…");
  const ws = new WebSocket(wsUrl);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => { state.retryMs = 500; };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.dropped) {
      state.dropped += msg.dropped;
      $("dropped").textContent = String(state.dropped);
    }
    switch (msg.type) {
      case "hello":
        setStatus("connected", `connected · ${msg.model}`);
        $("model").textContent = `model ${msg.model}`;
        state.labels = msg.labels;
        buildBars(msg.labels);
        showStreams(msg.streams);
        if (state.current) send({ type: "subscribe", streams: [state.current] });
        break;
      case "streams": showStreams(msg.streams); break;
      case "update": if (msg.stream === state.current) showUpdate(msg); break;
      case "audio_started": choose(msg.stream); log(`sending microphone as stream ${msg.stream}`); break;
      case "stream_ended": log(`stream ${msg.stream} ended: ${msg.reason}`); break;
      case "stream_status": log(`stream ${msg.stream}: ${msg.status} ${msg.detail}`); break;
      case "error": log(`error (${msg.code}): ${msg.message}`); break;
      default: break;
    }
  };
  ws.onclose = (ev) => {
    setStatus("disconnected", `disconnected (${ev.code}) · retrying in ${(state.retryMs / 1000).toFixed(1)} s`);
    stopMic();
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

connect();
