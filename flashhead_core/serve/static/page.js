// The page of `flashhead serve`: portraits + speech (a file, the microphone, or a text-to-speech program pushing PCM)
// -> a session on the server -> its live stream played over WebRTC (RtcPlayer below: audio and video on the server's
// one 25 Hz clock) or, as the fallback, with the shared LivePlayer (MP4 segments into Media Source Extensions),
// identity buttons to switch mid-stream, barge-in (Interrupt), an idle mode, and a status line with latency,
// real-time factor and how far generation is behind the speech.
// Plain ES module, no build step. The server's API: docs/live.md. With a token (?token= in the page's URL) every
// request carries it: fetches and the WebSocket URL here, the module imports below.

const token = new URLSearchParams(location.search).get("token");
const { LivePlayer } = await import(`./player.js${token ? `?token=${encodeURIComponent(token)}` : ""}`);

const PIECE_SECONDS = 0.1;   // the microphone goes out in pieces of 100 ms as it is spoken
const SPEECH_RATE = 16000;   // what the model hears; the browser resamples the microphone to it where it can
const BEHIND_SHOWN_S = 2.5;  // speech not yet generated, when the model keeps up: up to a chunk waiting to fill plus
                             // one chunk being generated (2 x 0.96 s Lite, 2 x 1.08 s Pro); more = falling behind
const STATUS_POLL_MS = 1000;
const RTC_CONNECT_MS = 10000; // WebRTC not connected by then: the page plays the Media Source stream instead
const RTC_GATHER_MS = 3000;   // the offer goes out with the candidates gathered by then

const $ = (id) => document.getElementById(id);
const video = $("video");

// --- talking to the server -------------------------------------------------------------------------------------------

function withToken(path) {
  const url = new URL(path, location.href);
  if (token) url.searchParams.set("token", token);
  return url;
}

const authedFetch = (path, init) => fetch(withToken(path), init);

