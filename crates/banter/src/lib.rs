//! The `banter` binary's library half: configuration, the wiring of `banter serve`, and (feature
//! `testing`, tests only) an in-process test server. No business logic lives here; it belongs to the
//! `access`, `store` and `backend` crates.
#![forbid(unsafe_code)]

pub mod config;
pub mod discovery;
pub mod load;
pub mod logging;
pub mod migrate;
pub mod roles;
pub mod serve;
pub mod signals;
#[cfg(feature = "testing")]
pub mod testing;
