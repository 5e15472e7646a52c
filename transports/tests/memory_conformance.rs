//! The embedded memory broker against the transport contract.

troupe_transports::conformance_suite!(memory, async { troupe_transports::MemoryTransport::default() });
