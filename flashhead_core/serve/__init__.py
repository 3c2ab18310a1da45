"""`flashhead serve`: the live talking-head app over HTTP (uses the stream library in `live/`, never the reverse).

    server.py        create_app/run: the aiohttp app, its routes, the session registry and handlers
    live_session.py  LiveSession: one stream fed with speech as it is spoken (push mode of the chunk run)
    scheduler.py     GenerationWorker: the one thread that runs the model for every live session
    uploads.py       what the app accepts as portrait and speech uploads
    static/          the page (index.html, page.js, page.css); the player comes from live/static/

Nothing is imported here: `flashhead_core.live` must not load aiohttp's app or the model side.
"""
