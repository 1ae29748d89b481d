//! Message flags, header byte 10 (docs/protocol.md §7.1).

/// Content is a text message; triggers the sensitive-word filter; echoed on pushes.
pub const TEXT: u8 = 0x01;
/// Defined by clients; echoed only.
pub const UNPERSISTENT: u8 = 0x02;
/// Internal: the entry is a group message (peer-only chain of personal queues).
pub const GROUP: u8 = 0x04;
/// On synced messages: sent by this user from this same device.
pub const SELF: u8 = 0x08;
/// Pushed in real time rather than returned by a sync; preceded by METADATA.
pub const PUSH: u8 = 0x10;
/// Pushed super-group message, or the ACK of a super-group send: METADATA refers to the group queue.
pub const SUPER_GROUP: u8 = 0x20;

/// The flags a client may set on a message, kept when it is stored and echoed on pushes (TEXT,
/// UNPERSISTENT); the others are the server's.
pub const CLIENT: u8 = TEXT | UNPERSISTENT;
