//! Placeholder: the comparison benchmark is being written.
fn main() {}
