//! Command numbers (header byte 8) and the command table: name, whitelist, handling before
//! authentication, persistence and body layout of every command (docs/protocol.md §5).

pub const AUTH_STATUS: u8 = 3;
pub const IM: u8 = 4;
pub const ACK: u8 = 5;
pub const GROUP_NOTIFICATION: u8 = 7;
pub const GROUP_IM: u8 = 8;
pub const PING: u8 = 13;
pub const PONG: u8 = 14;
pub const AUTH_TOKEN: u8 = 15;
pub const RT: u8 = 17;
pub const ENTER_ROOM: u8 = 18;
pub const LEAVE_ROOM: u8 = 19;
pub const ROOM_IM: u8 = 20;
pub const SYSTEM: u8 = 21;
pub const UNREAD_COUNT: u8 = 22;
pub const CUSTOMER_DEPRECATED: u8 = 24;
pub const CUSTOMER_SUPPORT_DEPRECATED: u8 = 25;
pub const SYNC: u8 = 26;
pub const SYNC_BEGIN: u8 = 27;
pub const SYNC_END: u8 = 28;
pub const SYNC_NOTIFY: u8 = 29;
pub const SYNC_GROUP: u8 = 30;
pub const SYNC_GROUP_BEGIN: u8 = 31;
pub const SYNC_GROUP_END: u8 = 32;
pub const SYNC_GROUP_NOTIFY: u8 = 33;
pub const SYNC_KEY: u8 = 34;
pub const GROUP_SYNC_KEY: u8 = 35;
pub const NOTIFICATION: u8 = 36;
pub const METADATA: u8 = 37;
pub const CUSTOMER_V2: u8 = 64;
/// banter-internal, never sent to or accepted from clients: carried between access nodes inside a route
/// PUBLISH to close sessions of a user (body: u64 big-endian token fingerprint, 0 = every session).
/// See docs/internal-protocols.md.
pub const KICK: u8 = 240;

/// Which body layout a command carries (see [`crate::Body`] for the fields, `docs/protocol.md` for
/// the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// No body (PING, PONG).
    Empty,
    /// One i32 (AUTH_STATUS, UNREAD_COUNT).
    I32,
    /// One i64 key or id (ENTER_ROOM, LEAVE_ROOM, SYNC*, SYNC_KEY).
    Key,
    /// A group id and a key (SYNC_GROUP*, GROUP_SYNC_KEY).
    GroupKey,
    /// sender, receiver, timestamp (not in version 0), msgid, content (IM, GROUP_IM).
    Im,
    /// sender, receiver, content (RT, ROOM_IM).
    Rt,
    /// seq and, from version 2, a status.
    Ack,
    /// platform, token and device id.
    AuthToken,
    /// Two keys and 16 reserved bytes.
    Metadata,
    /// Both apps and users, timestamp, content (CUSTOMER_V2).
    Customer,
    /// Opaque content (GROUP_NOTIFICATION, SYSTEM, NOTIFICATION, the deprecated customer commands).
    Raw,
    /// banter-internal; never on a client connection.
    Internal,
}

/// What the protocol says about one command: its number and name, who may send it, whether it is
/// handled before authentication, whether it is stored (and so returned by sync), and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub number: u8,
    pub name: &'static str,
    /// A client may send it (the whitelist): any other command closes the connection before its body
    /// is read.
    pub from_client: bool,
    /// Handled (or deliberately ignored) before AUTH_TOKEN succeeded; the other client commands are
    /// ignored until then (docs/protocol.md §8.3).
    pub before_auth: bool,
    /// Stored in queues and returned by SYNC / SYNC_GROUP.
    pub persistent: bool,
    pub layout: Layout,
}

const fn c(
    number: u8,
    name: &'static str,
    from_client: bool,
    before_auth: bool,
    persistent: bool,
    layout: Layout,
) -> Command {
    Command {
        number,
        name,
        from_client,
        before_auth,
        persistent,
        layout,
    }
}

