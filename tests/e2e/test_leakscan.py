"""The leak-test machinery finds what it must and nothing else, before any service uses it.

* every form of a canary planted in a file (and its SQLite WAL), in a blob and in a real
  gRPC message relayed by :class:`RecordingProxy` is found, and random bytes yield nothing;
* a canary in gRPC metadata, in an error message and in rich status details is found
  once HPACK, base64 (``-bin``) and percent-encoding (``grpc-message``) are undone;
* a canary cut in two by an HTTP/2 frame header (a message larger than a frame) is found
  in the reassembled message although it is not in the raw bytes;
* frame features gRPC never sends (padding, priority, CONTINUATION, unknown types,
  compression, a truncated frame) are decoded too, on a stream built with hyperframe;
* a value SQLite split across overflow pages is found through :func:`sqlite_blobs`.

Real gRPC over loopback: a generic-handler server on 127.0.0.1, a client channel to the
proxy in front of it.
"""

from __future__ import annotations

import base64
import gzip
import random
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    SettingsFrame,
)

from kernel.crypto import hash_to_curve
from node.normalize import normalize_email, normalize_phone

from .leakscan import (
    HTTP2_PREFACE,
    MIN_FORM_LENGTH,
    Finding,
    RecordingProxy,
    all_canary_forms,
    canary_forms,
    decode_http2,
    scan,
    sqlite_blobs,
)

EMAIL = "Zoë.Canary+Leak@Straße.example"
PHONE = "07911 123456"
ASCII_EMAIL = "ascii.canary@leak.example"
SERVICE = "leakscan.test.Echo"
TIMEOUT = 10.0


# ------------------------------------------------------------------------- a real server


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _shout(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield request.upper()


def _metadata(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Sends the request (an ASCII canary) back in initial and trailing metadata."""
    text = request.decode("ascii")
    context.send_initial_metadata((("x-initial", f"initial {text}"),))
    context.set_trailing_metadata((("x-trailing", f"trailing {text}"),))
    return b"ok"


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Fails with the request's first line in the message, its second in status details."""
    message, _, detail = request.decode("utf-8").partition("\n")
    # google.rpc.Status by hand: code (field 1, varint), message (field 2, bytes).
    detail_bytes = detail.encode("utf-8")
    status = b"\x08\x03\x12" + bytes([len(detail_bytes)]) + detail_bytes
    context.set_trailing_metadata((("grpc-status-details-bin", status),))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"refused {message}")
    raise AssertionError("abort returned")  # pragma: no cover


@pytest.fixture
def grpc_options() -> list[tuple[str, Any]]:
    """Channel arguments for both the server and the client (tests parametrize it)."""
    return []


@pytest.fixture
def server_port(grpc_options: list[tuple[str, Any]]) -> Iterator[int]:
    executor = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor, options=grpc_options)
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Metadata": grpc.unary_unary_rpc_method_handler(_metadata),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Stream": grpc.stream_stream_rpc_method_handler(_shout),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


@pytest.fixture
def proxy(server_port: int) -> Iterator[RecordingProxy]:
    threads_before = set(threading.enumerate())
    with RecordingProxy("127.0.0.1", server_port, name="test") as recording:
        yield recording
    leftover = [t for t in threading.enumerate() if t not in threads_before and "test" in t.name]
    assert not leftover, f"proxy threads still running: {leftover}"


def _call(
    proxy: RecordingProxy,
    method: str,
    request: bytes,
    options: list[tuple[str, Any]] | None = None,
    **kwargs: Any,
) -> Any:
    """One unary call through the proxy on a fresh channel, closed before returning."""
    channel_options = [("grpc.enable_http_proxy", 0), *(options or [])]
    with grpc.insecure_channel(proxy.address, options=channel_options) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/{method}")
        return stub.with_call(request, timeout=TIMEOUT, **kwargs)


# ---------------------------------------------------------------------------- helpers


