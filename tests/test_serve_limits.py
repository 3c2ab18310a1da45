"""`flashhead serve` under attack and overload (issue 24): every request it refuses is refused early, with a 4xx and
one line saying why; no request costs more memory or time than its limits allow, none holds a session slot while it
stalls, and nothing a session used outlives it. One test per defect found by the adversarial pass at 307bdfc."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import math
import os
import struct
import threading
import time

import av
import numpy as np
import pytest
from aiohttp import FormData, WSMsgType
from PIL import Image
from support import SIZE
from test_serve import assets, create, pipeline, read_stream, serve, session_form  # noqa: F401 (fixtures)

from flashhead_core.audio import decode
from flashhead_core.errors import InputError, UploadTooLarge
from flashhead_core.live.fragments import LiveEncoder
from flashhead_core.serve.live_session import LiveSession
from flashhead_core.serve.server import ServeOptions
from flashhead_core.serve.uploads import read_speech
from flashhead_core.tools import cli

TOKEN = "a-token-of-enough-length"


# --- measuring ------------------------------------------------------------------------------------------------------

def _status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024


def rss_mark() -> float:
    """The resident memory now (MB), from where `peak_above` measures: the kernel's peak is reset to it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:  # resets VmHWM to the current RSS (Linux >= 4.0)
        refs.write("5")
    return _status_mb("VmRSS:")


def peak_above(mark: float) -> float:
    """MB by which the resident memory peaked above `mark` since it was taken."""
    return _status_mb("VmHWM:") - mark


def native_threads() -> int:
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def settled_threads() -> int:
    """native_threads() once it holds still (threads of earlier tests may still be ending)."""
    previous = native_threads()
    while True:
        time.sleep(0.1)
        if (current := native_threads()) == previous:
            return current
        previous = current


# --- files made to cost the most ----------------------------------------------------------------------------------

def flac_silence(seconds: float, channels: int = 8, rate: int = 192000) -> bytes:
    """Silence as FLAC: a few KB per minute whatever the channel count and rate."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout=f"{channels}c" if channels > 2 else "stereo")
        frame = 1 << 16
        zeros = np.zeros((1, frame * channels), np.int16)  # packed: PyAV's planar frames break at 8 channels
        for start in range(0, round(seconds * rate), frame):
            piece = av.AudioFrame.from_ndarray(zeros, format="s16", layout=stream.layout.name)
            piece.sample_rate, piece.pts = rate, start
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def wav_at(rate: int, data_bytes: int) -> bytes:
    """A 16-bit mono WAV at `rate` Hz holding `data_bytes` of silence."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)  # PCM, mono, 16-bit
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data_bytes)
            + bytes(data_bytes))


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(out, "PNG")
    return out.getvalue()


def form_of(*parts: tuple[str, bytes, str | None]) -> FormData:
    form = FormData()
    for name, data, filename in parts:
        if filename is None:
            form.add_field(name, data.decode())
        else:
            form.add_field(name, data, filename=filename, content_type="application/octet-stream")
    return form


async def next_error(socket) -> dict:
    """The next {"type": "error"} message of an audio socket (status messages skipped)."""
    async for message in socket:
        if message.type == WSMsgType.TEXT and (body := json.loads(message.data))["type"] == "error":
            return body
    raise AssertionError("the socket closed without an error message")


