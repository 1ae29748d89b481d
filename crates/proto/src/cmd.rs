//! Command numbers (header byte 8) and the client whitelist (spec §4).

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

/// Whether a client may send `cmd` (the "C→S allowed" column of spec §4). Any other command closes the
/// connection before its body is read.
pub const fn client_allowed(cmd: u8) -> bool {
    matches!(
        cmd,
        IM | ACK
            | GROUP_IM
            | PING
            | PONG
            | AUTH_TOKEN
            | RT
            | ENTER_ROOM
            | LEAVE_ROOM
            | ROOM_IM
            | UNREAD_COUNT
            | CUSTOMER_DEPRECATED
            | CUSTOMER_SUPPORT_DEPRECATED
            | SYNC
            | SYNC_GROUP
            | SYNC_KEY
            | GROUP_SYNC_KEY
            | METADATA
            | CUSTOMER_V2
    )
}

/// Whether messages of this command are persisted in queues and returned by sync (spec §9.7).
pub const fn is_persistent(cmd: u8) -> bool {
    matches!(
        cmd,
        IM | GROUP_NOTIFICATION | GROUP_IM | SYSTEM | CUSTOMER_V2
    )
}

/// A human-readable name for logs.
pub const fn name(cmd: u8) -> &'static str {
    match cmd {
        AUTH_STATUS => "AUTH_STATUS",
        IM => "IM",
        ACK => "ACK",
        GROUP_NOTIFICATION => "GROUP_NOTIFICATION",
        GROUP_IM => "GROUP_IM",
        PING => "PING",
        PONG => "PONG",
        AUTH_TOKEN => "AUTH_TOKEN",
        RT => "RT",
        ENTER_ROOM => "ENTER_ROOM",
        LEAVE_ROOM => "LEAVE_ROOM",
        ROOM_IM => "ROOM_IM",
        SYSTEM => "SYSTEM",
        UNREAD_COUNT => "UNREAD_COUNT",
        CUSTOMER_DEPRECATED => "CUSTOMER(deprecated)",
        CUSTOMER_SUPPORT_DEPRECATED => "CUSTOMER_SUPPORT(deprecated)",
        SYNC => "SYNC",
        SYNC_BEGIN => "SYNC_BEGIN",
        SYNC_END => "SYNC_END",
        SYNC_NOTIFY => "SYNC_NOTIFY",
        SYNC_GROUP => "SYNC_GROUP",
        SYNC_GROUP_BEGIN => "SYNC_GROUP_BEGIN",
        SYNC_GROUP_END => "SYNC_GROUP_END",
        SYNC_GROUP_NOTIFY => "SYNC_GROUP_NOTIFY",
        SYNC_KEY => "SYNC_KEY",
        GROUP_SYNC_KEY => "GROUP_SYNC_KEY",
        NOTIFICATION => "NOTIFICATION",
        METADATA => "METADATA",
        CUSTOMER_V2 => "CUSTOMER_V2",
        KICK => "KICK(internal)",
        _ => "UNKNOWN",
    }
}