def _filler(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _planted(forms: dict[str, bytes], rng: random.Random) -> bytes:
    """Every form, each between random bytes."""
    parts = [_filler(rng, 17)]
    for value in forms.values():
        parts += [value, _filler(rng, 17)]
    return b"".join(parts)


def _labels(findings: list[Finding], where_prefix: str = "") -> set[str]:
    return {f.form for f in findings if f.where.startswith(where_prefix)}


def _dense_canaries(count: int) -> list[bytes]:
    """Distinct canaries back to back: any cut inside the run cuts one of them."""
    return [f"split-{i:06d}@canary.example".encode() for i in range(count)]


DENSE = re.compile(rb"split-\d{6}@canary\.example")


def _dense_found(blobs: list[tuple[str, bytes]]) -> set[bytes]:
    return {match for _, data in blobs for match in DENSE.findall(data)}


# ----------------------------------------------------------------------- canary forms


def test_canary_forms_use_the_projects_normalization_and_hash_to_curve() -> None:
    email = canary_forms(EMAIL, "email")
    normalized = normalize_email(EMAIL)
    assert email["raw/bytes"] == EMAIL.encode()
    assert email["normalized/bytes"] == normalized.encode()
    assert email["hash_to_curve/bytes"] == hash_to_curve("email", normalized)
    assert email["normalized/sha256/hex-upper"].decode().isupper()
    for label in (
        "raw/repr-bytes",
        "raw/url-quoted",
        "raw/json",
        "normalized/sha1/base64url-nopad",
        "normalized/md5/base64-at2",
        "hash_to_curve/hex",
        "hash_to_curve/repr-bytes",
        "hash_to_curve/u-decimal",
    ):
        assert label in email

    phone = canary_forms(PHONE, "phone", region="GB")
    assert phone["normalized/bytes"] == normalize_phone(PHONE, "GB").encode() == b"+447911123456"
    assert phone["hash_to_curve/bytes"] == hash_to_curve("phone", "+447911123456")

    for forms in (email, phone):
        assert all(len(value) >= MIN_FORM_LENGTH for value in forms.values())
        assert len(set(forms.values())) == len(forms)

    with pytest.raises(ValueError, match="unknown identifier kind"):
        canary_forms(EMAIL, "postcode")


def test_a_form_equal_to_an_earlier_one_is_dropped() -> None:
    forms = canary_forms("already.normal@leak.example", "email")
    assert "raw/bytes" in forms and "normalized/bytes" not in forms
    assert not any(label.startswith("normalized/") for label in forms)
    assert "raw/repr-str" not in forms  # the repr of plain ASCII is the text itself


def test_base64_forms_are_found_inside_a_longer_base64_text() -> None:
    forms = canary_forms(EMAIL, "email")
    rng = random.Random(7)
    for lead in range(3):
        blob = base64.b64encode(_filler(rng, lead) + EMAIL.encode() + _filler(rng, 5))
        assert f"raw/base64-at{lead}" in _labels(scan(forms, blobs=[("b64", blob)]))


# ------------------------------------------------------- every form, everywhere, once


def test_every_form_is_found_in_a_file_a_blob_and_a_grpc_message(
    tmp_path: Path, proxy: RecordingProxy
) -> None:
    forms = all_canary_forms([("email", EMAIL), ("phone", PHONE)])
    payload = _planted(forms, random.Random(1))
    database = tmp_path / "broker.db"
    database.write_bytes(_filler(random.Random(2), 4096))
    (tmp_path / "broker.db-wal").write_bytes(payload)  # found through its database file
    log = tmp_path / "logs" / "broker.log"
    log.parent.mkdir()
    log.write_bytes(payload)

    response, call = _call(proxy, "Echo", payload)
    assert response == payload and call.code() is grpc.StatusCode.OK

    everything = set(forms)
    assert _labels(scan(forms, files=[database]), f"{database}-wal") == everything
    assert _labels(scan(forms, files=[tmp_path / "logs"]), str(log)) == everything
    assert _labels(scan(forms, blobs=[("blob", payload)])) == everything
    decoded = scan(forms, blobs=proxy.decoded_messages())
    for direction in ("client_to_server", "server_to_client"):
        assert _labels(decoded, f"test conn 0 {direction} stream 1 message 0") == everything
    finding = next(f for f in decoded if f.form.endswith("normalized/bytes"))
    assert payload[finding.offset :].startswith(forms[finding.form])


def test_a_missing_file_is_an_error_not_a_clean_scan(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan(canary_forms(EMAIL, "email"), files=[tmp_path / "absent.log"])


def test_random_bytes_yield_no_finding(tmp_path: Path, proxy: RecordingProxy) -> None:
    forms = all_canary_forms([("email", EMAIL), ("phone", PHONE), ("email", ASCII_EMAIL)])
    noise = _filler(random.Random(3), 256 * 1024)
    (tmp_path / "noise.bin").write_bytes(noise)
    response, _ = _call(proxy, "Echo", noise)
    assert response == noise

    blobs = proxy.blobs()
    assert any(where.endswith("message 0") and data == noise for where, data in blobs)
    assert scan(forms, files=[tmp_path], blobs=blobs) == []


# ------------------------------------------------------------------------- headers


TRUE_BINARY = pytest.mark.parametrize(
    "grpc_options",
    [[("grpc.http2.true_binary", 1)], [("grpc.http2.true_binary", 0)]],
    ids=["true-binary", "base64"],
)


@TRUE_BINARY
def test_canaries_in_metadata_are_found_after_hpack_decoding(
    proxy: RecordingProxy, grpc_options: list[tuple[str, Any]]
) -> None:
    binary = PHONE.encode() + b"\x00\xff"
    _, call = _call(
        proxy,
        "Metadata",
        ASCII_EMAIL.encode(),
        grpc_options,
        metadata=(("x-canary", ASCII_EMAIL), ("x-canary-bin", binary)),
    )
    assert dict(call.initial_metadata())["x-initial"] == f"initial {ASCII_EMAIL}"

    forms = {**canary_forms(ASCII_EMAIL, "email"), "phone/bytes": PHONE.encode()}
    decoded = scan(forms, blobs=proxy.decoded_messages())
    headers = [f for f in decoded if " headers " in f.where and f.form == "raw/bytes"]
    contexts = b"".join(f.context for f in headers)
    for name in (b"x-canary: ", b"x-initial: initial ", b"x-trailing: trailing "):
        assert name in contexts
    bin_lines = [f.context for f in decoded if f.form == "phone/bytes"]
    true_binary = dict(grpc_options)["grpc.http2.true_binary"] == 1
    decoding = b"(true binary)" if true_binary else b"(base64-decoded)"
    assert any(b"x-canary-bin " + decoding in line for line in bin_lines)
    # In base64 the phone is not on the wire as it stands; in true binary it is.
    on_wire = scan({"phone/bytes": PHONE.encode()}, blobs=proxy.raw_streams())
    assert bool(on_wire) is true_binary


@TRUE_BINARY
def test_canaries_in_an_error_message_and_status_details_are_found(
    proxy: RecordingProxy, grpc_options: list[tuple[str, Any]]
) -> None:
    request = f"{EMAIL}\n{PHONE}".encode()
    with pytest.raises(grpc.RpcError) as raised:
        _call(proxy, "Fail", request, grpc_options)
    error: Any = raised.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"refused {EMAIL}"

    forms = all_canary_forms([("email", EMAIL), ("phone", PHONE)])
    trailers = [
        f
        for f in scan(forms, blobs=proxy.decoded_messages("server_to_client"))
        if " headers " in f.where
    ]
    email_raw = f"email {EMAIL!r}: raw/bytes"
    phone_raw = f"phone {PHONE!r}: raw/bytes"
    assert any(f.form == email_raw and b"(percent-decoded)" in f.context for f in trailers)
    assert any(f.form == phone_raw and b"grpc-status-details-bin (" in f.context for f in trailers)
    # grpc-message is percent-encoded, so the non-ASCII e-mail is never on the wire as it
    # stands; the status details are, when the peers agreed on true binary metadata.
    wire = proxy.raw_streams("server_to_client")
    assert not scan({email_raw: EMAIL.encode()}, blobs=wire)
    true_binary = dict(grpc_options)["grpc.http2.true_binary"] == 1
    assert bool(scan({phone_raw: PHONE.encode()}, blobs=wire)) is true_binary


# ---------------------------------------------------------------- split across frames


def test_a_canary_cut_by_a_frame_header_is_found_in_the_reassembled_message(
    proxy: RecordingProxy,
) -> None:
    # gRPC advertises 4 MiB frames (SETTINGS_MAX_FRAME_SIZE, and grpc.http2.max_frame_size
    # does not change that) but writes a large message as DATA frames of about 128 KiB
    # and growing, cut wherever its write buffer ends: 540 KB takes four or five.
    count = 20_000
    canaries = _dense_canaries(count)
    payload = b"".join(canaries)
    response, _ = _call(proxy, "Echo", payload)
    assert response == payload

    for direction in ("client_to_server", "server_to_client"):
        raw = _dense_found(proxy.raw_streams(direction))
        decoded_blobs = proxy.decoded_messages(direction)
        split = set(canaries) - raw
        print(f"{direction}: {len(split)} of {count} canaries cut by a frame header")
        assert split, "no canary straddled a frame boundary: the test proves nothing"
        assert _dense_found(decoded_blobs) == set(canaries)
        forms = {c.decode(): c for c in sorted(split)[:20]}
        assert _labels(scan(forms, blobs=decoded_blobs)) == set(forms)


def test_a_target_that_refuses_is_recorded_and_the_proxy_still_closes_cleanly() -> None:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = int(probe.getsockname()[1])
    with RecordingProxy("127.0.0.1", free_port, name="refused") as recording:
        options = [("grpc.enable_http_proxy", 0)]
        with grpc.insecure_channel(recording.address, options=options) as channel:
            stub = channel.unary_unary(f"/{SERVICE}/Echo")
            with pytest.raises(grpc.RpcError) as raised:
                stub(b"x", timeout=2.0)
        error: Any = raised.value
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        connections = recording.connections
        assert connections and all(c.error for c in connections)
        assert recording.blobs() == [
            (f"refused conn {c.index} {d} raw", b"")
            for c in connections
            for d in ("client_to_server", "server_to_client")
        ]


def test_every_message_of_a_bidirectional_stream_is_decoded(proxy: RecordingProxy) -> None:
    requests = [f"{i}:{ASCII_EMAIL}".encode() for i in range(5)]
    with grpc.insecure_channel(proxy.address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stream = channel.stream_stream(f"/{SERVICE}/Stream")
        responses = list(stream(iter(requests), timeout=TIMEOUT))
    assert responses == [r.upper() for r in requests]
    decoded = dict(proxy.decoded_messages())
    prefix = "test conn 0 {} stream 1 message {}"
    for i, request in enumerate(requests):
        assert decoded[prefix.format("client_to_server", i)] == request
        assert decoded[prefix.format("server_to_client", i)] == request.upper()
    found = scan(canary_forms(ASCII_EMAIL, "email"), blobs=list(decoded.items()))
    assert len([f for f in found if f.form == "raw/bytes"]) == len(requests)


# --------------------------------------------------------- what gRPC itself never sends


def _frames(*frames: Any) -> bytes:
    return b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)


def _unknown_frame(frame_type: int, stream_id: int, payload: bytes) -> bytes:
    """A frame of a type HTTP/2 does not define, built by hand (hyperframe's
    ExtensionFrame serializes only frames it parsed itself)."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes([frame_type, 0])
        + stream_id.to_bytes(4, "big")
        + payload
    )


def test_padding_priority_continuation_unknown_frames_and_compression_are_decoded() -> None:
    encoder = hpack.Encoder()
    block = encoder.encode(
        [
            (":method", "POST"),
            (":path", "/accord.broker.v1.BrokerService/StartFlow"),
            ("grpc-encoding", "gzip"),
            ("x-note", f"canary {ASCII_EMAIL}"),
        ],
        huffman=True,
    )
    message = b"before " + ASCII_EMAIL.encode() + b" after"
    plain = b"\x00" + len(message).to_bytes(4, "big") + message
    packed = gzip.compress(PHONE.encode() * 3)
    compressed = b"\x01" + len(packed).to_bytes(4, "big") + packed
    body = plain + compressed
    cut = len(plain) + 3  # the second message's prefix is split too
    first = HeadersFrame(1, block[:5], pad_length=7, depends_on=0, stream_weight=15)
    first.flags.add("PADDED")
    first.flags.add("PRIORITY")
    data_one = DataFrame(1, body[:10], pad_length=200)
    data_one.flags.add("PADDED")
    stream = HTTP2_PREFACE + _frames(
        SettingsFrame(0, {}),
        first,
        ContinuationFrame(1, block[5:], flags=["END_HEADERS"]),
        _unknown_frame(0xFA, 1, b"an unknown frame type"),
        data_one,
        _unknown_frame(0xFB, 0, b"\x00" * 40),
        DataFrame(1, body[10:cut]),
        DataFrame(1, body[cut:], flags=["END_STREAM"]),
    )
    truncated = stream + DataFrame(3, b"\x00\x00\x00\x00\x40" + b"x" * 64).serialize()[:-10]

    decoded = dict(decode_http2(truncated, "crafted"))
    headers = decoded["crafted stream 1 headers 0"]
    assert b"x-note: canary " + ASCII_EMAIL.encode() in headers
    assert ASCII_EMAIL.encode() not in block  # Huffman-coded on the wire
    assert decoded["crafted stream 1 message 0"] == message
    assert decoded["crafted stream 1 message 1 (gzip)"] == PHONE.encode() * 3
    assert decoded["crafted stream 3 partial"].startswith(b"\x00\x00\x00\x00\x40xxx")
    assert "crafted truncated frame" not in decoded  # the frame's header was complete
    forms = {"email": ASCII_EMAIL.encode(), "phone": PHONE.encode()}
    assert _labels(scan(forms, blobs=list(decoded.items()))) == {"email", "phone"}
    assert decode_http2(truncated[: len(HTTP2_PREFACE) + 5], "x") == [
        ("x truncated frame", truncated[len(HTTP2_PREFACE) : len(HTTP2_PREFACE) + 5])
    ]


# ------------------------------------------------------------------------ SQLite


def test_sqlite_values_are_found_in_the_wal_and_across_overflow_pages(tmp_path: Path) -> None:
    database = tmp_path / "broker.db"
    canaries = _dense_canaries(300)  # about 10 KB in one value: several overflow pages
    forms = {c.decode(): c for c in canaries}
    with closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA page_size = 1024")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE flows (id INTEGER PRIMARY KEY, note TEXT, token BLOB)")
        with db:
            db.execute(
                "INSERT INTO flows (note, token) VALUES (?, ?)", (b"".join(canaries).decode(), None)
            )
            db.execute("INSERT INTO flows (note, token) VALUES (?, ?)", ("plain", PHONE.encode()))
        wal = tmp_path / "broker.db-wal"
        assert wal.stat().st_size > 0  # not checkpointed while the connection is open

        in_files = _labels(scan(forms, files=[database]))
        assert in_files and in_files != set(forms)  # some are cut by a page header
        blobs = sqlite_blobs(database)
        assert _labels(scan(forms, blobs=blobs)) == set(forms)
        phone = scan({"phone": PHONE.encode()}, blobs=blobs)
        assert [f.where for f in phone] == [f"{database}:flows[1].token"]