async def raw(client, request: bytes) -> tuple[int, bytes]:
    """Send `request` bytes as they are; (status, body) of the answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(path: str, body: bytes, content_type: str, host: str = "127.0.0.1", extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n").encode() + extra + b"\r\n" + body


# --- 1, 2: speech uploads -------------------------------------------------------------------------------------------

def test_a_speech_upload_costs_memory_by_its_16k_mono_length_not_its_rate_or_channels():
    data = flac_silence(60)  # 60 s, 8 channels at 192 kHz: 31 KB (at 307bdfc: +818 MB of RSS)
    assert len(data) < 64 * 1024
    mark = rss_mark()
    samples = read_speech(data, "silence.flac", max_seconds=600)
    peak = peak_above(mark)
    assert len(samples) == pytest.approx(60 * 16000, abs=2 * 16000) and not samples.any()
    print(f"60 s of 8-channel 192 kHz FLAC ({len(data)} bytes): RSS peak +{peak:.0f} MB")
    assert peak < 64  # the 16 kHz result is 3.8 MB; one decoded piece 1 MB


def test_a_speech_header_that_declares_too_much_is_refused_before_decoding(monkeypatch):
    slow = wav_at(1, 2 * 2**20)  # 2 MB of 16-bit samples at 1 Hz: 12 days (307bdfc: 37 s of CPU, then its 413)
    resampled = []  # the pieces that reached the resampler (at 1 Hz each is upsampled 16000x: the 37 s)
    to_16k = decode.mono_16k_pieces
    monkeypatch.setattr(decode, "mono_16k_pieces",
                        lambda pieces, rate: to_16k((resampled.append(len(p)) or p for p in pieces), rate))
    with pytest.raises(UploadTooLarge, match=r"speech 'slow.wav' lasts 1048576 s \(its header says so\), more than "
                                             r"600 s, the longest this server takes in one file"):
        read_speech(slow, "slow.wav", max_seconds=600)
    # A header that declares no length, or too little (FFmpeg estimates most): refused at the first decoded piece
    # that passes the limit, before it is resampled (16000x at 1 Hz).
    monkeypatch.setattr(decode, "_declared_seconds", lambda container, stream: None)
    with pytest.raises(UploadTooLarge, match="speech 'slow.wav' lasts more than 600 s"):
        read_speech(slow, "slow.wav", max_seconds=600)
    assert resampled == []  # both refused before a single piece was resampled


# --- 3: portraits ---------------------------------------------------------------------------------------------------

def test_portraits_are_refused_above_the_pixel_limit_and_decoded_one_at_a_time(pipeline, assets):
    big = png(4096, 4096)  # 16.8 MP, the most a portrait may have: its decode takes 50 MB
    too_big = png(7000, 7000)  # 49 MP (307bdfc took it: +760 MB for such a file)

    async def scenario(client, server):
        refused = await client.post("/api/sessions", data=form_of(("portrait", too_big, "huge.png")))
        mark = rss_mark()
        answer = await client.post("/api/sessions", data=form_of(*[("portrait", big, f"big{i}.png") for i in range(8)]))
        peak, created = peak_above(mark), await answer.json()
        await client.delete(f"/api/sessions/{created['session']}")
        gc.collect()
        return refused.status, (await refused.json())["error"], created, peak, _status_mb("VmRSS:") - mark

    status, error, created, peak, kept = serve(pipeline, scenario, max_upload_bytes=2**20)
    assert status == 413 and "7000x7000 pixels, more than the 16.8 MP this server decodes" in error
    assert len(created["identities"]) == 8
    print(f"eight 16.8 MP portraits in one form: RSS peak +{peak:.0f} MB, {kept:+.0f} MB once deleted")
    assert peak < 400 and kept < 100  # one decode at a time (eight at once: 8 x 50 MB held, then converted)


# --- 4, 5: requests that stall, forms that grow ---------------------------------------------------------------------

def test_a_stalled_upload_holds_no_slot_and_is_cut_at_the_read_deadline(pipeline, assets):
    async def scenario(client, server):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        boundary = "x" * 16
        writer.write(post("/api/sessions", b"", f"multipart/form-data; boundary={boundary}")
                     .replace(b"Content-Length: 0", b"Content-Length: 100000") + f"--{boundary}\r\n".encode())
        await writer.drain()  # ... and nothing more: the body stalls
        other = await create(client, assets["face"])  # the only slot is free for a complete request
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return other, answer

    other, answer = serve(pipeline, scenario, max_sessions=1, read_timeout=1.0)
    assert other["session"]
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer


def test_a_form_takes_each_field_once_and_no_more_bytes_than_its_limit(pipeline, assets):
    face = assets["face"].read_bytes()

    async def scenario(client, server):
        seeds = [("portrait", face, "face.png")] + [("seed", b"1", None)] * 5000  # 307bdfc: 201 after 33 s
        repeated = await client.post("/api/sessions", data=form_of(*seeds))
        long_field = await client.post("/api/sessions", data=form_of(("portrait", face, "face.png"),
                                                                     ("seed", b"1" * 100, None)))
        body = b"\0" * (3 * 2**20)
        declared = await raw(client, post("/api/sessions", body, "multipart/form-data; boundary=b"))
        two_audio = await client.post("/api/sessions", data=form_of(
            ("portrait", face, "face.png"), ("audio", b"a", "a.wav"), ("audio", b"b", "b.wav")))
        return [(a.status, (await a.json())["error"]) for a in (repeated, long_field, two_audio)], declared

    (repeated, long_field, two_audio), declared = serve(pipeline, scenario, max_upload_bytes=2**20)
    assert repeated == (400, "the field 'seed' is given twice: send it once")
    assert long_field == (413, "the field 'seed' is longer than 64 bytes: it takes a number")
    assert two_audio == (400, "the field 'audio' takes one file")
    assert declared[0] == 413 and b"larger than this server's 2 MB limit" in declared[1]


# --- 6: silent sockets ----------------------------------------------------------------------------------------------

def test_an_audio_socket_that_sends_nothing_does_not_keep_its_session(pipeline, assets):
    async def scenario(client, server):
        created = await create(client, assets["face"])
        socket = await client.ws_connect(f"/api/sessions/{created['session']}/audio")
        messages = []
        async with asyncio.timeout(30):  # the reaper looks every idle_timeout / 4
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    messages.append(json.loads(message.data))
        status = await client.get(f"/api/sessions/{created['session']}/status")
        return messages[-1], socket.closed, status.status, len(server.sessions)

    last, closed, status, sessions = serve(pipeline, scenario, idle_timeout=0.5)
    assert last == {"type": "error", "error": "this session was closed after 0.5 s without speech or requests: "
                                              "create a new one"}
    assert closed and status == 404 and sessions == 0


# --- 7: malformed input ---------------------------------------------------------------------------------------------

MALFORMED_FORMS = {
    "NUL in a part header": (b'--b\r\nContent-Disposition: form-data; name="seed\0"\r\n\r\n1\r\n--b--\r\n',
                             "multipart/form-data; boundary=b"),
    "nested multipart": (b'--outer\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n--inner\r\n'
                         b'Content-Disposition: form-data; name="portrait"; filename="a.png"\r\n\r\nx\r\n'
                         b'--inner--\r\n--outer--\r\n', "multipart/form-data; boundary=outer"),
    "no boundary": (b"--b\r\n\r\n", "multipart/form-data"),
    "no closing boundary": (b'--b\r\nContent-Disposition: form-data; name="seed"\r\n\r\n1\r\n',
                            "multipart/form-data; boundary=b"),
}


def test_malformed_requests_are_refused_with_a_4xx_and_one_line(pipeline, assets):
    async def scenario(client, server):
        answers = {}
        for name, (body, content_type) in MALFORMED_FORMS.items():
            answers[name] = await raw(client, post("/api/sessions", body, content_type))
        answers["malformed Host"] = await raw(client, b"GET / HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n")
        answers["malformed Origin"] = await raw(client, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://[::1\r\n"
                                                        b"Connection: close\r\n\r\n")
        session = await (await client.post("/api/sessions", data=session_form(assets["face"]))).json()
        stream = session["stream"]
        answers["12-digit segment"] = await raw(client, f"GET {stream}/segments/999999999999/video HTTP/1.1\r\n"
                                                        f"Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answers["deep JSON identity"] = await raw(client, post(f"/api/sessions/{session['session']}/identity",
                                                               b"[" * 1000, "application/json"))
        async with client.ws_connect(f"/api/sessions/{session['session']}/audio") as socket:
            await socket.send_str("[" * 100_000 + "]" * 100_000)
            message = await next_error(socket)
        return answers, message

    answers, message = serve(pipeline, scenario)
    for name, (status, body) in answers.items():
        assert 400 <= status < 500, (name, status, body)
        assert b"Traceback" not in body and body.count(b"\n") <= 1, (name, body)
    assert "not JSON (or nests too deep)" in message["error"]


def test_a_token_made_of_bytes_that_are_not_utf8_is_refused_not_an_error(pipeline):
    async def scenario(client, server):
        return await raw(client, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\xc3\r\n"
                                 b"Connection: close\r\n\r\n")

    status, body = serve(pipeline, scenario, token=TOKEN)
    assert status == 401 and b"missing or wrong token" in body


# --- 8: work off the event loop -------------------------------------------------------------------------------------

def test_pcm_is_converted_and_resampled_off_the_event_loop(pipeline, assets, monkeypatch):
    threads = []
    feed = LiveSession.feed_pcm16
    monkeypatch.setattr(LiveSession, "feed_pcm16", lambda self, data, rate=16000: (
        threads.append(threading.current_thread()), feed(self, data, rate))[1])
    pcm = assets["pcm"].tobytes()

    async def scenario(client, server):
        loop_thread = threading.current_thread()
        created = await create(client, assets["face"])
        answer = await client.post(f"/api/sessions/{created['session']}/audio?rate=24000", data=pcm)
        async with client.ws_connect(f"/api/sessions/{created['session']}/audio?rate=24000") as socket:
            await socket.send_bytes(pcm)
            await socket.send_json({"flush": True})
            await socket.receive()
        return answer.status, loop_thread

    status, loop_thread = serve(pipeline, scenario)
    assert status == 200 and len(threads) == 2 and loop_thread not in threads


# --- 9: encoders ----------------------------------------------------------------------------------------------------

def test_an_ended_or_dropped_encoder_frees_its_threads_without_the_garbage_collector():
    frames, audio = np.zeros((24, 64, 64, 3), np.uint8), np.zeros((15360, 1), np.float32)
    gc.disable()
    try:
        for end in (LiveEncoder.finish, LiveEncoder.close, None):  # ended, stopped early, just dropped
            before = settled_threads()
            encoder = LiveEncoder(64, 64)
            encoder.encode(frames, audio)
            assert native_threads() > before  # x264's threads
            if end is not None:
                end(encoder)
                assert native_threads() == before
            del encoder
            assert native_threads() == before
    finally:
        gc.enable()


def test_ended_and_deleted_sessions_leave_no_encoder_threads(pipeline, assets):
    async def scenario(client, server):
        warm = await create(client, assets["face"], audio=assets["wav"])  # the worker and pools start
        await read_stream(client, warm["stream"])
        await client.delete(f"/api/sessions/{warm['session']}")
        gc.collect()
        gc.disable()
        try:
            before = settled_threads()
            ended = await create(client, assets["face"], audio=assets["wav"])
            await read_stream(client, ended["stream"])  # the stream ends: its encoders are closed
            after_end = native_threads()
            await client.delete(f"/api/sessions/{ended['session']}")
            dropped = await create(client, assets["face"])
            await client.post(f"/api/sessions/{dropped['session']}/audio", data=assets["pcm"].tobytes()[:40000])
            await asyncio.sleep(0.5)
            await client.delete(f"/api/sessions/{dropped['session']}")  # deleted mid-stream
            return before, after_end, native_threads()
        finally:
            gc.enable()

    before, after_end, after_delete = serve(pipeline, scenario)
    assert after_end == before and after_delete == before


# --- 10: values checked by type -------------------------------------------------------------------------------------

def test_control_values_numbers_and_the_bearer_scheme_are_checked_by_type(pipeline, assets):
    async def scenario(client, server):
        bearer = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive (RFC 7235)
        created = await (await client.post("/api/sessions", data=session_form(assets["face"]), headers=bearer)).json()
        sid = created["session"]
        async with client.ws_connect(f"/api/sessions/{sid}/audio", headers=bearer) as socket:
            await socket.send_str('{"end": "false"}')
            refused = await next_error(socket)  # and the socket stays open
            status = await (await client.get(f"/api/sessions/{sid}/status", headers=bearer)).json()
        answers = {}
        for name, (path, body) in {
                "rate 16_000": (f"/api/sessions/{sid}/audio?rate=16_000", b"\0\0"),
                "rate in Arabic digits": (f"/api/sessions/{sid}/audio?rate=١٦٠٠٠", b"\0\0"),
                "end=true": (f"/api/sessions/{sid}/audio?end=true", b"\0\0"),
                "identity too large": (f"/api/sessions/{sid}/identity", b"{" + b" " * 2000 + b"}"),
                "identity not a string": (f"/api/sessions/{sid}/identity", b'{"name": 1}')}.items():
            answer = await client.post(path, data=body, headers=bearer)
            answers[name] = (answer.status, (await answer.json())["error"])
        seed = await client.post("/api/sessions", data=session_form(assets["face"], seed="1_0"), headers=bearer)
        answers["seed 1_0"] = (seed.status, (await seed.json())["error"])
        return refused, status, answers

    refused, status, answers = serve(pipeline, scenario, token=TOKEN)
    assert refused == {"type": "error", "error": '"end" takes true or false (a JSON boolean), got "false"'}
    assert not status["speech_ended"]
    assert answers["rate 16_000"] == (400, "rate must be a whole number in ASCII digits, got '16_000'")
    assert answers["rate in Arabic digits"][0] == 400 and "ASCII digits" in answers["rate in Arabic digits"][1]
    assert answers["end=true"] == (400, "end must be 1 or 0, got 'true'")
    assert answers["identity too large"][0] == 413 and "audio" not in answers["identity too large"][1]
    assert answers["identity not a string"][0] == 400 and "naming one of the session's" in answers[
        "identity not a string"][1]
    assert answers["seed 1_0"] == (400, "seed must be a whole number in ASCII digits, got '1_0'")


@pytest.mark.parametrize("option, value", [("idle_timeout", 0), ("idle_timeout", math.nan), ("max_sessions", 0),
                                           ("max_upload_bytes", -2**20), ("read_timeout", math.inf)])
def test_server_options_out_of_range_are_refused(option, value):
    with pytest.raises(InputError, match=option):
        ServeOptions(**{option: value})


# --- 11: the token, never on the command line -----------------------------------------------------------------------

@pytest.fixture
def started(monkeypatch):
    """cli's serve with the model and the server replaced: the ServeOptions it would run with (or nothing)."""
    runs = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *args, **kwargs: None)
    monkeypatch.setattr(cli, "serve", lambda pipeline, options, host, port: runs.append(options))
    monkeypatch.delenv("FLASHHEAD_TOKEN", raising=False)
    return runs


