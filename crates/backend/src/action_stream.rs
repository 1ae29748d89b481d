//! GoBelieve's action streams (docs/compatibility.md, *GoBelieve's shared state*): a Redis stream of
//! change events (`group_manager_stream`, `relationship_stream`) whose entries carry consecutive
//! action ids, with the newest kept in a counter key (`groups_actions`, `friends_actions`:
//! `"<previous_action_id>:<action_id>"`).
//!
//! This module owns what both streams share: stream positions, reading an entry's fields, where a
//! follower starts, appending events with consecutive action ids (one Lua script reads the counter,
//! numbers the events, XADDs them and stores the new counter, so concurrent writers never produce
//! a gap or a duplicate), and the follower loop — `XREAD BLOCK` on a dedicated connection,
//! reconnecting with back-off, checking that action ids follow each other — which hands each read
//! round to a [`Follower`]. What an event means is the business of its directory
//! (`groups`, `relations`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Script, Value};

use crate::BackendError;

/// Entries per XREAD.
const READ_COUNT: usize = 1000;
/// XREAD BLOCK time.
const BLOCK: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The two keys of one action stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keys {
    /// The stream.
    pub stream: &'static str,
    /// The action-id counter.
    pub actions: &'static str,
}

/// KEYS[1] = the counter, KEYS[2] = the stream; ARGV[1] = MAXLEN (0 = no trimming), ARGV[2] = the
/// number of fields per event, then the field names, then the values of each event in turn.
/// Returns the stream id of the last entry added.
const APPEND_LUA: &str = r"
local cur = 0
local v = redis.call('GET', KEYS[1])
if v then
  local n = string.match(v, ':%s*(%d+)%s*$')
  if n then cur = tonumber(n) end
end
local nf = tonumber(ARGV[2])
local prev = cur
local last = false
for i = 3 + nf, #ARGV, nf do
  prev = cur
  cur = cur + 1
  local fields = {'action_id', string.format('%d', cur), 'previous_action_id', string.format('%d', prev)}
  for j = 0, nf - 1 do
    fields[#fields + 1] = ARGV[3 + j]
    fields[#fields + 1] = ARGV[i + j]
  end
  if ARGV[1] ~= '0' then
    last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  else
    last = redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
end
redis.call('SET', KEYS[1], string.format('%d:%d', prev, cur))
return last
";

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

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The field as text, trimmed.
pub(crate) fn field(id: &StreamId, name: &str) -> Option<String> {
    id.map.get(name).and_then(text).map(|s| s.trim().to_owned())
}

/// The field as an integer; missing or malformed is `None`.
pub(crate) fn field_int(id: &StreamId, name: &str) -> Option<i64> {
    field(id, name)?.parse().ok()
}

/// `1/0` or `true/false` (GoBelieve's writers use both); missing or anything else is false.
pub(crate) fn field_bool(id: &StreamId, name: &str) -> bool {
    matches!(
        field(id, name).as_deref(),
        Some("1") | Some("true") | Some("TRUE") | Some("True")
    )
}

/// The second number of the counter (0 when missing or malformed, with a warning).
fn parse_actions(key: &str, value: Option<String>) -> i64 {
    let Some(v) = value else { return 0 };
    match v.rsplit(':').next().map(|n| n.trim().parse::<i64>()) {
        Some(Ok(n)) if v.contains(':') => n,
        _ => {
            tracing::warn!(value = %v, "malformed {key}; starting from action id 0");
            0
        }
    }
}

/// Where a follower starts: the current action id and the id of the newest stream entry
/// (`0-0` when the stream is empty), read atomically. Older events are never replayed: the
/// caches start empty.
pub(crate) async fn start_position(
    conn: &mut ConnectionManager,
    keys: Keys,
) -> Result<(i64, StreamPos), BackendError> {
    let (actions, newest): (Option<String>, Vec<StreamId>) = redis::pipe()
        .atomic()
        .get(keys.actions)
        .cmd("XREVRANGE")
        .arg(keys.stream)
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
    Ok((parse_actions(keys.actions, actions), pos))
}

/// Appends events with consecutive action ids.
pub(crate) struct StreamWriter {
    conn: ConnectionManager,
    script: Script,
    keys: Keys,
    /// The names of every event's fields besides the action ids.
    fields: &'static [&'static str],
    max_len: u64,
}

impl StreamWriter {
    pub(crate) fn new(
        conn: ConnectionManager,
        keys: Keys,
        fields: &'static [&'static str],
        max_len: u64,
    ) -> StreamWriter {
        StreamWriter {
            conn,
            script: Script::new(APPEND_LUA),
            keys,
            fields,
            max_len,
        }
    }

    /// Append `events` in order, each the values of [`StreamWriter::new`]'s `fields`; returns the
    /// stream id of the last one.
    pub(crate) async fn append(&self, events: &[Vec<String>]) -> Result<StreamPos, BackendError> {
        let mut inv = self.script.key(self.keys.actions);
        inv.key(self.keys.stream)
            .arg(self.max_len)
            .arg(self.fields.len());
        for name in self.fields {
            inv.arg(*name);
        }
        for e in events {
            debug_assert_eq!(e.len(), self.fields.len());
            for v in e {
                inv.arg(v);
            }
        }
        let id: String = inv.invoke_async(&mut self.conn.clone()).await?;
        StreamPos::parse(&id).ok_or_else(|| {
            BackendError::Corrupt(format!("XADD returned a malformed stream id {id:?}"))
        })
    }
}

