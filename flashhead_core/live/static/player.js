// LivePlayer: plays a FlashHead live stream in a <video> while it is generated, through Media Source Extensions.
// Plain ES module, no build step; used by the ComfyUI extension (web/flashhead.js) and the `flashhead serve`
// page. It speaks the protocol of flashhead_core/live/http.py:
//   GET <stream>                      -> info JSON {video_mime, audio_mime, first, next, ended, error, ...}
//   GET <stream>/init/video|audio     -> init segments (appended once)
//   GET <stream>/segments/<n>/video|audio -> media segment n, header X-FlashHead-Start = where it goes on the
//        timeline (set as the SourceBuffer's timestampOffset: every segment's own timestamps start at 0);
//        204 + X-FlashHead-Ended: 1 = the stream ended, 204 + X-FlashHead-Ended: 0 = not yet (ask again),
//        410 = dropped (re-join at the live edge).
// Two SourceBuffers (video, audio), appends queued per buffer, playback from the first segment on; a player
// joining mid-stream starts at the latest segment (each starts with a keyframe). Sound autoplay refused by the
// browser: it plays muted and shows an unmute button next to the video.
// Slower than real time (a CPU, a small GPU): the <video> runs dry after each chunk. The player then reports
// `waiting: true` (nothing buffered ahead: it waits for the model) until the next chunk is in, and a watchdog keeps
// playback going: Chromium does not always resume an MSE <video> that ran dry when data is appended again, so where
// currentTime stands still with media buffered ahead (or in a gap before the next buffered range) the player seeks
// to where playback should be, which restarts it. Once the stream has ended the <video> plays to its last frame.
//
//   const player = new LivePlayer(videoElement, "/flashhead/live/<id>", {onStatus: (s) => ..., fetch});
//   await player.start();   // resolves once the stream is attached; `player.done` resolves when it has ended
//   player.stop();

const KEEP_SECONDS = 30; // media kept behind the playhead (older ranges are removed: memory stays flat)
const WATCH_MS = 250;    // how often the watchdog looks at the <video>
const DRY_SECONDS = 0.25; // less than this ahead of a playhead standing still: it has played all it can (Chromium
                          // stops a frame or two before the end of what is buffered): waiting for the model
const STALL_TICKS = 2;   // watchdog ticks with currentTime standing still, media ahead and not paused: restart it

const once = (target, type) => new Promise((resolve) => target.addEventListener(type, resolve, { once: true }));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One SourceBuffer: appends (and removals) run one after the other, each after the previous 'updateend'.
class Track {
  constructor(buffer) {
    this.buffer = buffer;
    this.queue = Promise.resolve();
  }

  run(operation) {
    this.queue = this.queue.then(() => new Promise((resolve, reject) => {
      const done = () => { cleanup(); resolve(); };
      const fail = () => { cleanup(); reject(new Error("the browser could not buffer a live segment")); };
      const cleanup = () => {
        this.buffer.removeEventListener("updateend", done);
        this.buffer.removeEventListener("error", fail);
      };
      this.buffer.addEventListener("updateend", done);
      this.buffer.addEventListener("error", fail);
      try {
        operation(this.buffer);
      } catch (error) {
        cleanup();
        reject(error);
      }
    }));
    return this.queue;
  }

  // bytes at `offset` seconds on the stream's timeline (null: an init segment); empty segments are skipped
  append(bytes, offset) {
    if (!bytes.byteLength) return this.queue;
    return this.run((buffer) => {
      if (offset !== null) buffer.timestampOffset = offset;
      buffer.appendBuffer(bytes);
    });
  }

  trim(before) {
    const ranges = this.buffer.buffered;
    if (!ranges.length || ranges.start(0) >= before - 1) return this.queue;
    return this.run((buffer) => buffer.remove(0, before));
  }
}

