//! The W3C trace context the proxy sends on (`traceparent`, `tracestate`), written as the
//! SDK's `TraceContextPropagator` would write it, without its `format!` and its header-name
//! parsing on every request.

use bytes::Bytes;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// The trace context's headers: written by the proxy itself on the request to Google while
/// export is on (the client's are not copied there, `upstream::request`).
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];
pub(super) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static(HEADERS[0]);
const TRACESTATE: http::HeaderName = http::HeaderName::from_static(HEADERS[1]);

/// A byte's two lowercase hex digits, for every byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [HEX[b >> 4], HEX[b & 0xf]];
        b += 1;
    }
    t
};

/// `traceparent: 00-TRACE-SPAN-FLAGS` and, when there is one, `tracestate` into `headers`;
/// nothing for an invalid id.
pub(super) fn write(
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    state: &str,
    headers: &mut http::HeaderMap,
) {
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return;
    }
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // Each byte's two hex digits looked up at once.
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            let [hi, lo] = HEX_PAIRS[usize::from(*b)];
            v[at + 2 * i] = hi;
            v[at + 2 * i + 1] = lo;
        }
    };
    put(3, &trace_id.to_bytes());
    put(36, &span_id.to_bytes());
    put(53, &[(flags & TraceFlags::SAMPLED).to_u8()]);
    // SAFETY: `v` is ASCII hex digits and dashes, made just above: valid UTF-8 and a valid
    // header value, so the check of every byte `HeaderValue::from_bytes` makes is skipped.
    let value =
        unsafe { http::HeaderValue::from_maybe_shared_unchecked(Bytes::copy_from_slice(&v)) };
    headers.insert(TRACEPARENT, value);
    // A `tracestate` only when there is one: most requests carry none, and the client's is
    // never copied onto the request to Google first (`upstream::request`).
    if !state.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(state)
    {
        headers.insert(TRACESTATE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    #[test]
    fn the_trace_context_written_is_the_sdk_propagators() {
        use opentelemetry::Context;
        use opentelemetry::trace::{SpanContext, TraceState};
        use opentelemetry_http::HeaderInjector;
        let (trace, span) = (
            TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
            SpanId::from(0xb7ad_6b71_6920_3331),
        );
        for (flags, state) in [
            (TraceFlags::SAMPLED, "vendor=abc"),
            (TraceFlags::default(), ""),
        ] {
            let sc = SpanContext::new(
                trace,
                span,
                flags,
                true,
                state.parse::<TraceState>().unwrap(),
            );
            let (mut ours, mut sdk) = (http::HeaderMap::new(), http::HeaderMap::new());
            write(trace, span, flags, state, &mut ours);
            let cx = Context::new().with_remote_span_context(sc);
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut sdk));
            // The SDK writes an empty `tracestate`; the proxy writes none.
            if state.is_empty() {
                assert_eq!(sdk.remove("tracestate").unwrap(), "");
            }
            assert_eq!(ours, sdk);
            assert_eq!(ours.len(), if state.is_empty() { 1 } else { 2 });
        }
        let mut none = http::HeaderMap::new();
        write(TraceId::INVALID, span, TraceFlags::SAMPLED, "", &mut none);
        assert!(none.is_empty());
    }
}