def test_the_token_comes_from_the_environment_or_a_file_never_the_command_line(started, monkeypatch, tmp_path,
                                                                               capsys):
    wide = ["serve", "--checkpoint", str(tmp_path), "--host", "0.0.0.0"]
    assert cli.main(wide + ["--token", TOKEN]) == 1 and not started
    assert "a token on the command line can be read by every user of this machine (ps)" in capsys.readouterr().err
    monkeypatch.setenv("FLASHHEAD_TOKEN", TOKEN)
    assert cli.main(wide) == 0 and started[-1].token == TOKEN
    monkeypatch.delenv("FLASHHEAD_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert cli.main(wide + ["--token-file", str(token_file)]) == 0 and started[-1].token == TOKEN
    assert cli.main(wide + ["--token-file", str(tmp_path / "missing")]) == 1
    assert "cannot read the token file" in capsys.readouterr().err
    for bad in (["--idle-timeout", "nan"], ["--max-sessions", "0"], ["--max-upload-mb", "-1"]):
        assert cli.main(["serve", "--checkpoint", str(tmp_path)] + bad) == 1
        assert "must be" in capsys.readouterr().err
    assert len(started) == 2


# --- 12: behind a TLS proxy -----------------------------------------------------------------------------------------

def test_behind_a_tls_proxy_the_public_origin_is_this_server_s_own(pipeline, assets):
    public = "https://avatar.example.com"
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario(client, server):
        # What a proxy forwards: the browser's Origin, the Host of the proxy's upstream (nginx's default) or the
        # public one (proxy_set_header Host $host).
        answers = {}
        for name, headers in {"upstream Host": {"Origin": public, "Host": f"127.0.0.1:{client.port}"},
                              "public Host": {"Origin": public, "Host": "avatar.example.com"},
                              "default port written": {"Origin": "https://AVATAR.example.com:443"},
                              "another site": {"Origin": "https://evil.example"},
                              "plain http": {"Origin": "http://avatar.example.com"}}.items():
            answer = await client.post("/api/sessions", data=session_form(assets["face"]), headers={**bearer,
                                                                                                    **headers})
            answers[name] = answer.status
        created = await (await client.post("/api/sessions", data=session_form(assets["face"]), headers={
            **bearer, "Origin": public})).json()
        async with client.ws_connect(f"/api/sessions/{created['session']}/audio",
                                     headers={**bearer, "Origin": public}) as socket:
            await socket.send_json({"end": True})
            upgraded = (await socket.receive()).json()["type"]
        return answers, upgraded

    answers, upgraded = serve(pipeline, scenario, token=TOKEN, public_origin=public, max_sessions=8)
    assert answers == {"upstream Host": 201, "public Host": 201, "default port written": 201, "another site": 403,
                       "plain http": 403}
    assert upgraded == "status"
    with pytest.raises(InputError, match="--public-origin puts the server behind a proxy .* give it a token"):
        ServeOptions(public_origin=public)
    with pytest.raises(InputError, match="must be the page's origin"):
        ServeOptions(public_origin="avatar.example.com/path", token=TOKEN)
