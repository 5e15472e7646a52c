//! Header names reserved by the mesh (protocol §1).

/// W3C trace context, carried on every hop.
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor trace state, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";
/// RFC 3339 time of the first attempt at the current actor; `maxDuration` counts from it.
pub const FIRST_ATTEMPT: &str = "x-asya-first-attempt";
/// Map of abstract actor -> concrete actor, applied when resolving a destination queue.
pub const ROUTE_OVERRIDE: &str = "x-asya-route-override";
