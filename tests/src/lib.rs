//! End-to-end tests live in `tests/`: they run the built binaries on loopback.
