"""The live player (flashhead_core/live/static/player.js) when the model is slower than real time, as on a CPU or a
small GPU: every chunk arrives after the previous one has played out, so the <video> runs dry again and again.

Chromium does not always resume an MSE <video> that ran dry once data is appended again behind the playhead: the old
player stood on one frame for the rest of the run although the next chunks were buffered (issue 23 item 1). Judged
from what the page recorded (in the page, every 50 ms: currentTime, the seconds buffered ahead of it, the player's
status), not from how fast this machine is: while a second or more is buffered ahead, currentTime must move; while
nothing is, the player must say that it waits for the model; at the end it must have played every frame.
"""

from __future__ import annotations

import threading
import time

import pytest

from flashhead_core.live import LiveEncoder, LiveRegistry
from test_live import CHROMIUM, CHUNK_FRAMES, SIZE, StreamingServer, moving_frames, tone

CHUNKS = 10
CHUNK_SECONDS = CHUNK_FRAMES / 25
PERIOD = 2 * CHUNK_SECONDS  # one chunk every two chunk durations: generation at half real time
STILL_LIMIT = 2.5  # seconds of page time with >= 1 s buffered ahead and currentTime standing still: a freeze

# In the page: what the <video> does, sampled every 50 ms until the player has ended and played to its last frame.
RECORD = """() => {
  const video = document.getElementById('v');
  const rec = window.recording = {samples: [], ended: false};
  const ahead = () => {
    const b = video.buffered;
    for (let i = 0; i < b.length; i++)
      if (b.start(i) <= video.currentTime + 0.05 && video.currentTime < b.end(i)) return b.end(i) - video.currentTime;
    return 0;
  };
  video.addEventListener('ended', () => { rec.ended = true; });
  const timer = setInterval(() => {
    const s = window.statuses[window.statuses.length - 1] || {};
    rec.samples.push({t: performance.now() / 1000, ct: video.currentTime, ahead: ahead(), waiting: !!s.waiting,
                      streamEnded: !!s.ended, paused: video.paused,
                      end: video.buffered.length ? video.buffered.end(video.buffered.length - 1) : 0});
    if (rec.ended && rec.samples.length > 20) clearInterval(timer);
  }, 50);
}"""


def freezes(samples: list[dict]) -> list[tuple[float, float]]:
    """(page time, seconds) of each stretch in which currentTime stood still for more than STILL_LIMIT seconds although
    at least a second was buffered ahead all along."""
    found, start = [], None
    for a, b in zip(samples, samples[1:]):
        stuck = b["ct"] == a["ct"] and a["ahead"] >= 1.0 and b["ahead"] >= 1.0
        if stuck and start is None:
            start = a
        if not stuck and start is not None:
            if a["t"] - start["t"] > STILL_LIMIT:
                found.append((round(start["t"], 2), round(a["t"] - start["t"], 2)))
            start = None
    if start is not None and samples[-1]["t"] - start["t"] > STILL_LIMIT:
        found.append((round(start["t"], 2), round(samples[-1]["t"] - start["t"], 2)))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_player_keeps_playing_and_says_it_waits_when_generation_is_slower_than_real_time():
    playwright = pytest.importorskip("playwright.sync_api")
    registry = LiveRegistry()
    channel = registry.create()
    encoder = LiveEncoder(SIZE, SIZE)
    channel.open(encoder.info)
    samples_per_chunk = CHUNK_FRAMES * 16000 // 25

    def produce():
        for k in range(CHUNKS):
            time.sleep(PERIOD)
            channel.publish(encoder.encode(moving_frames(k * CHUNK_FRAMES, CHUNK_FRAMES), tone(samples_per_chunk)))
        last = encoder.finish()
        if last:
            channel.publish(last)
        channel.finish()

    with StreamingServer(registry, channel.id) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        errors = []
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.evaluate(RECORD)
            producer = threading.Thread(target=produce)
            producer.start()
            producer.join(CHUNKS * PERIOD + 60)
            # once the stream has ended, the player plays what it holds to the last frame (<video> 'ended')
            try:
                page.wait_for_function("() => window.recording.ended", timeout=60000)
            except Exception:
                pass
            rec = page.evaluate("() => window.recording")
            statuses = page.evaluate("() => window.statuses")
        finally:
            browser.close()
    samples = rec["samples"]
    duration = CHUNKS * CHUNK_SECONDS
    dry, flowing = judged_samples(samples)
    print(f"\nslow stream ({CHUNKS} chunks of {CHUNK_SECONDS} s, one every {PERIOD:.2f} s): last currentTime "
          f"{samples[-1]['ct']:.2f} of {duration:.2f} s, ended {rec['ended']}, freezes {freezes(samples)}, "
          f"{len(dry)} samples dry ({sum(s['waiting'] for s in dry)} of them 'waiting'), {len(flowing)} playing "
          f"({sum(s['waiting'] for s in flowing)} 'waiting'); last status {statuses[-1]}")
    assert errors == [], errors
    assert freezes(samples) == [], "the player stood still with data buffered ahead"
    assert rec["ended"] and samples[-1]["ct"] >= duration - 0.1, "the player did not play to the end of the stream"
    assert dry, "the stream never ran dry: it was not slower than real time"
    assert all(s["waiting"] for s in dry), "with nothing left to play the player must say that it waits for the model"
    assert flowing and not any(s["waiting"] for s in flowing), "'waiting' shown while the video played"


def judged_samples(samples: list[dict], window: float = 0.75) -> tuple[list[dict], list[dict]]:
    """(dry, flowing): the samples after `window` seconds in which currentTime stood still with less than 0.15 s
    buffered ahead and the stream still running (the player has played all it has), and those after `window` seconds
    in which currentTime moved with at least 0.3 s ahead all along. The player's status may lag its watchdog by a tick
    (0.25 s) and two ticks tell a standing playhead: a state is judged once it has lasted `window` while the page ran
    its timers (no gap of more than 0.3 s between samples: a page the machine stalled stalls the watchdog too)."""
    dry, flowing = [], []
    for i, s in enumerate(samples):
        span = [p for p in samples[:i + 1] if s["t"] - p["t"] <= window]
        if s["t"] - span[0]["t"] < window - 0.1 or span[0]["ct"] <= 0:
            continue
        if any(b["t"] - a["t"] > 0.3 for a, b in zip(span, span[1:])):
            continue
        if all(p["ct"] == s["ct"] and p["ahead"] < 0.15 and not p["streamEnded"] for p in span):
            dry.append(s)
        elif all(b["ct"] > a["ct"] and a["ahead"] >= 0.3 for a, b in zip(span, span[1:])):
            flowing.append(s)
    return dry, flowing


def test_a_cancel_in_comfyui_labels_the_player_with_the_chunk_it_stopped_at():
    """ComfyUI turns the core's GenerationCancelled into its own interrupt exception, which has no text: the reason
    the stream ends with (what the player shows after "stopped:") is the cancel's own sentence, not a class name."""
    from flashhead_core.generation.sampler import GenerationCancelled
    from flashhead_core.media.video_io import stop_reason

    class InterruptProcessingException(Exception):  # as comfy.model_management's: raised bare
        pass

    try:
        try:
            raise GenerationCancelled("generation cancelled at chunk 3")
        except GenerationCancelled:
            raise InterruptProcessingException()
    except InterruptProcessingException as interrupt:
        assert stop_reason(interrupt) == "generation cancelled at chunk 3"
    assert stop_reason(InterruptProcessingException()) == "InterruptProcessingException"
    assert stop_reason(OSError("disk full\nmore")) == "disk full"
