//! The GoBelieve wire protocol, as banter speaks it: the 12-byte frame header, command numbers, flags and
//! the body layout of every client command in protocol versions 0, 1 and 2
//! (docs/protocol.md §3–§7).
//!
//! This crate does no I/O. [`Frame::decode`] is incremental: it takes bytes from a `BytesMut` only once a
//! whole frame is there, checks the declared length against a limit before anything is reserved, and
//! never panics on input. [`Body::decode`] turns a frame's body into a typed [`Body`] using the frame's own
//! version byte; [`Body::encode`] writes a body in the layout of a given version.
#![forbid(unsafe_code)]

pub mod body;
pub mod cmd;
pub mod flag;
pub mod frame;

pub use body::{
    Ack, AckStatus, AuthToken, Body, BodyError, Customer, GroupSyncKey, Im, Metadata, Platform, Rt,
    Sender, METADATA_LEN,
};
pub use cmd::{Command, Layout};
pub use frame::{
    pushed_len, stored_frame, write_stored, DecodeError, Frame, Header, HEADER_LEN, MAX_BODY_LEN,
};

/// The version in which message bodies are stored and passed between server roles
/// (docs/protocol.md §4).
pub const STORAGE_VERSION: u8 = 2;
