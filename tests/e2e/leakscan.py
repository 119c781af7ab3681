"""Leak-test machinery: canary forms, a byte scanner and a recording gRPC proxy.

DESIGN.md "Who learns what": the broker never holds a raw identifier, an unkeyed hash of one
(including our own hash-to-curve output), or a key that turns identifiers into tokens. The
end-to-end leak test plants canary identifiers in the nodes' stores, runs a flow with a
:class:`RecordingProxy` on every gRPC path into the broker, then scans the broker's database
files, its logs and every message it received for every form in :func:`canary_forms`::

    forms = all_canary_forms([("email", "Zoë.Canary@Straße.example"), ("phone", "07911 123456")])
    with (
        RecordingProxy("127.0.0.1", broker_port, name="broker") as to_broker,
        RecordingProxy("127.0.0.1", node_a_port, name="node-a") as to_a,
        RecordingProxy("127.0.0.1", node_b_port, name="node-b") as to_b,
    ):
        ...  # nodes dial to_broker.address and register to_a/to_b.address; run the flow
    received = [  # what nodes sent the broker, and what they answered its own calls
        *to_broker.blobs("client_to_server"),
        *to_a.blobs("server_to_client"),
        *to_b.blobs("server_to_client"),
    ]
    findings = scan(
        forms, files=[broker_db, log_dir], blobs=[*received, *sqlite_blobs(broker_db)]
    )
    assert not findings, "\n".join(map(str, findings))

The positive control runs the same scan after leaking one canary on purpose (say, in a
log line or a metadata value) and asserts that it is found.

gRPC runs over HTTP/2, so a canary in a message can be cut in two by a frame header (gRPC
writes a message above about 128 KiB as several DATA frames), header values are
HPACK-coded (a value repeated on a connection becomes an index into the dynamic table;
values may be Huffman-coded), ``-bin`` metadata is base64 or, between two gRPC-core peers,
"true binary", and ``grpc-message`` is percent-encoded. :meth:`RecordingProxy.blobs`
therefore returns the raw bytes of every connection *and* what :func:`decode_http2` makes
of them: the gRPC messages reassembled per stream (and decompressed), and every header
block decoded.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import shutil
import socket
import sqlite3
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Literal
from urllib.parse import quote, unquote_to_bytes

import hpack

from kernel.crypto import hash_to_curve
from node.normalize import normalize_email, normalize_phone

__all__ = [
    "MIN_FORM_LENGTH",
    "Finding",
    "RecordedConnection",
    "RecordingProxy",
    "all_canary_forms",
    "canary_forms",
    "decode_http2",
    "scan",
    "sqlite_blobs",
]

# A shorter form would turn up in random bytes by chance (2^-56 per offset at 7 bytes is
# already rare, but hex and base64 forms have less entropy per byte than that).
MIN_FORM_LENGTH: Final = 8

_DIGESTS: Final[tuple[tuple[str, Callable[[bytes], bytes]], ...]] = (
    ("sha256", lambda data: hashlib.sha256(data).digest()),
    ("sha1", lambda data: hashlib.sha1(data).digest()),
    ("md5", lambda data: hashlib.md5(data).digest()),
)
_NORMALIZERS: Final[Mapping[str, Callable[[str, str], str]]] = {
    "email": lambda raw, _region: normalize_email(raw),
    "phone": normalize_phone,
}
# Files SQLite keeps next to a database; recently written rows may be only in the WAL.
_SQLITE_SIDECARS: Final = ("-wal", "-shm", "-journal")
_CONTEXT: Final = 64  # bytes either side of a finding, to show where it sits


# --------------------------------------------------------------------------- canary forms


def canary_forms(raw: str, kind: str, *, region: str = "GB") -> dict[str, bytes]:
    """Every form in which canary identifier ``raw`` of ``kind`` could leak, by label.

    Sources: ``raw`` and ``normalized`` (the node's own normalization) as UTF-8, their
    unkeyed SHA-256, SHA-1 and MD5 digests (``normalized/sha256``), and
    ``hash_to_curve`` of the normalized value (plus its u-coordinate in decimal,
    ``hash_to_curve/u-decimal``, as a log line would print the integer).

    Each source is encoded as ``bytes`` (UTF-8 text or the digest itself), ``hex`` and
    ``hex-upper``, ``base64`` and ``base64url`` with (``…``) and without (``…-nopad``)
    padding and as they appear inside a longer base64 text at each of the three possible
    alignments (``…-at0``/``-at1``/``-at2``: the characters that depend on the canary
    only), ``repr-str`` (text sources) and ``repr-bytes``: the inside of Python's repr,
    without the quotes so a canary inside a longer repr is found too, and ``…-q`` with
    ``'`` escaped as a longer repr that also contains ``"`` writes it; and for text
    sources ``url-quoted`` and ``json`` (ASCII-escaped).

    A form equal to an earlier one is dropped (the first label wins: ``raw`` before
    ``normalized``), as is any form shorter than :data:`MIN_FORM_LENGTH` bytes.
    """
    try:
        normalizer = _NORMALIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown identifier kind {kind!r}") from None
    normalized = normalizer(raw, region)
    point = hash_to_curve(kind, normalized)

    forms: dict[str, bytes] = {}
    seen: set[bytes] = set()

    def add(label: str, value: bytes) -> None:
        if len(value) >= MIN_FORM_LENGTH and value not in seen:
            seen.add(value)
            forms[label] = value

    for name, text in (("raw", raw), ("normalized", normalized)):
        for encoding, value in _text_encodings(text):
            add(f"{name}/{encoding}", value)
        for digest_name, digest in _DIGESTS:
            for encoding, value in _byte_encodings(digest(text.encode("utf-8"))):
                add(f"{name}/{digest_name}/{encoding}", value)
    for encoding, value in _byte_encodings(point):
        add(f"hash_to_curve/{encoding}", value)
    add("hash_to_curve/u-decimal", str(int.from_bytes(point, "little")).encode("ascii"))
    return forms


def all_canary_forms(
    canaries: Iterable[tuple[str, str]], *, region: str = "GB"
) -> dict[str, bytes]:
    """:func:`canary_forms` of several ``(kind, raw)`` canaries, labelled ``kind 'raw': form``."""
    forms: dict[str, bytes] = {}
    for kind, raw in canaries:
        for label, value in canary_forms(raw, kind, region=region).items():
            forms[f"{kind} {raw!r}: {label}"] = value
    return forms


def _text_encodings(text: str) -> Iterator[tuple[str, bytes]]:
    yield from _byte_encodings(text.encode("utf-8"))
    yield "repr-str", repr(text)[1:-1].encode("utf-8")
    yield "repr-str-q", repr(text + '"')[1:-2].encode("utf-8")
    yield "url-quoted", quote(text, safe="").encode("ascii")
    yield "json", json.dumps(text)[1:-1].encode("ascii")


def _byte_encodings(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "bytes", data
    yield "hex", data.hex().encode("ascii")
    yield "hex-upper", data.hex().upper().encode("ascii")
    for name, b64 in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        yield name, b64(data)
        yield f"{name}-nopad", b64(data).rstrip(b"=")
        for shift in range(3):
            yield f"{name}-at{shift}", _base64_core(b64, data, shift)
    yield "repr-bytes", repr(data)[2:-1].encode("ascii")
    yield "repr-bytes-q", repr(data + b'"')[2:-2].encode("ascii")


def _base64_core(b64: Callable[[bytes], bytes], data: bytes, shift: int) -> bytes:
    """The base64 characters fixed by ``data`` alone when it starts ``shift`` bytes (mod 3)
    into a longer encoded byte string: whatever precedes or follows it changes the rest."""
    lead = (3 - shift) % 3  # bytes of data completing the group it starts in
    body = data[lead:]
    body = body[: len(body) - len(body) % 3]
    return b64(body)


# --------------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class Finding:
    """Canary form ``form`` (a label from :func:`canary_forms`) at ``offset`` of ``where``."""

    form: str
    where: str
    offset: int
    context: bytes = field(default=b"", compare=False)

    def __str__(self) -> str:
        return f"{self.form} in {self.where} at offset {self.offset}: …{self.context!r}…"


def scan(
    forms: Mapping[str, bytes],
    *,
    files: Iterable[Path] = (),
    blobs: Iterable[tuple[str, bytes]] = (),
) -> list[Finding]:
    """Every occurrence of every form in ``files`` (read as bytes) and ``blobs``.

    A directory in ``files`` is scanned recursively; for a file, SQLite's ``-wal``,
    ``-shm`` and ``-journal`` files next to it are scanned too when they exist (rows
    written recently may be only there). A listed file that does not exist raises
    ``FileNotFoundError``: a leak test that scans nothing must not pass.
    """
    findings: list[Finding] = []
    for where, data in _iter_sources(files, blobs):
        for label, form in forms.items():
            start = data.find(form)
            while start >= 0:
                context = data[max(0, start - _CONTEXT) : start + len(form) + _CONTEXT]
                findings.append(Finding(label, where, start, context))
                start = data.find(form, start + 1)
    return findings


def _iter_sources(
    files: Iterable[Path], blobs: Iterable[tuple[str, bytes]]
) -> Iterator[tuple[str, bytes]]:
    seen: set[Path] = set()
    for path in _expand_files(files):
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            yield str(path), path.read_bytes()
    for where, data in blobs:
        yield where, bytes(data)


def _expand_files(files: Iterable[Path]) -> Iterator[Path]:
    for entry in files:
        path = Path(entry)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
            continue
        if not path.exists():
            raise FileNotFoundError(f"nothing to scan at {path}")
        yield path
        for suffix in _SQLITE_SIDECARS:
            sidecar = path.with_name(path.name + suffix)
            if sidecar.is_file():
                yield sidecar


def sqlite_blobs(path: Path) -> list[tuple[str, bytes]]:
    """Every value of every table of SQLite database ``path``, read through SQLite.

    Scanning the file's bytes misses a value that SQLite split across overflow pages (a
    page number sits between the parts); reading it back through SQLite does not. The
    database (and its WAL) is copied first, so the original is never opened or changed.
    Text is as stored (UTF-8), numbers are in decimal, NULLs are skipped.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no SQLite database at {source}")
    blobs: list[tuple[str, bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        shutil.copyfile(source, copy)
        for suffix in ("-wal", "-journal"):
            sidecar = source.with_name(source.name + suffix)
            if sidecar.is_file():
                shutil.copyfile(sidecar, copy.with_name(copy.name + suffix))
        with closing(sqlite3.connect(copy)) as db:
            db.text_factory = bytes  # TEXT as stored, even if it is not valid UTF-8
            tables = [
                bytes(row[0]).decode("utf-8", "replace")
                for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                quoted = '"' + table.replace('"', '""') + '"'
                cursor = db.execute(f"SELECT * FROM {quoted}")  # names come from SQLite
                columns = [str(d[0]) for d in cursor.description]
                for index, row in enumerate(cursor):
                    for column, value in zip(columns, row, strict=True):
                        data = _sqlite_value_bytes(value)
                        if data is not None:
                            blobs.append((f"{source}:{table}[{index}].{column}", data))
    return blobs


def _sqlite_value_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("ascii")


# ------------------------------------------------------------------------- HTTP/2 decoding

HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER_SIZE: Final = 9
_DATA, _HEADERS, _PUSH_PROMISE, _GOAWAY, _CONTINUATION = 0x0, 0x1, 0x5, 0x7, 0x9
_FLAG_END_HEADERS, _FLAG_PADDED, _FLAG_PRIORITY = 0x4, 0x8, 0x20
_GRPC_PREFIX_SIZE: Final = 5
# HPACK limits we are not the party to enforce: decode whatever the peers agreed on.
_HPACK_UNLIMITED: Final = 2**32


@dataclass
class _Stream:
    data: bytearray = field(default_factory=bytearray)
    headers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)


def decode_http2(data: bytes, label: str = "") -> list[tuple[str, bytes]]:
    """What one direction of an HTTP/2 connection carried, decoded for scanning.

    ``data`` is every byte one side sent (a client's starts with the connection preface).
    Returns, labelled ``"{label} stream N …"``:

    * ``headers K``: each header block (HEADERS or PUSH_PROMISE plus its CONTINUATION
      frames) decoded with HPACK, one ``name: value`` line per field; a ``-bin`` value is
      followed by a line with its base64 decoded (or, in gRPC's "true binary" form, a NUL
      and the raw bytes, with the NUL removed), ``grpc-message`` by a line with its
      percent-encoding decoded;
    * ``message K``: each gRPC length-prefixed message of the stream's DATA frames,
      reassembled across frames (padding removed) and decompressed when flagged and the
      stream's ``grpc-encoding`` is gzip or deflate; ``partial`` is what is left of a
      stream that does not end on a message boundary (a truncated or non-gRPC stream);
    * ``goaway``: the debug data of a GOAWAY frame.

    Unknown frame types are skipped; a truncated last frame is used as far as it goes.
    One HPACK decoder per direction, as in HTTP/2: header blocks must be decoded in order,
    every one of them, or the dynamic table goes wrong.
    """
    prefix = f"{label} " if label else ""
    view = memoryview(data)
    position = len(HTTP2_PREFACE) if data.startswith(HTTP2_PREFACE) else 0
    decoder = hpack.Decoder(max_header_list_size=_HPACK_UNLIMITED)
    decoder.max_allowed_table_size = _HPACK_UNLIMITED
    hpack_ok = True
    streams: dict[int, _Stream] = {}
    out: list[tuple[str, bytes]] = []
    block = bytearray()
    block_stream: int | None = None  # a header block awaiting CONTINUATION frames

    while position + _FRAME_HEADER_SIZE <= len(view):
        length = int.from_bytes(view[position : position + 3], "big")
        frame_type = view[position + 3]
        flags = view[position + 4]
        stream_id = int.from_bytes(view[position + 5 : position + 9], "big") & 0x7FFF_FFFF
        start = position + _FRAME_HEADER_SIZE
        payload = bytes(view[start : start + length])
        position = start + length

        fragment: bytes | None = None
        if frame_type == _DATA:
            _stream(streams, stream_id).data += _unpad(payload, flags)
        elif frame_type == _HEADERS:
            body = _unpad(payload, flags)
            fragment = body[5:] if flags & _FLAG_PRIORITY else body
        elif frame_type == _PUSH_PROMISE:
            fragment = _unpad(payload, flags)[4:]  # after the promised stream id
        elif frame_type == _CONTINUATION:
            fragment = payload
        elif frame_type == _GOAWAY and len(payload) > 8:
            out.append((f"{prefix}goaway", payload[8:]))
        if fragment is None:
            continue
        if frame_type != _CONTINUATION:
            block, block_stream = bytearray(), stream_id
        block += fragment
        if not flags & _FLAG_END_HEADERS or block_stream is None:
            continue
        if hpack_ok:
            try:
                fields = [(bytes(n), bytes(v)) for n, v in decoder.decode(bytes(block), raw=True)]
            except hpack.HPACKError as exc:
                # The dynamic table is lost from here on; the raw bytes are still scanned.
                out.append((f"{prefix}stream {block_stream} hpack error", str(exc).encode()))
                hpack_ok = False
            else:
                headers = _stream(streams, block_stream).headers
                out.append(
                    (f"{prefix}stream {block_stream} headers {len(headers)}", _header_text(fields))
                )
                headers.append(fields)
        block, block_stream = bytearray(), None

    if position < len(view):
        out.append((f"{prefix}truncated frame", bytes(view[position:])))
    for stream_id, stream in sorted(streams.items()):
        out.extend(_grpc_messages(f"{prefix}stream {stream_id}", stream))
    return out


def _stream(streams: dict[int, _Stream], stream_id: int) -> _Stream:
    return streams.setdefault(stream_id, _Stream())


def _unpad(payload: bytes, flags: int) -> bytes:
    if not flags & _FLAG_PADDED or not payload:
        return payload
    pad_length = payload[0]
    return payload[1 : max(1, len(payload) - pad_length)]


def _header_text(fields: list[tuple[bytes, bytes]]) -> bytes:
    lines: list[bytes] = []
    for name, value in fields:
        lines.append(name + b": " + value)
        if name.endswith(b"-bin") and value.startswith(b"\x00"):
            # gRPC's "true binary" metadata (both peers sent SETTINGS 0xfe03 = 1): a NUL,
            # then the value's bytes as they are, instead of base64.
            lines.append(name + b" (true binary): " + value[1:])
        elif name.endswith(b"-bin"):
            lines.append(name + b" (base64-decoded): " + _b64decode_lenient(value))
        elif name == b"grpc-message":
            lines.append(name + b" (percent-decoded): " + unquote_to_bytes(value))
    return b"\n".join(lines)


def _b64decode_lenient(value: bytes) -> bytes:
    """gRPC sends ``-bin`` metadata as base64, usually unpadded (any alphabet)."""
    text = value.strip()
    try:
        padded = text.translate(bytes.maketrans(b"-_", b"+/")) + b"=" * (-len(text) % 4)
        return base64.b64decode(padded, validate=False)
    except (binascii.Error, ValueError):
        return b""


def _grpc_messages(label: str, stream: _Stream) -> Iterator[tuple[str, bytes]]:
    encoding = b"identity"
    for fields in stream.headers:
        for name, value in fields:
            if name == b"grpc-encoding":
                encoding = value.strip().lower()
    data = bytes(stream.data)
    position = 0
    index = 0
    while position + _GRPC_PREFIX_SIZE <= len(data):
        compressed = data[position]
        length = int.from_bytes(data[position + 1 : position + 5], "big")
        end = position + _GRPC_PREFIX_SIZE + length
        if compressed > 1 or end > len(data):
            break  # not a gRPC message boundary
        message = data[position + _GRPC_PREFIX_SIZE : end]
        yield f"{label} message {index}", message
        if compressed:
            inflated = _decompress(message, encoding)
            if inflated is not None:
                yield f"{label} message {index} ({encoding.decode(errors='replace')})", inflated
        position = end
        index += 1
    if position < len(data):
        yield f"{label} partial", data[position:]


def _decompress(message: bytes, encoding: bytes) -> bytes | None:
    try:
        if encoding == b"gzip":
            return gzip.decompress(message)
        if encoding == b"deflate":  # zlib-wrapped, as gRPC sends it; raw deflate else
            try:
                return zlib.decompress(message)
            except zlib.error:
                return zlib.decompress(message, wbits=-zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error):
        return None
    return None


# ---------------------------------------------------------------------------- the proxy

Direction = Literal["client_to_server", "server_to_client"]
_CHUNK: Final = 65536
_ACCEPT_POLL_SECONDS: Final = 0.05
_JOIN_SECONDS: Final = 5.0


@dataclass
class RecordedConnection:
    """One proxied TCP connection: every byte each side sent, in order."""

    index: int
    client_to_server: bytearray = field(default_factory=bytearray)
    server_to_client: bytearray = field(default_factory=bytearray)
    error: str | None = None  # why the connection to the target failed, if it did


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 (OS-chosen :attr:`port`) that records everything it relays.

    Use as a context manager; leaving it closes every socket and joins every thread.
    Each accepted connection is relayed to ``target_host:target_port`` by two threads, one
    per direction; bytes are recorded before they are forwarded, so whatever a peer has
    received is already in the recording.
    """

    def __init__(self, target_host: str, target_port: int, *, name: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.name = name or f"proxy->{target_host}:{target_port}"
        self._lock = threading.Lock()
        self._connections: list[RecordedConnection] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._port: int | None = None

    # lifecycle

    def __enter__(self) -> RecordingProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("proxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(_ACCEPT_POLL_SECONDS)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"{self.name} accept", daemon=True
        )
        self._acceptor.start()

    def close(self) -> None:
        """Stop accepting, cut every relayed connection and join every thread."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_SECONDS)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            _shutdown(sock, socket.SHUT_RDWR)
        for thread in threads:
            thread.join(_JOIN_SECONDS)
        for sock in sockets:
            sock.close()
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            raise RuntimeError(f"proxy threads did not stop: {stuck}")

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, for a gRPC channel target."""
        return f"127.0.0.1:{self.port}"

    # recordings

    @property
    def connections(self) -> list[RecordedConnection]:
        """A snapshot of every connection so far."""
        with self._lock:
            return [
                RecordedConnection(
                    c.index, bytearray(c.client_to_server), bytearray(c.server_to_client), c.error
                )
                for c in self._connections
            ]

    def raw_streams(self, direction: Direction | None = None) -> list[tuple[str, bytes]]:
        """Every byte relayed, one blob per connection and direction (or just ``direction``)."""
        blobs: list[tuple[str, bytes]] = []
        for connection in self.connections:
            for name, data in self._directions(connection, direction):
                blobs.append((f"{self.name} conn {connection.index} {name} raw", data))
        return blobs

    def decoded_messages(self, direction: Direction | None = None) -> list[tuple[str, bytes]]:
        """:func:`decode_http2` of every connection and direction (or just ``direction``)."""
        blobs: list[tuple[str, bytes]] = []
        for connection in self.connections:
            for name, data in self._directions(connection, direction):
                blobs.extend(decode_http2(data, f"{self.name} conn {connection.index} {name}"))
        return blobs

    def blobs(self, direction: Direction | None = None) -> list[tuple[str, bytes]]:
        """Everything to scan: :meth:`raw_streams` and :meth:`decoded_messages`."""
        return [*self.raw_streams(direction), *self.decoded_messages(direction)]

    @staticmethod
    def _directions(
        connection: RecordedConnection, direction: Direction | None
    ) -> list[tuple[str, bytes]]:
        both: list[tuple[Direction, bytes]] = [
            ("client_to_server", bytes(connection.client_to_server)),
            ("server_to_client", bytes(connection.server_to_client)),
        ]
        return [(name, data) for name, data in both if direction in (None, name)]

    # relaying

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            connection = RecordedConnection(len(self._connections))
            self._connections.append(connection)
            self._sockets.append(client)
        try:
            upstream = socket.create_connection(self.target)
        except OSError as exc:
            connection.error = str(exc)
            _shutdown(client, socket.SHUT_RDWR)
            return
        with self._lock:
            self._sockets.append(upstream)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [
            threading.Thread(
                target=self._pump,
                args=(client, upstream, connection.client_to_server),
                name=f"{self.name} conn {connection.index} c->s",
                daemon=True,
            ),
            threading.Thread(
                target=self._pump,
                args=(upstream, client, connection.server_to_client),
                name=f"{self.name} conn {connection.index} s->c",
                daemon=True,
            ),
        ]
        with self._lock:
            self._threads.extend(pumps)
        for pump in pumps:
            pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                with self._lock:
                    record.extend(data)
                sink.sendall(data)
        except OSError:
            # One side reset or went away: cut both, so the other pump stops too.
            _shutdown(source, socket.SHUT_RDWR)
            _shutdown(sink, socket.SHUT_RDWR)
        else:
            _shutdown(sink, socket.SHUT_WR)  # pass the half-close on


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass
