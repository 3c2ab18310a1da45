"""`flashhead serve`: the live talking-head app over HTTP (uses the stream library in `live/`, never the reverse).

    server.py        create_app/run: the aiohttp app, its routes, the session registry and handlers
    security.py      who may ask: loopback binding, Host and Origin checks, the token (environment or file)
    forms.py         request bodies and forms within limits and a read deadline
    webrtc.py        the WebRTC sink (frames with their audio on one 25 Hz clock) and its signalling routes
    live_session.py  LiveSession: one stream fed with speech as it is spoken (push mode of the chunk run)
    scheduler.py     GenerationWorker: the one thread that runs the model for every live session, batched
    uploads.py       what the app accepts as portrait and speech uploads
    static/          the page (index.html, page.js, page.css); the player comes from live/static/

The names below are the app's public API (the `flashhead serve` command uses them). The stream library
(`flashhead_core.live`) never imports this package.
"""

from .security import TOKEN_ENV, check_binding, read_token
from .server import DEFAULT_PORT, SCHEDULING, ServeOptions, create_app, run

__all__ = ["DEFAULT_PORT", "SCHEDULING", "TOKEN_ENV", "ServeOptions", "check_binding", "create_app", "read_token", "run"]