function socketUrl(path) {
  const url = withToken(path);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

class ServerError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// fetch + the server's JSON; a non-2xx answer becomes a ServerError carrying the server's {error} text.
async function request(path, init) {
  let response;
  try {
    response = await authedFetch(path, init);
  } catch (e) {
    throw new ServerError(0, `cannot reach the server (${e.message}): is \`flashhead serve\` still running?`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ServerError(response.status, body?.error || `${response.status} ${response.statusText}`);
  return body;
}

function explain(error) {
  const text = error.message || String(error);
  switch (error.status) {
    case 400: return `The server refused the input: ${text}`;
    case 401: case 403:
      return `Not allowed: ${text}. Open the page with the URL \`flashhead serve\` printed (it ends in ?token=...).`;
    case 404:
      return `The session is gone on the server (ended, timed out, or the server restarted): ${text}. Start again.`;
    case 413: return `Too large: ${text}`;
    case 429: return `Too much speech waiting: ${text}`;
    case 503: return `The server is busy: ${text}. Try again in a moment.`;
    default: return text;
  }
}

// --- what the page shows ---------------------------------------------------------------------------------------------

function showError(error) {
  const box = $("error");
  box.textContent = error ? (typeof error === "string" ? error : explain(error)) : "";
  box.hidden = !error;
}

// The measurements behind the status line, also read by scripts and the browser tests (window.flashheadPage).
const metrics = {
  startedAt: null,         // performance.now() when Start sent the session request
  firstPieceSentAt: null,  // ... when the first microphone piece went out
  piecesSent: 0,
  secondsSent: 0,          // microphone speech sent so far
  firstFrameAt: null,      // expected display time of the first frame presented (requestVideoFrameCallback)
  firstFrameLatency: null, // seconds from the first microphone piece (a file: from Start) to the first frame shown
  latency: null,           // seconds from speaking (microphone) to the matching frame on screen, last frame
  framesPresented: 0,
  server: null,            // the last status JSON of the server
  player: null,            // the last onStatus of the LivePlayer
  identity: null,
  transport: null,         // "webrtc" or "mse": how the stream plays
  fallback: null,          // why WebRTC was not used, when it was asked for
  interrupts: 0,
};

function formatSeconds(s) { return `${s.toFixed(s < 10 ? 2 : 1)} s`; }

function renderStatus() {
  const status = $("status");
  const parts = [];
  const server = metrics.server || {};
  const player = metrics.player || {};
  if (state.session == null) parts.push(state.ended ? "Stopped." : "Idle.");
  else if (player.error) parts.push("stream error");
  else if (player.ended) parts.push("ended");
  else if (metrics.framesPresented) parts.push("playing");
  else if (state.source === "external" && !server.received_s) parts.push("waiting for the text-to-speech program");
  else parts.push("waiting for the first frames");
  if (metrics.transport) parts.push(metrics.transport === "webrtc" ? "WebRTC" : "Media Source");
  if (metrics.identity) parts.push(`identity ${metrics.identity}`);
  const firstFrame = metrics.firstFrameLatency ?? server.first_frame_latency_s;
  if (metrics.latency != null) parts.push(`latency ${formatSeconds(metrics.latency)}`);
  else if (firstFrame != null) parts.push(`first frame after ${formatSeconds(firstFrame)}`);
  if (server.rtf != null)
    parts.push(`real-time factor ${server.rtf.toFixed(2)}${server.rtf > 1 ? " (slower than real time)" : ""}`);
  if (server.generated_s != null)
    parts.push(`generated ${formatSeconds(server.generated_s)} of ${formatSeconds(server.received_s ?? 0)} speech`);
  status.replaceChildren(parts.join(" · "));
  const behind = state.source === "file" ? null : server.behind_s;
  if (behind != null && behind >= BEHIND_SHOWN_S) {
    const span = document.createElement("span");
    span.className = "behind";
    span.textContent = ` · behind by ${behind.toFixed(1)} s`;
    span.title = "speech received that is not generated yet: the model runs slower than real time";
    status.append(span);
  }
}

function showIdentities(names, active) {
  const box = $("identity-buttons");
  box.replaceChildren(...names.map((name) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.dataset.identity = name;
    button.setAttribute("aria-pressed", String(name === active));
    button.addEventListener("click", () => switchIdentity(name));
    return button;
  }));
  $("identities").hidden = false;
}

function showExternalInstructions(session) {
  const base = `${location.origin}/api/sessions/${session.session}/audio`;
  const auth = token ? ` -H 'Authorization: Bearer ${token}'` : "";
  $("session-id").textContent = session.session;
  $("curl-example").textContent =
    `curl -X POST${auth} -H 'Content-Type: audio/L16' --data-binary @piece.raw '${base}?rate=16000'\n` +
    `curl -X POST${auth} -H 'Content-Type: audio/L16' --data-binary @last.raw '${base}?rate=16000&end=1'\n` +
    `# &flush=1 after an utterance: its last words are generated without waiting for more speech`;
  $("ws-example").textContent = socketUrl(`/api/sessions/${session.session}/audio?rate=16000`);
  $("external").hidden = false;
}

// --- a session -------------------------------------------------------------------------------------------------------

const state = { session: null, source: "file", player: null, microphone: null, poll: null, ended: false,
                frameCallback: null };

function selectedSource() { return document.querySelector("input[name=source]:checked").value; }

function sessionForm() {
  const portraits = $("portraits").files;
  if (!portraits.length) throw new Error("Pick at least one portrait image.");
  const form = new FormData();
  for (const file of portraits) form.append("portrait", file, file.name);
  for (const field of ["width", "height", "seed"]) {
    const value = $(field).value.trim();
    if (value) form.append(field, value);
  }
  if ($("idle-mode").checked) form.append("idle", "1");
  if (state.source === "file") {
    const audio = $("audio").files[0];
    if (!audio) throw new Error("Pick a speech file, or choose the microphone or a text-to-speech program.");
    form.append("audio", audio, audio.name);
  }
  return form;
}

async function start(event) {
  event.preventDefault();
  showError(null);
  await stop();
  state.source = selectedSource();
  state.ended = false;
  Object.assign(metrics, { startedAt: null, firstPieceSentAt: null, piecesSent: 0, secondsSent: 0, firstFrameAt: null,
                           firstFrameLatency: null, latency: null, framesPresented: 0, server: null, player: null,
                           identity: null, transport: null, fallback: null, interrupts: 0 });
  let form;
  try { form = sessionForm(); } catch (e) { showError(e.message); return; }
  setRunning(true);
  try {
    metrics.startedAt = performance.now();
    const session = await request("/api/sessions", { method: "POST", body: form });
    state.session = session;
    metrics.identity = session.identity ?? session.identities[0];
    showIdentities(session.identities, metrics.identity);
    if (state.source === "external") showExternalInstructions(session);
    $("idle").hidden = true;
    watchFrames();
    const attached = play(session);   // (the MSE player waits for the stream's first chunk; the microphone makes it)
    if (state.source === "microphone")
      state.microphone = await Microphone.open(session.session, onServerStatus, $("echo-cancellation").checked);
    state.poll = setInterval(pollStatus, STATUS_POLL_MS);
    await attached;
    renderStatus();
  } catch (e) {
    showError(e);
    await stop();
  }
}

function onPlayerStatus(status) {
  metrics.player = status;
  if (status.error) showError(`The stream failed: ${status.error}`);
  if (status.ended) {
    $("start").disabled = false;   // a new Start replaces this session
    clearInterval(state.poll);     // the final figures, then no more requests: the server may free the
    pollStatus();                  // session once it has been idle for its --idle-timeout
  }
  renderStatus();
}

// WebRTC when asked for and it connects, else the Media Source stream (the reason kept in metrics.fallback).
async function play(session) {
  if ($("transport").value === "webrtc") {
    if (!("RTCPeerConnection" in window)) metrics.fallback = "this browser has no WebRTC";
    else {
      const player = new RtcPlayer(video, session.session, { onStatus: onPlayerStatus });
      state.player = player;
      try {
        await player.start();
        metrics.transport = "webrtc";
        renderStatus();
        return;
      } catch (e) {
        player.stop();
        if (state.player !== player) return;   // stopped meanwhile
        metrics.fallback = e.message;
        console.warn(`FlashHead: WebRTC did not connect (${e.message}); playing the Media Source stream`);
      }
    }
  }
  metrics.transport = "mse";
  state.player = new LivePlayer(video, session.stream, { fetch: authedFetch, onStatus: onPlayerStatus });
  renderStatus();
  await state.player.start();
}

async function interrupt() {
  if (!state.session) return;
  try {
    onServerStatus(await request(`/api/sessions/${state.session.session}/interrupt`, { method: "POST" }));
    metrics.interrupts += 1;
  } catch (e) { showError(e); }
}

function onServerStatus(status) {
  metrics.server = status;
  renderStatus();
}

async function pollStatus() {
  if (!state.session) return;
  try {
    onServerStatus(await request(`/api/sessions/${state.session.session}/status`));
  } catch (e) {
    showError(e);
    if (e.status === 404) await stop();
  }
}

async function switchIdentity(name) {
  if (!state.session) return;
  try {
    const answer = await request(`/api/sessions/${state.session.session}/identity`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }),
    });
    metrics.identity = answer.identity;
    for (const button of $("identity-buttons").children)
      button.setAttribute("aria-pressed", String(button.dataset.identity === answer.identity));
    showError(null);
    renderStatus();
  } catch (e) { showError(e); }
}

