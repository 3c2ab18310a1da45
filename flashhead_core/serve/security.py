"""Who may use a `flashhead serve` server, and what an answer may reveal: the checks and middlewares of the app.

    check_binding(host, token, public_origin)          # before serving: beyond loopback only with a token
    token = read_token(environ, token_file)            # FLASHHEAD_TOKEN or a file: never on the command line (ps)
    origin = check_public_origin("https://avatar.example.com")   # the origin the page has behind a TLS proxy
    app = web.Application(middlewares=[errors_middleware, security_middleware(token, origin)])

Bound to loopback (the default) and without a token, a request must name a loopback Host (a DNS-rebinding page names
its own). With a token, every request carries it (`Authorization: Bearer` in any case, `?token=`, or the HttpOnly
cookie the page's URL sets), compared in constant time. A request with an Origin other than this server's own (as
its Host names it, or the public origin behind a proxy) is refused. Malformed values (bytes that are not UTF-8, a
Host or Origin that is not a URL) are refusals like any other, never an error inside the server; the errors
middleware turns FlashHeadError into a JSON {"error"} with its status and anything unexpected into a 500 without
details (logged), and adds the security headers to every answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import FlashHeadError, InputError, RequestTimeout, ServerBusy, SpeechBacklogError, UploadTooLarge

MIN_TOKEN_LENGTH = 12
TOKEN_ENV = "FLASHHEAD_TOKEN"
TOKEN_COOKIE = "flashhead_token"
NO_STORE = {"Cache-Control": "no-store"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY"}
STATUS_CODES = ((UploadTooLarge, 413), (RequestTimeout, 408), (ServerBusy, 503), (SpeechBacklogError, 429))
MAKE_TOKEN = "python -c \"import secrets; print(secrets.token_urlsafe(24))\""

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, public_origin: str | None = None) -> None:
    """Refuse to serve beyond loopback (or behind a proxy that makes it public) without a token, or with one too
    short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InputError(f"the token must be at least {MIN_TOKEN_LENGTH} characters, got {len(token)}: generate one "
                         f"with  {MAKE_TOKEN}")
    if token is None and (public_origin is not None or not is_loopback(host)):
        reach = f"--public-origin {public_origin}" if public_origin is not None else f"binding to {host}"
        raise InputError(f"{reach} makes the server reachable from other machines, so it needs a token: start it "
                         f"as  {TOKEN_ENV}=$({MAKE_TOKEN}) flashhead serve ...  (or --token-file FILE) and open the "
                         f"URL it prints, or bind to 127.0.0.1 (the default)")


def read_token(environ, token_file: str | None) -> str | None:
    """The token from --token-file (its first line) or the FLASHHEAD_TOKEN variable of `environ`, None when neither
    is given; InputError for both, an unreadable or empty file. Never from the command line: every local user can
    read a process's arguments (ps), not its environment or a private file."""
    from_env = environ.get(TOKEN_ENV) or None
    if token_file is None:
        return from_env
    if from_env is not None:
        raise InputError(f"the token is given twice ({TOKEN_ENV} and --token-file): give one")
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the token file {token_file}: {getattr(e, 'strerror', None) or e}; write "
                         f"the token into it  ({MAKE_TOKEN} > {token_file}; chmod 600 {token_file})") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise InputError(f"the token file {token_file} is empty: write the token on its first line")
    return token


def check_public_origin(origin: str | None) -> str | None:
    """--public-origin: scheme://host[:port] of the page as the browser sees it behind a proxy -> its normal form
    (lower case, no default port, no path), or InputError."""
    if origin is None:
        return None
    normal = _normal_origin(origin)
    if normal is None:
        raise InputError(f"--public-origin must be the page's origin as the browser shows it, scheme://host[:port] "
                         f"(e.g. https://avatar.example.com), got {origin!r}")
    return normal


def _normal_origin(origin: str) -> str | None:
    """'HTTPS://Host.Example:443/' -> 'https://host.example'; None for anything that is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _host_name(host: str) -> str:
    """The host name of a Host header ('' when it is malformed)."""
    try:
        return urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""


def _same_origin(origin: str, host: str, public_origin: str | None) -> bool:
    """An Origin header names this server: its host and port are the request's Host, or it is the public origin."""
    if public_origin is not None and _normal_origin(origin) == public_origin:
        return True
    try:
        return urlsplit(origin).netloc.lower() == host.lower() != ""
    except ValueError:
        return False


def given_token(request: web.Request) -> str | None:
    """The token a request carries: `Authorization: Bearer <t>` (the scheme in any case), ?token=, or the cookie."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE)


def _token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of UTF-8 bytes (a header's bytes that are not UTF-8 compare as what they are)."""
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def refusal(kind: type[web.HTTPException], message: str, **headers) -> web.HTTPException:
    """An aiohttp HTTP error with a JSON {"error": message} body, not cached."""
    return kind(text=json.dumps({"error": message}), content_type="application/json", headers={**NO_STORE, **headers})


def security_middleware(token: str | None, public_origin: str | None = None):
    """The Origin, Host and token checks of every request (see the module docstring); sets the token cookie when
    the page is opened with ?token=."""
    secure = public_origin is not None and public_origin.startswith("https://")

    @web.middleware
    async def middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request.host, public_origin):
            raise refusal(web.HTTPForbidden, f"requests from {origin[:80]!r} are refused: use the page this server "
                                             f"serves (behind a proxy, start it with --public-origin)")
        if token is None:
            if not is_loopback(_host_name(request.host)):
                raise refusal(web.HTTPForbidden, f"this server answers only to localhost, not {request.host[:80]!r}: "
                                                 f"open http://127.0.0.1:<port>/ (or start it with a token)")
        elif not _token_matches(given_token(request), token):
            raise refusal(web.HTTPUnauthorized, "missing or wrong token: open the URL `flashhead serve` printed (it "
                                                "ends in ?token=...), or send the header Authorization: Bearer <token>")
        response = await handler(request)
        if token is not None and request.query.get("token") and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=secure)
        return response

    return middleware


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """FlashHeadError -> JSON {"error"} with its status (400, 408, 413, 429, 503); anything unexpected -> 500 with a
    one-line JSON error (the traceback goes to the log, not to the client); security headers on every answer."""
    try:
        response = await handler(request)
    except FlashHeadError as e:
        response = web.json_response({"error": str(e)}, status=_error_status(e), headers=NO_STORE)
    except web.HTTPException as e:
        e.headers.update(SECURITY_HEADERS)
        raise
    except ConnectionError:  # the client went away: nobody to answer
        raise
    except Exception:
        log.exception("flashhead serve: %s %s failed", request.method, request.path)
        response = web.json_response({"error": "the server failed on this request (a bug; its log has the details)"},
                                     status=500, headers=NO_STORE)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


def _error_status(error: FlashHeadError) -> int:
    return next((status for kind, status in STATUS_CODES if isinstance(error, kind)), 400)
