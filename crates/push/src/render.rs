//! What a push says: the title and body built from a job's message content, in the app's
//! language. Content is GoBelieve's JSON (`{"text": …}`, `{"image": …}`, `{"audio": …}`, …); text
//! is shown (shortened), other kinds become their placeholder (`[image]`, `[voice]`, …), content
//! that is not JSON is shown as it is.

use serde_json::Value;

use crate::config::Texts;

/// Longest body, in characters (APNs payloads are limited to 4 KiB, FCM's to 4 KB).
pub const MAX_BODY_CHARS: usize = 200;

/// Which conversation a notification belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Conversation {
    Peer { sender: i64 },
    Group { sender: i64, group_id: i64 },
    Customer { sender_appid: i64, sender: i64 },
    System,
}

impl Conversation {
    /// A collapse id / key naming the conversation.
    pub fn collapse_id(&self) -> String {
        match self {
            Conversation::Peer { sender } => format!("peer-{sender}"),
            Conversation::Group { group_id, .. } => format!("group-{group_id}"),
            Conversation::Customer {
                sender_appid,
                sender,
            } => format!("customer-{sender_appid}-{sender}"),
            Conversation::System => "system".into(),
        }
    }
}

/// One rendered notification for one receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub conversation: Conversation,
    pub title: String,
    pub body: String,
    /// The receiver's unread count, this message included.
    pub badge: i32,
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_BODY_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The body of a message with this content.
pub fn body(content: &str, texts: &Texts) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(content) else {
        return if content.trim().is_empty() {
            texts.message.clone()
        } else {
            shorten(content)
        };
    };
    if let Some(Value::String(t)) = map.get("text") {
        return shorten(t);
    }
    let kind = [
        ("image", &texts.image),
        ("image2", &texts.image),
        ("audio", &texts.voice),
        ("voice", &texts.voice),
        ("file", &texts.file),
        ("video", &texts.video),
        ("location", &texts.location),
    ]
    .into_iter()
    .find(|(k, _)| map.contains_key(*k));
    match kind {
        Some((_, t)) => t.clone(),
        None => texts.message.clone(),
    }
}

/// The title: the sender's name when known; system messages get the `system` text.
pub fn title(conversation: &Conversation, sender_name: &str, texts: &Texts) -> String {
    match conversation {
        Conversation::System => texts.system.clone(),
        _ => sender_name.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_of_each_content_kind() {
        let en = Texts::english();
        assert_eq!(body(r#"{"text":"hello"}"#, &en), "hello");
        assert_eq!(body(r#"{"image2":{"url":"x"}}"#, &en), "[image]");
        assert_eq!(
            body(r#"{"audio":{"url":"x","duration":3}}"#, &en),
            "[voice]"
        );
        assert_eq!(body(r#"{"file":{"url":"x"}}"#, &en), "[file]");
        assert_eq!(body(r#"{"weird":1}"#, &en), "[message]");
        assert_eq!(body("plain words", &en), "plain words");
        assert_eq!(body(r#"{"image":"u"}"#, &Texts::chinese()), "[图片]");
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(500));
        let b = body(&long, &en);
        assert_eq!(b.chars().count(), MAX_BODY_CHARS + 1);
        assert!(b.ends_with('…'));
    }
}
