//! Owner-id registry for cachem (placeholder until the registry issue lands).
#![forbid(unsafe_code)]
