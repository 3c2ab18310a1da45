"""Live playback inside ComfyUI: FlashHead Talking Video streams the video it is writing to the browser while it runs
(flashhead_core/live), through routes on ComfyUI's own server. web/flashhead.js shows the player in the node.

Routes (registered at import on PromptServer.instance.routes; ComfyUI serves each as /x and /api/x):
    GET /flashhead/live?workflow=<id>   the running streams of that workflow [{id, node, display_node, prompt_id,
                                        workflow}]: a tab opened mid-run joins the one of its own workflow (no
                                        workflow named: 400; nothing of other workflows is listed)
    GET /flashhead/live/{id}/...        the stream protocol (flashhead_core/live/http.py), for channels this server
                                        created for its own prompts only: any other id is 404
    GET /flashhead/player.js            flashhead_core/live/static/player.js (the one copy of the player)

A page policy that allows media only from 'self' (ComfyUI 0.33 with --disable-api-nodes) gets "media-src 'self'
blob:" added (`allow_blob_media`): the player's MediaSource needs it, nothing else changes.

Each Talking Video execution gets its own channel (`live_stream`); the prompt's client is told with the websocket
event `flashhead.live` {node, display_node, prompt_id, stream}. The channel ends when the execution does, with the
error on a cancel or a failure, so the player ends cleanly.

The list answers only for the workflow a tab asks about, since that is all a tab needs; it is no access control.
ComfyUI has no users: whoever reaches it can read GET /queue (the running prompts, with their workflow and its id)
and /history, so stream ids are as private as this ComfyUI and not more (docs/live.md says so).

This is the only module that imports ComfyUI's `server`, and only once ComfyUI's main.py has loaded it (it creates
PromptServer.instance before importing custom nodes): importing server.py anywhere else would start initialising
ComfyUI. Outside a running ComfyUI (plain Python, node unit tests) nothing is registered and runs stream nowhere.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from aiohttp import web

from ..flashhead_core import stop_reason
from ..flashhead_core.live import NO_STORE, PLAYER_JS, LiveRegistry, LiveSink, add_stream_routes, blob_media_policy
from . import _host

log = logging.getLogger(__name__)
PREFIX = "/flashhead/live"
PLAYER_ROUTE = "/flashhead/player.js"
EVENT = "flashhead.live"
# A channel keeps its last 32 segments (~30 s of Lite video: a viewer behind the live edge catches up); ended ones
# stay a minute (a player still playing the tail), at most 4 of them: memory stays flat over many prompts.
REGISTRY = LiveRegistry(keep=32, grace=60.0, max_ended=4)


def prompt_server():
    """ComfyUI's PromptServer.instance, or None outside a running ComfyUI server."""
    if "server" not in sys.modules:
        return None
    from server import PromptServer

    return getattr(PromptServer, "instance", None)


def running_streams(workflow: str) -> list[dict]:
    """The streams of `workflow` (its id) still being generated, oldest first: what GET /flashhead/live answers."""
    return [{"id": info["id"], **{k: info["meta"].get(k) for k in ("node", "display_node", "prompt_id", "workflow")}}
            for info in REGISTRY.list() if not info["ended"] and info["meta"].get("workflow") == workflow]


def register_routes(routes: web.RouteTableDef) -> None:
    @routes.get(PREFIX)
    async def list_streams(request: web.Request) -> web.Response:
        workflow = request.query.get("workflow", "")
        if not workflow:
            raise web.HTTPBadRequest(text="name the workflow whose running streams you want: ?workflow=<its id>",
                                     headers=NO_STORE)
        return web.json_response(running_streams(workflow), headers=NO_STORE)

    @routes.get(PLAYER_ROUTE)
    async def player(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PLAYER_JS, headers={"Content-Type": "text/javascript", "Cache-Control": "no-cache"})

    add_stream_routes(routes, PREFIX, REGISTRY)  # REGISTRY holds only this server's own channels: no other check


def allow_blob_media(app: web.Application) -> None:
    """ComfyUI 0.33 started with --disable-api-nodes serves its page with a Content-Security-Policy of
    "default-src 'self'", under which no MediaSource can reach a <video>: add "media-src 'self' blob:" to it
    (blob_media_policy; nothing from another origin is allowed by that). Outermost middleware, added before the
    server starts (ComfyUI imports custom nodes first)."""
    try:
        app.middlewares.insert(0, blob_media_policy)
    except RuntimeError as e:  # the app already started (frozen): the live player may be refused by that policy
        log.warning("FlashHead live player: could not add media-src blob: to ComfyUI's page policy: %s", e)


_server = prompt_server()
if _server is not None:
    register_routes(_server.routes)
    allow_blob_media(_server.app)


@contextmanager
def live_stream(hidden):
    """A LiveSink for one Talking Video execution (None outside a running ComfyUI), its channel announced to the
    client that queued the prompt. hidden: the node's hidden inputs (unique_id, extra_pnginfo; None when the node is
    called directly). The channel is finished on exit, with the error when the block raises."""
    server = prompt_server()
    if server is None:
        yield None
        return
    node = str(getattr(hidden, "unique_id", None) or server.last_node_id)
    workflow = (getattr(hidden, "extra_pnginfo", None) or {}).get("workflow") or {}
    meta = {"node": node, "display_node": str(server.last_node_id or node),
            "prompt_id": getattr(server, "last_prompt_id", None),
            "workflow": workflow.get("id") if isinstance(workflow, dict) else None}
    channel = REGISTRY.create(**meta)
    sink = NodeSink(channel)
    if server.client_id is not None:  # as ComfyUI's own execution events: to the prompt's client only
        server.send_sync(EVENT, {**{k: meta[k] for k in ("node", "display_node", "prompt_id")}, "stream": channel.id},
                         server.client_id)
    try:
        yield sink
    except BaseException as e:
        sink.close(error=stop_reason(e))
        raise
    finally:
        sink.close()


class NodeSink(LiveSink):
    """The node's LiveSink. The MP4 writer ends it with `stop_reason` of what stopped the writing; ComfyUI's interrupt
    raised from one of its own checks (a progress update, a model load) has no text and no cancel behind it, so that
    reason would be its class name: it is told as the cancel it is."""

    def close(self, error: str | None = None) -> None:
        if error == _host.INTERRUPT_NAME:
            error = f"generation cancelled at chunk {self.channel.info()['next']}"
        super().close(error)

