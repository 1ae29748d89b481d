//! The group event stream (docs/compatibility.md, *GoBelieve's shared state*): the Redis stream
//! `group_manager_stream` and the action-id counter `groups_actions`
//! (`"<previous_action_id>:<action_id>"`).
//!
//! This module owns the wire shape of an event (field names and values), parsing entries written by
//! anyone (GoBelieve's API server, other banter nodes), and appending events: one Lua script reads
//! `groups_actions`, numbers the events consecutively, XADDs them and stores the new counter, so
//! concurrent writers never produce a gap or a duplicate action id.

use std::fmt;

use redis::aio::ConnectionManager;
use redis::streams::StreamId;
use redis::{Script, Value};

use crate::BackendError;

/// The stream key.
pub(crate) const STREAM_KEY: &str = "group_manager_stream";
/// The action-id counter key.
pub(crate) const ACTIONS_KEY: &str = "groups_actions";

/// KEYS[1] = groups_actions, KEYS[2] = group_manager_stream; ARGV[1] = MAXLEN (0 = no trimming);
/// then 6 arguments per event: name, app_id, group_id, member_id, super, mute.
/// Returns the stream id of the last entry added.
const APPEND_LUA: &str = r"
local cur = 0
local v = redis.call('GET', KEYS[1])
if v then
  local n = string.match(v, ':%s*(%d+)%s*$')
  if n then cur = tonumber(n) end
end
local prev = cur
local last = false
for i = 2, #ARGV, 6 do
  prev = cur
  cur = cur + 1
  local fields = {'action_id', string.format('%d', cur), 'previous_action_id', string.format('%d', prev),
    'name', ARGV[i], 'app_id', ARGV[i + 1], 'group_id', ARGV[i + 2], 'member_id', ARGV[i + 3],
    'super', ARGV[i + 4], 'mute', ARGV[i + 5]}
  if ARGV[1] ~= '0' then
    last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  else
    last = redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
end
redis.call('SET', KEYS[1], string.format('%d:%d', prev, cur))
return last
";

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
}

/// A stream entry id `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamPos {
    pub ms: u64,
    pub seq: u64,
}

impl StreamPos {
    pub(crate) fn parse(s: &str) -> Option<StreamPos> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamPos {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A parsed stream entry. Fields that are missing or malformed are `None`.
#[derive(Debug)]
pub(crate) struct Entry {
    pub pos: Option<StreamPos>,
    pub action_id: Option<i64>,
    pub previous_action_id: Option<i64>,
    /// `None` for an unknown event name.
    pub event: Option<GroupEvent>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(id: &StreamId, field: &str) -> Option<i64> {
    id.map.get(field).and_then(text)?.trim().parse().ok()
}

/// `1/0` or `true/false` (GoBelieve's writers use both); missing or anything else is false.
fn boolean(id: &StreamId, field: &str) -> bool {
    matches!(
        id.map.get(field).and_then(text).as_deref().map(str::trim),
        Some("1") | Some("true") | Some("TRUE") | Some("True")
    )
}

pub(crate) fn parse_entry(id: &StreamId) -> Entry {
    let event = id
        .map
        .get("name")
        .and_then(text)
        .and_then(|n| EventKind::parse(n.trim()))
        .map(|kind| GroupEvent {
            kind,
            appid: int(id, "app_id").unwrap_or(0),
            gid: int(id, "group_id").unwrap_or(0),
            member: int(id, "member_id").unwrap_or(0),
            super_group: boolean(id, "super"),
            mute: boolean(id, "mute"),
        });
    Entry {
        pos: StreamPos::parse(&id.id),
        action_id: int(id, "action_id"),
        previous_action_id: int(id, "previous_action_id"),
        event,
    }
}

/// The second number of `groups_actions` (0 when missing or malformed, with a warning).
fn parse_actions(value: Option<String>) -> i64 {
    let Some(v) = value else { return 0 };
    match v.rsplit(':').next().map(|n| n.trim().parse::<i64>()) {
        Some(Ok(n)) if v.contains(':') => n,
        _ => {
            tracing::warn!(value = %v, "malformed {ACTIONS_KEY}; starting from action id 0");
            0
        }
    }
}

/// Where a follower starts: the current action id and the id of the newest stream entry
/// (`0-0` when the stream is empty), read atomically.
pub(crate) async fn start_position(
    conn: &mut ConnectionManager,
) -> Result<(i64, StreamPos), BackendError> {
    let (actions, newest): (Option<String>, Vec<StreamId>) = redis::pipe()
        .atomic()
        .get(ACTIONS_KEY)
        .cmd("XREVRANGE")
        .arg(STREAM_KEY)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async::<(Option<String>, redis::streams::StreamRangeReply)>(conn)
        .await
        .map(|(a, r)| (a, r.ids))?;
    let pos = newest
        .first()
        .and_then(|e| StreamPos::parse(&e.id))
        .unwrap_or_default();
    Ok((parse_actions(actions), pos))
}

/// Appends events with consecutive action ids.
pub(crate) struct StreamWriter {
    conn: ConnectionManager,
    script: Script,
    max_len: u64,
}

impl StreamWriter {
    pub(crate) fn new(conn: ConnectionManager, max_len: u64) -> StreamWriter {
        StreamWriter {
            conn,
            script: Script::new(APPEND_LUA),
            max_len,
        }
    }

    /// Append `events` in order; returns the stream id of the last one.
    pub(crate) async fn append(&self, events: &[GroupEvent]) -> Result<StreamPos, BackendError> {
        let mut inv = self.script.key(ACTIONS_KEY);
        inv.key(STREAM_KEY).arg(self.max_len);
        for e in events {
            inv.arg(e.kind.name())
                .arg(e.appid)
                .arg(e.gid)
                .arg(e.member)
                .arg(i64::from(e.super_group))
                .arg(i64::from(e.mute));
        }
        let id: String = inv.invoke_async(&mut self.conn.clone()).await?;
        StreamPos::parse(&id).ok_or_else(|| {
            BackendError::Corrupt(format!("XADD returned a malformed stream id {id:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_counters() {
        let a = StreamPos::parse("1700000000000-3").expect("parse");
        let b = StreamPos::parse("1700000000001-0").expect("parse");
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-3");
        assert_eq!(StreamPos::parse("garbage"), None);
        assert_eq!(parse_actions(Some("4:5".into())), 5);
        assert_eq!(parse_actions(Some("x".into())), 0);
        assert_eq!(parse_actions(None), 0);
    }
}