export class LivePlayer {
  constructor(video, streamUrl, options = {}) {
    this.video = video;
    this.url = String(streamUrl).replace(/\/+$/, "");
    this.fetch = options.fetch || ((...args) => fetch(...args));
    this.onStatus = options.onStatus || (() => {});
    this.keepSeconds = options.keepSeconds ?? KEEP_SECONDS;
    this.aborter = new AbortController();
    this.stopped = false;
    this.status = { segment: -1, joined: -1, behind: 0, ended: false, error: null, playing: false, muted: false, waiting: false };
    this.stalled = 0;   // watchdog ticks since currentTime last moved with media ahead
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  async start() {
    try {
      let info = await this.info();
      while (!info.video_mime && !info.ended && !this.stopped) {   // no chunk encoded yet
        await sleep(250);
        info = await this.info();
      }
      if (this.stopped) return;
      if (!info.video_mime) return this.finish(info.error || null);
      if (!window.MediaSource || !MediaSource.isTypeSupported(info.video_mime)
          || !MediaSource.isTypeSupported(info.audio_mime)) {
        throw new Error(`this browser cannot play ${info.video_mime} + ${info.audio_mime} live`);
      }
      this.source = new MediaSource();
      this.objectUrl = URL.createObjectURL(this.source);
      this.video.src = this.objectUrl;
      await once(this.source, "sourceopen");
      this.tracks = {
        video: new Track(this.source.addSourceBuffer(info.video_mime)),
        audio: new Track(this.source.addSourceBuffer(info.audio_mime)),
      };
      const [initVideo, initAudio] = await Promise.all([this.bytes("init/video"), this.bytes("init/audio")]);
      await Promise.all([this.tracks.video.append(initVideo, null), this.tracks.audio.append(initAudio, null)]);
      this.next = Math.max(info.first, info.next - 1, 0);   // the live edge: the latest segment
      this.loop();
    } catch (error) {
      this.fail(error);
    }
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.aborter.abort();
    clearInterval(this.watchdog);
    this.endSource();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.unmuteButton?.remove();
    this.resolveDone(this.status);
  }

  // --- internals

  async loop() {
    try {
      while (!this.stopped) {
        const [video, audio] = await Promise.all([this.segment(this.next, "video"), this.segment(this.next, "audio")]);
        if (this.stopped) return;
        if (video.status === 410 || audio.status === 410) {   // fell behind the kept segments: back to the edge
          const info = await this.info();
          this.next = Math.max(info.first, info.next - 1, 0);
          continue;
        }
        const ended = [video, audio].find((s) => s.status === 204 && s.ended);
        if (ended) return await this.end(ended.error);
        if (video.status !== 200 || audio.status !== 200) continue;   // not published yet: ask again
        await Promise.all([this.tracks.video.append(video.bytes, video.start),
                           this.tracks.audio.append(audio.bytes, audio.start)]);
        if (this.stopped) return;
        const first = this.status.segment < 0;
        this.update({ segment: this.next, behind: Math.max(0, video.mediaEnd - this.video.currentTime),
                      ...(first ? { joined: this.next } : {}) });   // joined: where this player started
        this.next += 1;
        if (first) this.play();
        const before = this.video.currentTime - this.keepSeconds;
        if (before > 0) await Promise.all([this.tracks.video.trim(before), this.tracks.audio.trim(before)]);
      }
    } catch (error) {
      this.fail(error);
    }
  }

  async play() {
    const ranges = this.video.buffered;
    if (ranges.length && this.video.currentTime < ranges.start(0)) this.video.currentTime = ranges.start(0);
    try {
      await this.video.play();
    } catch (error) {
      if (this.stopped || error.name !== "NotAllowedError") return;
      this.video.muted = true;   // the browser refuses sound without a user gesture: play muted, offer unmute
      this.update({ muted: true });
      this.showUnmute();
      await this.video.play().catch(() => {});
    }
    if (!this.stopped) this.update({ playing: true });
    this.watchdog ??= setInterval(() => this.watch(), WATCH_MS);
  }

  // Seconds buffered ahead of the playhead, and where playback should go on when the playhead is not inside a
  // buffered range (the start of the next one; null: in a range, or nothing after it).
  ahead() {
    const ranges = this.video.buffered, now = this.video.currentTime;
    for (let i = 0; i < ranges.length; i++) {
      if (ranges.end(i) <= now) continue;
      if (ranges.start(i) <= now + 0.01) return { seconds: ranges.end(i) - now, gapTo: null };
      return { seconds: 0, gapTo: ranges.start(i) };
    }
    return { seconds: 0, gapTo: null };
  }

  watch() {
    const video = this.video;
    if (this.stopped || video.ended) {
      clearInterval(this.watchdog);
      return;
    }
    const { seconds, gapTo } = this.ahead();
    const standing = video.currentTime === this.lastTime && !video.paused && !video.seeking;
    this.lastTime = video.currentTime;
    const waiting = standing && !this.status.ended && seconds < DRY_SECONDS && gapTo === null;
    if (waiting !== this.status.waiting) this.update({ waiting });
    if (gapTo !== null) {
      video.currentTime = gapTo;   // a hole in the buffered media (a dropped or late segment): jump over it
    } else if (standing && seconds >= DRY_SECONDS) {
      this.stalled += 1;
      if (this.stalled >= STALL_TICKS) {   // media ahead, not paused, and yet standing still: restart it
        this.stalled = 0;
        video.currentTime += 0.001;
      }
    } else {
      this.stalled = 0;
    }
  }

  showUnmute() {
    const parent = this.video.parentElement;
    if (!parent || this.unmuteButton) return;
    const button = document.createElement("button");
    button.textContent = "Unmute";
    button.title = "The browser started the live video without sound";
    button.className = "flashhead-live-unmute";
    button.style.cssText = "position:absolute;left:6px;bottom:6px;z-index:1;font-size:12px;cursor:pointer";
    button.addEventListener("click", () => {
      this.video.muted = false;
      this.update({ muted: false });
      button.remove();
      this.unmuteButton = null;
    });
    if (getComputedStyle(parent).position === "static") parent.style.position = "relative";
    parent.appendChild(button);
    this.unmuteButton = button;
  }

  async end(error) {
    await Promise.all([this.tracks.video.queue, this.tracks.audio.queue]);
    this.finish(error);
  }

  finish(error) {
    this.endSource();
    this.update({ ended: true, error: error || null });
    this.resolveDone(this.status);
  }

  fail(error) {
    if (this.stopped || error?.name === "AbortError") return;
    this.finish(String(error?.message || error));
  }

  endSource() {
    if (this.source?.readyState !== "open") return;
    const busy = Object.values(this.tracks || {}).some((t) => t.buffer.updating);
    try {
      if (busy) for (const t of Object.values(this.tracks)) t.buffer.abort();
      this.source.endOfStream();
    } catch (error) {
      // the element already detached the source: nothing left to end
    }
  }

  update(changes) {
    Object.assign(this.status, changes);
    try {
      this.onStatus({ ...this.status });
    } catch (error) {
      console.warn("FlashHead live player: onStatus failed", error);
    }
  }

  async get(path) {
    return this.fetch(path ? `${this.url}/${path}` : this.url, { signal: this.aborter.signal, cache: "no-store" });
  }

  async info() {
    const response = await this.get("");
    if (!response.ok) throw new Error(`the live stream is not available (HTTP ${response.status})`);
    return response.json();
  }

  async bytes(path) {
    const response = await this.get(path);
    if (!response.ok) throw new Error(`live stream ${path}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  }

  async segment(index, track) {
    const response = await this.get(`segments/${index}/${track}`);
    const header = (name) => response.headers.get(name);
    if (response.status === 200) {
      return { status: 200, bytes: new Uint8Array(await response.arrayBuffer()),
               start: Number(header("X-FlashHead-Start")), mediaEnd: Number(header("X-FlashHead-Media-End")) };
    }
    if (response.status === 204) return { status: 204, ended: header("X-FlashHead-Ended") === "1",
                                          error: header("X-FlashHead-Error") };
    if (response.status === 410) return { status: 410 };
    throw new Error(`live stream segment ${index}: HTTP ${response.status}`);
  }
}
