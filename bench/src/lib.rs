//! Criterion micro-benchmarks of voxgate's hot paths live in `benches/`; this library is empty.
//!
//! Run them with `cargo bench -p voxgate-bench`.
