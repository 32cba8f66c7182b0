//! W3C trace context across process boundaries. gRPC metadata, HTTP headers and Kafka record
//! headers carry `traceparent`, so one message's spans in every service (SendMessage, the
//! outbound event, the worker, the provider call, the status webhook, the billing capture)
//! form one trace. With telemetry off no span has an OpenTelemetry context, nothing is
//! written and nothing is read: the hot paths pay one check.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (and metadata key, and Kafka header) that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span`, when it belongs to an OpenTelemetry trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span.
pub fn current() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes the remote span that `traceparent` names the parent of `span`. A missing or malformed
/// value leaves `span` as it is (a new trace).
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The span of one gRPC request, child of the caller's span when the call carried a
/// `traceparent` (tonic's `Server::trace_fn`).
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %request.uri().path(),
        rpc.method = %request.uri().path(),
    );
    adopt(&span, header(request.headers()));
    span
}

/// The `traceparent` header of an HTTP request or gRPC call, if any.
pub fn header(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
}

/// Adds the current span's `traceparent` to an outgoing gRPC call.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(tp) = current()
        && let Ok(value) = tp.parse()
    {
        metadata.insert(TRACEPARENT, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_without_opentelemetry_has_no_traceparent() {
        let span = tracing::info_span!("plain");
        assert_eq!(traceparent_of(&span), None);
        // Adopting into it is harmless.
        adopt(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        adopt(&span, Some("not a traceparent"));
    }
}
