//! The `banter` binary's library half: configuration, the wiring of `banter serve`, and an in-process
//! test server. No business logic lives here; it belongs to the `access`, `store` and `backend` crates.
#![forbid(unsafe_code)]

pub mod config;
pub mod logging;
pub mod migrate;
pub mod roles;
pub mod serve;
pub mod testing;
