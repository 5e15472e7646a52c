//! Header names reserved by the mesh (protocol §1).

/// W3C trace context, carried on every hop.
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor trace state, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";
/// RFC 3339 time of the first attempt at the current actor; `maxDuration` counts from it.
pub const FIRST_ATTEMPT: &str = "x-asya-first-attempt";
/// Map of abstract actor -> concrete actor, applied when resolving a destination queue.
pub const ROUTE_OVERRIDE: &str = "x-asya-route-override";
/// Asya's switch for status reporting: `"off"` on an envelope stops every runner from
/// publishing task events for it (its results still reach `x-sink` / `x-sump`).
pub const MESH_STATUS: &str = "x-asya-mesh-status";
/// The gateway task an envelope belongs to (the id of the envelope that was submitted),
/// set by the gateway and carried unchanged by every hop and fan-out child. Runners publish
/// task events only for envelopes that carry it.
pub const TASK: &str = "x-troupe-task";
/// On the branch that keeps an envelope's id through a fan-out: the ids of the other
/// children (appended at every fan-out along its route), so that whoever records the
/// branch's end learns which branches it spawned (see the gateway's ledger).
pub const SPAWNED: &str = "x-troupe-spawned";
/// Fan-in metadata of a slice of a fan-out marked for rejoin (Asya's header and form): the
/// aggregator, the origin id, the slice index and count. See [`crate::fan_in`].
pub const FAN_IN: &str = "x-asya-fan-in";
/// On a merge that a fan-in timeout emitted partial: the indices of the slices missing.
pub const FAN_IN_MISSING: &str = "x-troupe-fan-in-missing";
