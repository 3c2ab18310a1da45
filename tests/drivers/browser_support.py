"""What the Playwright drivers share (tests/drivers/frontend_video_player.py, tests/drivers/frontend_live_player.py and
tests/drivers/serve_page_browser.py). They run as scripts in whichever Python has playwright (the ComfyUI host's venv or the
project's), so this sibling module uses the standard library only."""

from __future__ import annotations

import sys

# ComfyUI's page offline: its registry look-ups are blocked by the page policy, and the loads then fail.
COMFYUI_OFFLINE_NOISE = ("Content Security Policy", "Failed to load resource")


def sync_playwright():
    """playwright's sync_playwright, or None (after saying why on stderr) where this Python lacks playwright."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        print("error: playwright is not installed in this Python", file=sys.stderr)
        return None
    return start


def record_console(page, console: list, name: str = "") -> None:
    """Append the page's console messages and uncaught errors (with their stack) to `console` as (type, text),
    prefixed with `name` when several pages share the list."""
    prefix = f"{name}: " if name else ""
    page.on("console", lambda m: console.append((m.type, prefix + m.text)))
    page.on("pageerror", lambda e: console.append(("pageerror", f"{prefix}{e} | {(e.stack or '')[:600]}")))


def comfyui_frontend_internal(text: str) -> bool:
    """An error raised inside the 0.33 frontend's own PrimeVue overlay code (BlockUI.removeMask during an unblock: a
    race of its loading mask with a dialog or the harness's Escape key), seen now and then on a page load whatever
    the workflow; an error whose text passes through this pack's code is never one."""
    return "removeMask" in text and "vendor-primevue" in text and "flashhead" not in text.lower()


def page_errors(console: list, ignore: tuple[str, ...] = (), comfyui: bool = False) -> list[str]:
    """The errors among `console` entries, as "type: text", except those containing one of `ignore` and, on a
    ComfyUI page (comfyui=True), the frontend-internal race above."""
    return [f"{kind}: {text}" for kind, text in console
            if kind in ("error", "pageerror") and not any(noise in text for noise in ignore)
            and not (comfyui and comfyui_frontend_internal(text))]
