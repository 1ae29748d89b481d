//! The group event stream (docs/compatibility.md, *GoBelieve's shared state*): the Redis stream
//! `group_manager_stream` and the action-id counter `groups_actions`.
//!
//! This module owns the wire shape of a group event (field names and values) and parsing entries
//! written by anyone (GoBelieve's API server, other banter nodes); reading, appending and action
//! ids are [`crate::action_stream`]'s.

use redis::streams::StreamId;

use crate::action_stream::{field, field_bool, field_int, Keys};

/// The stream and its action-id counter.
pub(crate) const KEYS: Keys = Keys {
    stream: "group_manager_stream",
    actions: "groups_actions",
};
/// The stream key.
pub(crate) const STREAM_KEY: &str = KEYS.stream;

/// The fields of an event besides the action ids, in the order of [`GroupEvent::values`].
pub(crate) const FIELDS: &[&str] = &["name", "app_id", "group_id", "member_id", "super", "mute"];

/// What an event says happened (the `name` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Create,
    Disband,
    Upgrade,
    Changed,
    MemberAdd,
    MemberRemove,
    MemberMute,
}

impl EventKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            EventKind::Create => "group_create",
            EventKind::Disband => "group_disband",
            EventKind::Upgrade => "group_upgrade",
            EventKind::Changed => "group_changed",
            EventKind::MemberAdd => "group_member_add",
            EventKind::MemberRemove => "group_member_remove",
            EventKind::MemberMute => "group_member_mute",
        }
    }

    fn parse(name: &str) -> Option<EventKind> {
        Some(match name {
            "group_create" => EventKind::Create,
            "group_disband" => EventKind::Disband,
            "group_upgrade" => EventKind::Upgrade,
            "group_changed" => EventKind::Changed,
            "group_member_add" => EventKind::MemberAdd,
            "group_member_remove" => EventKind::MemberRemove,
            "group_member_mute" => EventKind::MemberMute,
            _ => return None,
        })
    }
}

/// One group event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEvent {
    pub kind: EventKind,
    pub appid: i64,
    pub gid: i64,
    /// 0 for group-level events.
    pub member: i64,
    pub super_group: bool,
    pub mute: bool,
}

impl GroupEvent {
    pub(crate) fn group(kind: EventKind, appid: i64, gid: i64) -> GroupEvent {
        GroupEvent {
            kind,
            appid,
            gid,
            member: 0,
            super_group: false,
            mute: false,
        }
    }

    pub(crate) fn member(kind: EventKind, appid: i64, gid: i64, member: i64) -> GroupEvent {
        GroupEvent {
            member,
            ..GroupEvent::group(kind, appid, gid)
        }
    }

    /// The values of [`FIELDS`].
    pub(crate) fn values(&self) -> Vec<String> {
        vec![
            self.kind.name().to_owned(),
            self.appid.to_string(),
            self.gid.to_string(),
            self.member.to_string(),
            i64::from(self.super_group).to_string(),
            i64::from(self.mute).to_string(),
        ]
    }
}

/// The event of a stream entry; `None` for an unknown event name. Missing or malformed ids are 0.
pub(crate) fn parse_event(id: &StreamId) -> Option<GroupEvent> {
    let kind = EventKind::parse(&field(id, "name")?)?;
    Some(GroupEvent {
        kind,
        appid: field_int(id, "app_id").unwrap_or(0),
        gid: field_int(id, "group_id").unwrap_or(0),
        member: field_int(id, "member_id").unwrap_or(0),
        super_group: field_bool(id, "super"),
        mute: field_bool(id, "mute"),
    })
}
