"""Media fragments a browser plays as they come (Media Source Extensions): per chunk, one fragmented-MP4 media segment
of H.264 video and one of AAC audio, through PyAV.

    encoder = LiveEncoder(512, 512, fps=25, sample_rate=16000, channels=1)
    encoder.init_video, encoder.init_audio       # ftyp+moov of each track: appended once, first
    segment = encoder.encode(frames, audio)      # frames [n, H, W, 3], audio float32 [t, C]: this chunk's samples
    last = encoder.finish()                      # the encoders' last packets (or None); the encoders are closed
    encoder.close()                              # a stream that stops early: frees the encoders (and their threads)

Why two tracks, and a fresh muxer per chunk: libavformat's mp4 muxer writes a fragment only once the next packet
arrives, and PyAV cannot flush it, so one long-lived muxer would hold every chunk back until the next chunk exists.
The encoders therefore live for the whole stream (continuous H.264 GOPs and AAC frames, no priming gap per chunk) and
each chunk's packets go through a short-lived muxer (empty_moov + frag_keyframe), closed at once: its output is the
init segment (identical for every chunk) followed by moof+mdat. That muxer's timestamps start at 0 (tfdt 0 in every
segment), so a player places each track's segment at `video_start` / `audio_start` (MSE: SourceBuffer.timestampOffset),
the absolute time of its first packet. Audio and video are then on one timeline whatever the AAC frame boundaries
are (a Lite chunk is 0.96 s = 15360 samples at 16 kHz, not a whole number of 1024-sample AAC frames); the AAC
encoder's delay (1024 samples of priming, the samples short of a whole frame) carries into the next segment, and
`finish()` flushes it.

Each chunk's first frame is forced to an IDR frame, so any segment can start playback (a viewer joining mid-run).
"""

from __future__ import annotations

import io
import struct
import weakref
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch

from ..config import AUDIO_SAMPLE_RATE, FPS
from ..errors import AudioInputError, SizeError
from ..media.frames import images_to_uint8
from ..media.video_io import AAC_SAMPLE_RATES, audio_frame, tag_bt709, yuv_frame

SEGMENT_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer"
# H.264 for live playback: no B-frames and no lookahead (each frame's packet comes out at once), GOPs that end only
# where a chunk starts (forced IDR; g far above any chunk length).
X264_OPTIONS = {"tune": "zerolatency", "preset": "veryfast", "bf": "0", "forced-idr": "1", "g": "1000",
                "sc_threshold": "0"}
DEFAULT_CRF = 23
AUDIO_MIME = 'audio/mp4; codecs="mp4a.40.2"'  # AAC-LC
INIT_BOXES = (b"ftyp", b"moov")


@dataclass(frozen=True)
class LiveSegment:
    """One chunk of the stream. video / audio: fMP4 media segments (moof+mdat; b"" when the encoder emitted no packet
    for that track in this chunk); *_start: seconds of the track's first packet on the stream's timeline (where the
    player places the segment); media_end: seconds of video up to the end of this segment (frames so far / fps)."""

    index: int
    frames: int
    video: bytes
    video_start: float
    audio: bytes
    audio_start: float
    media_end: float