async function addPortraits() {
  const files = $("more-portraits").files;
  if (!state.session || !files.length) return;
  const form = new FormData();
  for (const file of files) form.append("portrait", file, file.name);
  try {
    const answer = await request(`/api/sessions/${state.session.session}/identities`, { method: "POST", body: form });
    showIdentities(answer.identities, metrics.identity);
  } catch (e) { showError(e); }
  $("more-portraits").value = "";
}

async function endSpeech() {
  if (!state.session) return;
  $("end-speech").disabled = true;
  if (state.microphone) state.microphone.end();
  else if (state.source === "external") {
    try {
      await request(`/api/sessions/${state.session.session}/audio?rate=${SPEECH_RATE}&end=1`, {
        method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: new Uint8Array(0),
      });
    } catch (e) { showError(e); }
  }
}

async function stop() {
  const session = state.session;
  clearInterval(state.poll);
  state.poll = null;
  if (state.frameCallback != null) video.cancelVideoFrameCallback(state.frameCallback);
  state.frameCallback = null;
  state.microphone?.close();
  state.microphone = null;
  state.player?.stop();
  state.player = null;
  state.session = null;
  if (session) {
    state.ended = true;
    await request(`/api/sessions/${session.session}`, { method: "DELETE" }).catch(() => {});
  }
  setRunning(false);
  $("external").hidden = true;
  renderStatus();
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  $("interrupt").disabled = !running;
  $("end-speech").disabled = !running || state.source === "file";
}

