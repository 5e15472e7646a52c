//! The one shape of a refused queue name, shared by the transports' own name checks (each
//! broker has its own rules; brokers that time out or misbehave on a bad name, rather than
//! refuse it, are why the checks run on the client).

use troupe_core::TransportError;

/// `Err(InvalidQueue)` naming `queue` and the `problem` with it, if there is one.
#[allow(dead_code)] // unused when no broker feature is on
pub(crate) fn refuse_if(queue: &str, problem: Option<&str>) -> Result<(), TransportError> {
    match problem {
        Some(p) => Err(TransportError::InvalidQueue {
            queue: queue.to_owned(),
            detail: p.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Milliseconds since the Unix epoch (for due times carried in message headers, which
/// other processes read).
#[allow(dead_code)] // unused when no broker feature is on
pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