class LiveEncoder:
    """H.264 + AAC encoders for one stream, and the fMP4 segments of each chunk (see the module docstring).

    width, height: even; sample_rate: one of AAC_SAMPLE_RATES; channels: 1 or 2. video_mime, audio_mime, init_video
    and init_audio are there once constructed. Not thread-safe: one producer calls encode()/finish()."""

    def __init__(self, width: int, height: int, fps: int = FPS, sample_rate: int = AUDIO_SAMPLE_RATE,
                 channels: int = 1, crf: int = DEFAULT_CRF):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise SizeError(f"live video size {width}x{height}: H.264 (yuv420p) needs positive even sizes; use even "
                            f"sizes (the model produces multiples of 16 or 32)")
        if sample_rate not in AAC_SAMPLE_RATES or channels not in (1, 2):
            raise AudioInputError(f"live audio {sample_rate} Hz x {channels} channels cannot be AAC: use 1 or 2 "
                                  f"channels at one of {', '.join(map(str, AAC_SAMPLE_RATES))} Hz")
        self.width, self.height, self.fps = width, height, Fraction(fps)
        self.sample_rate, self.channels = sample_rate, channels
        # The encoders' streams live in a container that is never written: they are the templates of each
        # chunk's muxer streams (add_stream_from_template) and carry the codec parameters (global headers).
        self._templates = av.open(io.BytesIO(), mode="w", format="mp4")
        self._video = self._templates.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {**X264_OPTIONS, "crf": str(crf)}
        tag_bt709(self._video.codec_context)
        self._reformatter = VideoReformatter()
        self._audio = self._templates.add_stream("aac", rate=sample_rate, layout="mono" if channels == 1 else "stereo")
        for stream in (self._video, self._audio):
            stream.codec_context.flags |= av.codec.context.Flags.global_header
        # Opens both encoders and copies their parameters (extradata: SPS/PPS, AudioSpecificConfig) into the
        # streams, from where each chunk's muxer takes them; nothing is written to this container afterwards.
        self._templates.start_encoding()
        # Closing the container frees the encoders and their threads (x264 and swscale keep a few); without it they
        # would wait for the cyclic garbage collector. Also when the encoder is dropped without close() (at once).
        self._close = weakref.finalize(self, self._templates.close)
        self.video_mime = f'video/mp4; codecs="avc1.{_avc_profile_level(self._video.codec_context.extradata)}"'
        self.audio_mime = AUDIO_MIME
        self.init_video = _split(_mux(self._video, []))[0]
        self.init_audio = _split(_mux(self._audio, []))[0]
        self.frames_written = 0
        self._samples_written = 0
        self._next_index = 0
        self._finished = False

    @property
    def info(self) -> dict:
        """What a channel publishes before the first segment (LiveChannel.open / publish_init take it)."""
        return {"video_mime": self.video_mime, "audio_mime": self.audio_mime, "init_video": self.init_video,
                "init_audio": self.init_audio, "width": self.width, "height": self.height, "fps": int(self.fps)}

    def encode(self, frames: np.ndarray | torch.Tensor, audio: np.ndarray | torch.Tensor) -> LiveSegment:
        """One chunk: frames [n >= 1, H, W, 3] (uint8, or float 0..1; numpy or torch), audio float [t, C] (t may be 0):
        the samples that belong with these frames. Returns its segment (index 0, 1, ...)."""
        self._check_open()
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (self.height, self.width, 3) or not len(frames):
            raise ValueError(f"live frames must be [n >= 1, {self.height}, {self.width}, 3], got {list(frames.shape)}")
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise ValueError(f"live audio must be float [t, {self.channels}], got {list(samples.shape)}")
        video_packets = []
        for i, rgb in enumerate(images_to_uint8(frames)):
            frame = yuv_frame(rgb, self.frames_written, self.fps, self._reformatter)
            if i == 0:
                frame.pict_type = av.video.frame.PictureType.I  # an IDR (forced-idr): a segment starts playback
            video_packets += self._video.encode(frame)
            self.frames_written += 1
        audio_packets = []
        if len(samples):
            audio_packets = self._audio.encode(audio_frame(samples.T, self._samples_written, self.sample_rate))
            self._samples_written += len(samples)
        return self._segment(len(frames), video_packets, audio_packets)

    def finish(self) -> LiveSegment | None:
        """Flush both encoders (x264 holds nothing back here; AAC holds up to two frames): their last packets as a
        segment with frames=0, or None when there are none; then close(). No encode() afterwards."""
        self._check_open()
        self._finished = True
        video_packets, audio_packets = self._video.encode(None), self._audio.encode(None)
        segment = self._segment(0, video_packets, audio_packets) if video_packets or audio_packets else None
        self.close()
        return segment

    def close(self) -> None:
        """Free the encoders (their threads included) now; no encode() or finish() afterwards. Idempotent."""
        self._finished = True
        self._close()  # closes the container once (and drops the finalizer's reference to it)
        # The last references to the codec contexts and the scaler (swscale runs threads of its own too).
        self._templates = self._video = self._audio = self._reformatter = None

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("this live stream is finished: no more chunks can be encoded")

    def _segment(self, frames: int, video_packets: list[av.Packet], audio_packets: list[av.Packet]) -> LiveSegment:
        segment = LiveSegment(
            index=self._next_index, frames=frames,
            video=_split(_mux(self._video, video_packets))[1] if video_packets else b"",
            video_start=_start(video_packets, (self.frames_written - frames) / self.fps),
            audio=_split(_mux(self._audio, audio_packets))[1] if audio_packets else b"",
            audio_start=_start(audio_packets, Fraction(self._samples_written, self.sample_rate)),
            media_end=float(self.frames_written / self.fps))
        self._next_index += 1
        return segment


def _start(packets: list[av.Packet], otherwise: Fraction) -> float:
    """Seconds of the first packet's presentation time (`otherwise` for a track without packets in this chunk)."""
    return float(packets[0].pts * packets[0].time_base) if packets else float(otherwise)


def _mux(template: av.stream.Stream, packets: list[av.Packet]) -> bytes:
    """The packets through a fresh fragmented-MP4 muxer: ftyp + moov + (moof + mdat when there are packets)."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4", options={"movflags": SEGMENT_MOVFLAGS}) as container:
        stream = container.add_stream_from_template(template)
        container.start_encoding()  # writes ftyp+moov even when there is no packet (the init segment alone)
        for packet in packets:
            packet.stream = stream
            container.mux(packet)
    return out.getvalue()


def _split(data: bytes) -> tuple[bytes, bytes]:
    """An fMP4 byte string -> (init segment: its ftyp and moov boxes, media segment: every other top-level box).
    The top-level box walk (32-bit size + type) is all MP4 parsing needed here; no library exposes box bounds."""
    init, media, offset = [], [], 0
    while offset < len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size < 8:  # 0 (to the end) and 1 (64-bit size) are never written by a muxer this small
            raise ValueError(f"unexpected MP4 box size {size} for {kind!r} at byte {offset}")
        (init if kind in INIT_BOXES else media).append(data[offset:offset + size])
        offset += size
    return b"".join(init), b"".join(media)


def _avc_profile_level(extradata: bytes) -> str:
    """'PPCCLL' (profile_idc, constraint flags, level_idc in hex) of the SPS in an H.264 encoder's extradata: avcC
    (bytes 1..3) or Annex B (what libx264 gives with global headers: the three bytes after the SPS NAL header)."""
    if extradata[:1] == b"\x01":
        return extradata[1:4].hex()
    start = extradata.find(b"\x00\x00\x01")
    while start >= 0:
        nal = start + 3
        if extradata[nal] & 0x1F == 7:  # sequence parameter set
            return extradata[nal + 1:nal + 4].hex()
        start = extradata.find(b"\x00\x00\x01", nal)
    raise ValueError("the H.264 encoder's extradata holds no SPS")
