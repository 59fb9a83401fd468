//! (pending) durations and sizes.
