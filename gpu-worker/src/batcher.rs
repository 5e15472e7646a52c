//! Batcher (in progress).
