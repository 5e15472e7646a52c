//! Troupe transports. The in-memory broker ([`memory`]) is always compiled and is the
//! embedded default; real brokers come behind Cargo features.

#![forbid(unsafe_code)]

pub mod memory;

pub use memory::{MemoryConfig, MemoryConsumer, MemoryDelivery, MemoryTransport};