/// Every command banter knows. Columns: number, name, sent by clients, handled before
/// authentication, persistent, body layout.
#[rustfmt::skip]
pub const COMMANDS: &[Command] = &[
    c(AUTH_STATUS,        "AUTH_STATUS",        false, false, false, Layout::I32),
    c(IM,                 "IM",                 true,  false, true,  Layout::Im),
    c(ACK,                "ACK",                true,  true,  false, Layout::Ack),
    c(GROUP_NOTIFICATION, "GROUP_NOTIFICATION", false, false, true,  Layout::Raw),
    c(GROUP_IM,           "GROUP_IM",           true,  false, true,  Layout::Im),
    c(PING,               "PING",               true,  true,  false, Layout::Empty),
    c(PONG,               "PONG",               true,  true,  false, Layout::Empty),
    c(AUTH_TOKEN,         "AUTH_TOKEN",         true,  true,  false, Layout::AuthToken),
    c(RT,                 "RT",                 true,  false, false, Layout::Rt),
    c(ENTER_ROOM,         "ENTER_ROOM",         true,  false, false, Layout::Key),
    c(LEAVE_ROOM,         "LEAVE_ROOM",         true,  false, false, Layout::Key),
    c(ROOM_IM,            "ROOM_IM",            true,  false, false, Layout::Rt),
    c(SYSTEM,             "SYSTEM",             false, false, true,  Layout::Raw),
    c(UNREAD_COUNT,       "UNREAD_COUNT",       true,  false, false, Layout::I32),
    c(CUSTOMER_DEPRECATED, "CUSTOMER(deprecated)", true, true, false, Layout::Raw),
    c(CUSTOMER_SUPPORT_DEPRECATED, "CUSTOMER_SUPPORT(deprecated)", true, true, false, Layout::Raw),
    c(SYNC,               "SYNC",               true,  false, false, Layout::Key),
    c(SYNC_BEGIN,         "SYNC_BEGIN",         false, false, false, Layout::Key),
    c(SYNC_END,           "SYNC_END",           false, false, false, Layout::Key),
    c(SYNC_NOTIFY,        "SYNC_NOTIFY",        false, false, false, Layout::Key),
    c(SYNC_GROUP,         "SYNC_GROUP",         true,  false, false, Layout::GroupKey),
    c(SYNC_GROUP_BEGIN,   "SYNC_GROUP_BEGIN",   false, false, false, Layout::GroupKey),
    c(SYNC_GROUP_END,     "SYNC_GROUP_END",     false, false, false, Layout::GroupKey),
    c(SYNC_GROUP_NOTIFY,  "SYNC_GROUP_NOTIFY",  false, false, false, Layout::GroupKey),
    c(SYNC_KEY,           "SYNC_KEY",           true,  false, false, Layout::Key),
    c(GROUP_SYNC_KEY,     "GROUP_SYNC_KEY",     true,  false, false, Layout::GroupKey),
    c(NOTIFICATION,       "NOTIFICATION",       false, false, false, Layout::Raw),
    c(METADATA,           "METADATA",           true,  true,  false, Layout::Metadata),
    c(CUSTOMER_V2,        "CUSTOMER_V2",        true,  false, true,  Layout::Customer),
    c(KICK,               "KICK(internal)",     false, false, false, Layout::Internal),
];

/// Position of each command number in [`COMMANDS`], or `NONE`.
const NONE: u8 = u8::MAX;
const INDEX: [u8; 256] = {
    let mut t = [NONE; 256];
    let mut i = 0;
    while i < COMMANDS.len() {
        t[COMMANDS[i].number as usize] = i as u8;
        i += 1;
    }
    t
};

/// The table entry of `cmd`, if banter knows it.
pub const fn info(cmd: u8) -> Option<&'static Command> {
    match INDEX[cmd as usize] {
        NONE => None,
        i => Some(&COMMANDS[i as usize]),
    }
}

/// Whether a client may send `cmd` (the whitelist). Any other command closes the connection before
/// its body is read.
pub const fn client_allowed(cmd: u8) -> bool {
    matches!(info(cmd), Some(c) if c.from_client)
}

/// Whether a client command is handled before authentication (the others are ignored until then).
pub const fn before_auth(cmd: u8) -> bool {
    matches!(info(cmd), Some(c) if c.before_auth)
}

/// Whether messages of this command are persisted in queues and returned by sync.
pub const fn is_persistent(cmd: u8) -> bool {
    matches!(info(cmd), Some(c) if c.persistent)
}

/// A human-readable name for logs.
pub const fn name(cmd: u8) -> &'static str {
    match info(cmd) {
        Some(c) => c.name,
        None => "UNKNOWN",
    }
}
