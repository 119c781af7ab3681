"""gRPC plumbing shared by the node and the broker: servers, channels, identity, errors.

* ``create_server`` binds a ``grpc.server`` with bounded message sizes, the standard
  health and reflection services, and the identity and telemetry interceptors first in
  the chain; it returns ``(server, port)`` (port 0 picks a free one) without starting
  it, so tests and ``serve`` share it.
* Until mutual TLS arrives, transport is plaintext and every address must be loopback
  (``require_loopback``); a caller names itself in the ``accord-node`` metadata header,
  which ``caller`` reads. The mTLS issue replaces the header with the certificate identity
  behind the same function.
* ``abort`` maps a status code and a sentence to ``context.abort`` (typed ``NoReturn``).
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, NoReturn, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kernel.errors import ConfigurationError
from kernel.telemetry import tracer
from kernel.wire.accord.common.v1 import common_pb2

__all__ = [
    "IDENTITY_HEADER",
    "MAX_MESSAGE_BYTES",
    "abort",
    "all_pages",
    "check_bind",
    "caller",
    "connect",
    "create_server",
    "parse_address",
    "require_loopback",
    "serve_until_signalled",
]

IDENTITY_HEADER: Final = "accord-node"
# Token batches are at most ~8,192 × 50 bytes; release batches are capped likewise.
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
_OPTIONS: Final = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port)."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigurationError(f"an address is HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port_text)


def require_loopback(address: str) -> None:
    """Refuse any address that is not loopback (plaintext gRPC must not leave the host)."""
    host, _ = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot resolve {host!r}") from exc
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise ConfigurationError(
                f"{address} is not a loopback address: --insecure-loopback serves plaintext "
                "gRPC only on 127.0.0.1 or ::1 (mutual TLS is needed for anything else)"
            )


def caller(context: grpc.ServicerContext) -> str:
    """The calling party's name (the ``accord-node`` header until mutual TLS)."""
    for key, value in context.invocation_metadata():
        if key == IDENTITY_HEADER:
            return str(value)
    return ""


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


class _TracingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """One span per RPC, named by method; attributes are ids and counts only."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            with tracer().start_as_current_span(f"rpc {method}"):
                return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Paged(Protocol):
    @property
    def page(self) -> common_pb2.PageInfo: ...


_Page = TypeVar("_Page", bound=_Paged)


def all_pages(
    fetch: Callable[[common_pb2.PageRequest], _Page], *, page_size: int = 500
) -> Iterator[_Page]:
    """Every page of a listing RPC: ``fetch`` is called with each page request in turn
    (the first with no token) until a response carries no ``next_page_token``."""
    token = ""
    while True:
        page = fetch(common_pb2.PageRequest(page_size=page_size, page_token=token))
        yield page
        token = page.page.next_page_token
        if not token:
            return


def check_bind(bind: str, *, insecure_loopback: bool) -> None:
    """Refuse an address a server may not listen on (before anything is written)."""
    if not insecure_loopback:
        raise ConfigurationError(
            "mutual TLS is not available yet: pass --insecure-loopback to serve plaintext "
            "gRPC on a loopback address"
        )
    require_loopback(bind)


def create_server(
    *,
    bind: str,
    register: Sequence[Callable[[grpc.Server], None]],
    service_names: Iterable[str],
    insecure_loopback: bool,
    max_workers: int = 32,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A gRPC server bound to ``bind`` with our services, health and reflection."""
    check_bind(bind, insecure_loopback=insecure_loopback)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="accord-rpc"),
        interceptors=[_TracingInterceptor()],
        options=_OPTIONS,
        maximum_concurrent_rpcs=max_workers * 4,
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )  # fmt: skip
    port = server.add_insecure_port(bind)
    if port == 0:
        raise ConfigurationError(f"cannot listen on {bind}")
    return server, port, health_servicer


class _IdentityInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, identity: str) -> None:
        self._metadata = ((IDENTITY_HEADER, identity),)

    def _details(self, details: Any) -> Any:
        metadata = tuple(details.metadata or ()) + self._metadata
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def connect(address: str, *, identity: str, insecure_loopback: bool) -> grpc.Channel:
    """A channel to ``address`` that names this party in every call."""
    if not insecure_loopback:
        raise ConfigurationError(
            "mutual TLS is not available yet: pass --insecure-loopback (loopback only)"
        )
    require_loopback(address)
    channel = grpc.insecure_channel(address, options=_OPTIONS)
    return grpc.intercept_channel(channel, _IdentityInterceptor(identity))


def serve_until_signalled(stop: Callable[[], None], ready_message: str) -> None:
    """Block until SIGINT or SIGTERM, then ``stop()`` (a graceful shutdown).

    ``ready_message`` goes to standard output once, flushed: launchers (the demo, tests)
    wait for it before they connect.
    """
    done = threading.Event()

    def handle(_signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    sys.stdout.write(ready_message + "\n")
    sys.stdout.flush()
    done.wait()
    stop()
