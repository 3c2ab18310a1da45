"""FlashHead as a pipecat video service: text-to-speech audio frames in, the talking head's video frames with that
same audio out, in step, for any pipecat output transport (SmallWebRTC, LiveKit, Daily).

    avatar = FlashHeadVideoService(pipeline, "face.png", width=512, height=512, idle=True)
    Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])
    # transport: TransportParams(audio_out_enabled=True, audio_out_sample_rate=16000, video_out_enabled=True,
    #                            video_out_is_live=True, video_out_width=512, video_out_height=512,
    #                            video_out_framerate=25)

- TTSAudioRawFrame (any rate, mono): fed to a LiveSession (serve/live_session.py) and not passed on as is: its audio
  leaves again with the frames made from it. Each 40 ms tick of one 25 Hz clock (webrtc.FrameClock) pushes an
  OutputAudioRawFrame (16 kHz mono, 640 samples) and then the OutputImageRawFrame (RGB) generated from exactly those
  samples, so the transport gets them together whatever its own buffering.
- TTSStoppedFrame: the utterance is flushed (its last words are generated without waiting for more speech).
- InterruptionFrame (barge-in): the queued speech and the frames not yet pushed are dropped (LiveSession.interrupt);
  identity and motion continue, the next speech starts at the next chunk boundary. Passed on.
- idle (default on): while no speech is queued the head keeps moving (generated from silence, see docs/live.md);
  those ticks push the image only, so the transport does not take silence for the bot speaking.
- StartFrame starts the generation thread and the clock; EndFrame / CancelFrame close the session.

pipecat is an optional dependency (`pip install comfyui-flashhead[conversation]`); nothing else in the core imports
this module. The model runs in one thread (serve.scheduler.GenerationWorker), off pipecat's event loop.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InterruptionFrame, OutputAudioRawFrame,
                                   OutputImageRawFrame, StartFrame, TTSAudioRawFrame, TTSStoppedFrame)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from ..config import AUDIO_SAMPLE_RATE
from ..errors import InputError
from ..live.channel import LiveRegistry
from ..media.image import load_image
from ..serve.live_session import LiveSession
from ..serve.scheduler import GenerationWorker
from ..serve.webrtc import FrameClock, RtcSink


class _PipecatClock(FrameClock):
    """Pushes each tick's audio and image downstream from the service."""

    def __init__(self, sink: RtcSink, service: "FlashHeadVideoService"):
        super().__init__(sink)
        self.service = service

    async def emit(self, k: int, frame: np.ndarray, pcm: np.ndarray) -> None:
        if pcm.any():
            await self.service.push_frame(OutputAudioRawFrame(audio=pcm.tobytes(), sample_rate=AUDIO_SAMPLE_RATE,
                                                              num_channels=1))
        height, width = frame.shape[:2]
        await self.service.push_frame(OutputImageRawFrame(image=frame.tobytes(), size=(width, height), format="RGB"))


class FlashHeadVideoService(FrameProcessor):
    """A FlashHead talking head in a pipecat pipeline (module docstring). pipeline: a loaded flashhead_core Pipeline;
    portrait: any image load_image takes (a path, a PIL image, an array); width, height: the video's size (on the
    model's grid); idle: keep moving between utterances; seed: the session's noise."""

    def __init__(self, pipeline, portrait, *, width: int = 512, height: int = 512, idle: bool = True, seed: int = 0,
                 context_seconds: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self._pipeline, self._portrait = pipeline, load_image(portrait, (height, width))
        self._size, self._idle, self._seed, self._context = (width, height), idle, seed, context_seconds
        self._worker: GenerationWorker | None = None
        self._live: LiveSession | None = None
        self._clock: _PipecatClock | None = None
        self._registry = LiveRegistry()

    @property
    def live(self) -> LiveSession | None:
        """The session (its status(): rtf, behind_s, ...) while the pipeline runs."""
        return self._live

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, TTSAudioRawFrame):
            if frame.num_channels != 1:
                raise InputError(f"FlashHeadVideoService takes mono speech, got {frame.num_channels} channels: set "
                                 f"the TTS service to mono")
            self._live.feed_pcm16(frame.audio, frame.sample_rate)
            self._worker.wake()
        elif isinstance(frame, TTSStoppedFrame):
            self._live.flush()
            self._worker.wake()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await asyncio.to_thread(self._live.interrupt)
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _start(self) -> None:
        if self._live is not None:
            return
        width, height = self._size
        sink = RtcSink()
        self._worker = GenerationWorker(name="flashhead-pipecat")
        self._worker.start()
        self._live = await asyncio.to_thread(
            LiveSession, self._pipeline, self._registry.create(), height=height, width=width, seed=self._seed,
            context_seconds=self._context, sinks=[sink], idle=self._idle)
        await asyncio.wrap_future(self._worker.call(self._live.add_identity, "portrait", self._portrait))
        self._worker.add(self._live)
        self._clock = _PipecatClock(sink, self)
        self._clock.start()

    async def _stop(self) -> None:
        if self._live is None:
            return
        live, self._live = self._live, None
        await self._clock.stop()
        self._worker.remove(live)
        await asyncio.to_thread(live.close)
        await asyncio.to_thread(self._worker.stop)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()
