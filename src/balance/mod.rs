//! Selection algorithms.