/// One read round handed to a [`Follower`].
pub(crate) struct Round {
    /// The entries, in stream order.
    pub entries: Vec<StreamId>,
    /// An action id did not follow the previous one (a writer skipped one, a trimmed stream) or an
    /// entry had none: events may be missing, so cached state can no longer be trusted.
    pub out_of_sequence: bool,
}

/// What a directory does with its stream.
pub(crate) trait Follower: Send + Sync + 'static {
    /// Apply one read round, in order.
    fn apply(&self, round: Round) -> impl Future<Output = ()> + Send;
    /// The follower reconnected: events may have been missed.
    fn reconnected(&self);
    /// Everything up to `pos` is applied.
    fn applied(&self, pos: StreamPos);
}

/// The connection of a directory's writer and start-up reads: reconnecting, with short timeouts.
pub(crate) async fn writer_connection(
    client: &redis::Client,
) -> Result<ConnectionManager, BackendError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(5))
        .set_factor(2)
        .set_max_delay(1000)
        .set_number_of_retries(2);
    Ok(ConnectionManager::new_with_config(client.clone(), config).await?)
}

/// The dedicated connection of a follower (its reads block for [`BLOCK`]).
pub(crate) async fn follower_connection(
    client: &redis::Client,
) -> Result<MultiplexedConnection, BackendError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(BLOCK + Duration::from_secs(5));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The follower task: read the stream from `pos` forever, handing each round to `f`.
pub(crate) async fn follow<F: Follower>(
    f: Arc<F>,
    keys: Keys,
    client: redis::Client,
    conn: MultiplexedConnection,
    mut pos: StreamPos,
    mut action_id: i64,
) {
    let mut conn = Some(conn);
    let mut backoff = BACKOFF_MIN;
    let options = StreamReadOptions::default()
        .count(READ_COUNT)
        .block(BLOCK.as_millis() as usize);
    loop {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match follower_connection(&client).await {
                Ok(c) => {
                    tracing::info!(stream = keys.stream, "stream follower reconnected");
                    f.reconnected();
                    backoff = BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    tracing::warn!(stream = keys.stream, error = %e, ?backoff, "cannot reconnect the stream follower");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let read: Result<Option<StreamReadReply>, redis::RedisError> = c
            .xread_options(&[keys.stream], &[pos.to_string()], &options)
            .await;
        match read {
            Ok(reply) => {
                let entries: Vec<StreamId> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .collect();
                let last = entries.iter().rev().find_map(|e| StreamPos::parse(&e.id));
                if let Some(last) = last {
                    let out_of_sequence = check_sequence(keys, &entries, &mut action_id);
                    f.apply(Round {
                        entries,
                        out_of_sequence,
                    })
                    .await;
                    pos = last;
                    f.applied(pos);
                }
                conn = Some(c);
            }
            Err(e) => {
                tracing::warn!(stream = keys.stream, error = %e, ?backoff, "stream read failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Advances `action_id` over the round; true when an id did not follow its predecessor.
fn check_sequence(keys: Keys, entries: &[StreamId], action_id: &mut i64) -> bool {
    let mut out_of_sequence = false;
    for entry in entries {
        match (
            field_int(entry, "previous_action_id"),
            field_int(entry, "action_id"),
        ) {
            (Some(prev), Some(id)) => {
                if prev != *action_id {
                    tracing::info!(
                        stream = keys.stream,
                        expected = *action_id,
                        previous_action_id = prev,
                        action_id = id,
                        "action ids out of sequence; the cache starts over"
                    );
                    out_of_sequence = true;
                }
                *action_id = id;
            }
            _ => {
                tracing::warn!(
                    stream = keys.stream,
                    entry = %entry.id,
                    "event without valid action ids; the cache starts over"
                );
                out_of_sequence = true;
            }
        }
    }
    out_of_sequence
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
        assert_eq!(parse_actions("k", Some("4:5".into())), 5);
        assert_eq!(parse_actions("k", Some("x".into())), 0);
        assert_eq!(parse_actions("k", None), 0);
    }

    #[test]
    fn action_ids_must_follow_each_other() {
        let keys = Keys {
            stream: "s",
            actions: "a",
        };
        let entry = |prev: i64, id: i64| StreamId {
            id: "1-0".into(),
            map: [
                (
                    "previous_action_id".to_owned(),
                    Value::BulkString(prev.to_string().into_bytes()),
                ),
                (
                    "action_id".to_owned(),
                    Value::BulkString(id.to_string().into_bytes()),
                ),
            ]
            .into_iter()
            .collect(),
        };
        let mut at = 4;
        assert!(!check_sequence(keys, &[entry(4, 5), entry(5, 6)], &mut at));
        assert_eq!(at, 6);
        assert!(check_sequence(keys, &[entry(7, 8)], &mut at));
        assert_eq!(at, 8);
        let bare = StreamId {
            id: "2-0".into(),
            map: Default::default(),
        };
        assert!(check_sequence(keys, &[bare], &mut at));
    }
}
