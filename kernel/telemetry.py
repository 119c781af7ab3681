"""OpenTelemetry set-up shared by every component.

Spans carry flow and agreement ids and counts — never identifiers, tokens, keys or
payloads (a canary test scans exported spans). Without ``setup_tracing`` the global
no-op provider is used, so library code can always call ``tracer()``.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

INSTRUMENTATION_NAME = "accord"


def tracer() -> trace.Tracer:
    return trace.get_tracer(INSTRUMENTATION_NAME)


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install a tracer provider for this process; spans go to ``exporter`` if given."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