// Frames on screen: the first one's time gives the end-to-end latency; each one's media time against the moment its
// speech was spoken gives the live latency (microphone).
function watchFrames() {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const onFrame = (now, frame) => {
    const shownAt = frame.expectedDisplayTime ?? now;
    metrics.framesPresented += 1;
    if (metrics.firstFrameAt == null) {
      metrics.firstFrameAt = shownAt;
      // (a text-to-speech program starts when it starts: the server's first_frame_latency_s tells that one)
      const from = { microphone: metrics.firstPieceSentAt, file: metrics.startedAt }[state.source];
      if (from != null) metrics.firstFrameLatency = (shownAt - from) / 1000;
    }
    if (state.source === "microphone" && metrics.transport === "mse" && metrics.firstPieceSentAt != null) {
      // media time t of the session is speech sample t * rate; the first piece was spoken over the PIECE_SECONDS
      // before it went out (a WebRTC frame's media time is its RTP time: no such relation)
      const spokenAt = metrics.firstPieceSentAt - 1000 * PIECE_SECONDS + 1000 * frame.mediaTime;
      metrics.latency = (shownAt - spokenAt) / 1000;
    }
    if (metrics.framesPresented % 5 === 1) renderStatus();
    state.frameCallback = video.requestVideoFrameCallback(onFrame);
  };
  state.frameCallback = video.requestVideoFrameCallback(onFrame);
}

// --- WebRTC ---------------------------------------------------------------------------------------------------------

// The session's stream over an RTCPeerConnection (receive only): the offer to POST /api/sessions/<id>/rtc, the
// answer back. The server sends each frame with its own audio on one clock, so the browser's lip-sync keeps them
// together. start() resolves once connected (rejects after RTC_CONNECT_MS); onStatus({ended}) once the server has
// closed the connection at the end of the stream, onStatus({error}) when it is lost before.
class RtcPlayer {
  constructor(video, sessionId, { onStatus }) {
    Object.assign(this, { video, sessionId, onStatus, pc: null, connected: false, stopped: false,
                          status: { transport: "webrtc", state: "new", ended: false, error: null } });
  }

