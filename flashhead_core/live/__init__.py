"""Live streaming: the talking video as a browser plays it while it is generated (Media Source Extensions).

    fragments.py  LiveEncoder: per chunk, an fMP4 media segment of H.264 and one of AAC (LiveSegment), on one timeline
    channel.py    LiveChannel (a stream's init + latest segments, thread-safe, awaitable), LiveRegistry (by id)
    sink.py       LiveSink: the tee of a VideoWriter (write_talking_video(..., live=LiveSink(channel)))
    http.py       add_stream_routes: the stream protocol (aiohttp), shared by ComfyUI's routes and `flashhead serve`
    client.py     StreamClient: the protocol's Python reader (benchmarks, tests)
    static/       player.js, the browser side (LivePlayer: two SourceBuffers, joins at the live edge)

The stream library: ComfyUI's routes and `flashhead serve` (flashhead_core/serve/) use it; it imports neither.
This package's names are its public API (ComfyUI's routes import them). No ComfyUI import here; aiohttp only in
http.py (client.py takes any aiohttp-style session).
"""

from .channel import LiveChannel, LiveRegistry
from .fragments import LiveEncoder, LiveSegment
from .http import NO_STORE, PLAYER_JS, add_stream_routes, blob_media_policy
from .sink import LiveSink

__all__ = ["NO_STORE", "PLAYER_JS", "LiveChannel", "LiveEncoder", "LiveRegistry", "LiveSegment", "LiveSink",
           "add_stream_routes", "blob_media_policy"]
