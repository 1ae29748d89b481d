//! Plumbing every node role (access, router, store node) shares, so each is written once.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod throttle;