  async start() {
    const { iceServers } = await request("/api/rtc");
    const pc = this.pc = new RTCPeerConnection({ iceServers });
    pc.addTransceiver("audio", { direction: "recvonly" });   // audio first, then video: the server's order
    pc.addTransceiver("video", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.ontrack = (event) => {
      stream.addTrack(event.track);
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this.video.play().catch(() => { this.video.muted = true; this.video.play().catch(() => {}); });
    };
    const connected = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no WebRTC connection within ${RTC_CONNECT_MS / 1000} s`)),
                               RTC_CONNECT_MS);
      pc.onconnectionstatechange = () => {
        this.status.state = pc.connectionState;
        if (pc.connectionState === "connected") { clearTimeout(timer); this.connected = true; resolve(); }
        else if (pc.connectionState === "failed" && !this.connected) {
          clearTimeout(timer); reject(new Error("the WebRTC connection failed"));
        } else if (this.connected && ["disconnected", "failed", "closed"].includes(pc.connectionState)) this.lost();
        this.onStatus({ ...this.status });
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {   // the offer carries its candidates (no trickle)
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, RTC_GATHER_MS);
      pc.onicegatheringstatechange = () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      };
    });
    const answer = await request(`/api/sessions/${this.sessionId}/rtc`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }),
    });
    await pc.setRemoteDescription(answer);
    await connected;
  }

  // The server closes the connection once the stream has ended and played; anything else is an error.
  async lost() {
    if (this.stopped || this.status.ended || this.status.error) return;
    let server = null;
    try { server = await request(`/api/sessions/${this.sessionId}/status`); } catch { /* gone */ }
    if (server && ["ended", "closed"].includes(server.state)) this.status.ended = true;
    else this.status.error = `the WebRTC connection was lost (${this.pc.connectionState})`;
    this.onStatus({ ...this.status });
  }

  stop() {
    this.stopped = true;
    this.pc?.close();
    this.video.srcObject = null;
    request(`/api/sessions/${this.sessionId}/rtc`, { method: "DELETE" }).catch(() => {});
  }
}

// --- the microphone --------------------------------------------------------------------------------------------------

// The audio thread's side: 16-bit little-endian PCM pieces of `size` samples of the (mono-mixed) input.
const PIECES_WORKLET = `
class PcmPieces extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.size;
    this.piece = new DataView(new ArrayBuffer(2 * this.size));
    this.filled = 0;
  }
  process(inputs) {
    const samples = inputs[0][0];
    if (samples) for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.piece.setInt16(2 * this.filled++, s < 0 ? s * 0x8000 : s * 0x7fff, true);
      if (this.filled === this.size) {
        this.port.postMessage(this.piece.buffer, [this.piece.buffer]);
        this.piece = new DataView(new ArrayBuffer(2 * this.size));
        this.filled = 0;
      }
    }
    return true;
  }
}
registerProcessor("pcm-pieces", PcmPieces);
`;

class Microphone {
  // getUserMedia -> an AudioContext at 16 kHz (the browser resamples; where it cannot, the context's own rate is
  // sent and the server resamples) -> the worklet above -> binary WebSocket messages of PIECE_SECONDS each.
  static async open(sessionId, onStatus, echoCancellation) {
    if (!navigator.mediaDevices?.getUserMedia)
      throw new Error("This browser gives no microphone here (it needs https:// or http://localhost).");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation, noiseSuppression: false, autoGainControl: false },
      });
    } catch (e) {
      throw new Error(`No microphone: ${e.message}. Allow the microphone for this page, or choose another speech.`);
    }
    let context;
    try { context = new AudioContext({ sampleRate: SPEECH_RATE }); } catch { context = new AudioContext(); }
    const rate = context.sampleRate;
    const socket = new WebSocket(socketUrl(`/api/sessions/${sessionId}/audio?rate=${rate}`));
    socket.binaryType = "arraybuffer";
    const microphone = new Microphone(stream, context, socket);
    try {
      await microphone.connect(rate, onStatus);
    } catch (e) {
      microphone.close();   // the microphone off again, the socket closed
      throw e;
    }
    return microphone;
  }

  constructor(stream, context, socket) {
    Object.assign(this, { stream, context, socket, ending: false });
  }

  async connect(rate, onStatus) {
    const { context, socket } = this;
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error("The server refused the microphone's WebSocket (see its log)."));
    });
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "status") onStatus(message);
      else if (message.error) showError(`The server: ${message.error}`);
    };
    socket.onclose = (event) => {
      if (!this.ending && state.microphone === this)
        showError(`The server closed the microphone's connection${event.reason ? `: ${event.reason}` : ""}.`);
    };
    const url = URL.createObjectURL(new Blob([PIECES_WORKLET], { type: "text/javascript" }));
    try { await context.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
    const pieces = new AudioWorkletNode(context, "pcm-pieces", {
      channelCount: 1, channelCountMode: "explicit", channelInterpretation: "speakers",
      numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { size: Math.round(rate * PIECE_SECONDS) },
    });
    pieces.port.onmessage = (event) => this.send(event.data, rate);
    context.createMediaStreamSource(this.stream).connect(pieces);
    pieces.connect(context.destination);   // pulled by the graph; its output is silence
    await context.resume();
  }

  send(piece, rate) {
    if (this.ending || this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(piece);
    if (metrics.firstPieceSentAt == null) metrics.firstPieceSentAt = performance.now();
    metrics.piecesSent += 1;
    metrics.secondsSent += piece.byteLength / 2 / rate;
  }

  end() {   // the speech is over: the server generates what it has and ends the stream
    if (this.ending) return;
    this.ending = true;
    this.stream.getTracks().forEach((track) => track.stop());
    this.context.close();
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ end: true }));
  }

  close() {
    this.end();
    this.socket.close();
  }
}

// --- wiring ----------------------------------------------------------------------------------------------------------

function showSourceFields() {
  $("audio-file-row").hidden = selectedSource() !== "file";
  $("echo-row").hidden = selectedSource() !== "microphone";
}

$("setup").addEventListener("submit", start);
$("stop").addEventListener("click", () => stop());
$("end-speech").addEventListener("click", endSpeech);
$("interrupt").addEventListener("click", interrupt);
$("more-portraits").addEventListener("change", addPortraits);
for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", showSourceFields);
showSourceFields();
renderStatus();
$("start").disabled = false;   // (disabled in the HTML until this module runs: no plain form submission)

window.flashheadPage = { metrics, get session() { return state.session; }, get player() { return state.player; } };
