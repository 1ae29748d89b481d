//! Which offline-push job a stored message makes: the one mapping from a message (its command and
//! stored body) to a [`PushJob`], shared by the access node (single node: it knows who is offline)
//! and the router (cluster mode: it does).

use bytes::Bytes;
use proto::Body;

use crate::push::PushJob;

fn text(content: &[u8]) -> String {
    String::from_utf8_lossy(content).into_owned()
}

impl PushJob {
    /// The job for message `cmd` (body in the layout of `version`) of app `appid` whose receivers
    /// `offline` (non-empty) are offline: a GROUP_IM lists them; an IM names its own receiver; a
    /// SYSTEM message the first of them; a CUSTOMER_V2 its own fields (GoBelieve's rules for its push
    /// queues). Other commands, and bodies that do not decode, make none.
    pub fn for_message(
        appid: i64,
        cmd: u8,
        version: u8,
        body: &Bytes,
        offline: Vec<i64>,
    ) -> Option<PushJob> {
        let first = *offline.first()?;
        match Body::decode(cmd, version, body).ok()? {
            Body::Im(im) => Some(PushJob::Peer {
                appid,
                sender: im.sender,
                receiver: im.receiver,
                content: text(&im.content),
            }),
            Body::GroupIm(im) => Some(PushJob::Group {
                appid,
                sender: im.sender,
                group_id: im.receiver,
                receivers: offline,
                content: text(&im.content),
            }),
            Body::System(content) => Some(PushJob::System {
                appid,
                receiver: first,
                content: text(&content),
            }),
            Body::Customer(c) => Some(PushJob::Customer {
                sender_appid: c.sender_appid,
                sender: c.sender,
                receiver_appid: c.receiver_appid,
                receiver: c.receiver,
                content: text(&c.content),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{cmd, Customer, Im};

    fn im(receiver: i64) -> Im {
        Im {
            sender: 1,
            receiver,
            timestamp: 5,
            msgid: 0,
            content: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn each_command_makes_its_job() {
        let peer = Body::Im(im(2)).to_stored();
        assert_eq!(
            PushJob::for_message(7, cmd::IM, 2, &peer, vec![99]),
            Some(PushJob::Peer {
                appid: 7,
                sender: 1,
                receiver: 2,
                content: "hi".into()
            })
        );
        let group = Body::GroupIm(im(30)).to_stored();
        assert_eq!(
            PushJob::for_message(7, cmd::GROUP_IM, 2, &group, vec![3, 4]),
            Some(PushJob::Group {
                appid: 7,
                sender: 1,
                group_id: 30,
                receivers: vec![3, 4],
                content: "hi".into()
            })
        );
        let system = Bytes::from_static(b"sys");
        assert_eq!(
            PushJob::for_message(7, cmd::SYSTEM, 2, &system, vec![5, 6]),
            Some(PushJob::System {
                appid: 7,
                receiver: 5,
                content: "sys".into()
            })
        );
        let c = Body::Customer(Customer {
            sender_appid: 1,
            sender: 2,
            receiver_appid: 3,
            receiver: 4,
            timestamp: 0,
            content: Bytes::from_static(b"c"),
        })
        .to_stored();
        assert_eq!(
            PushJob::for_message(3, cmd::CUSTOMER_V2, 2, &c, vec![4]),
            Some(PushJob::Customer {
                sender_appid: 1,
                sender: 2,
                receiver_appid: 3,
                receiver: 4,
                content: "c".into()
            })
        );
    }

    #[test]
    fn no_job_without_receivers_for_other_commands_or_bad_bodies() {
        let peer = Body::Im(im(2)).to_stored();
        assert_eq!(PushJob::for_message(7, cmd::IM, 2, &peer, vec![]), None);
        let rt = Bytes::from(vec![0u8; 16]);
        assert_eq!(PushJob::for_message(7, cmd::RT, 2, &rt, vec![1]), None);
        assert_eq!(
            PushJob::for_message(7, cmd::IM, 2, &peer.slice(..10), vec![1]),
            None
        );
    }
}
