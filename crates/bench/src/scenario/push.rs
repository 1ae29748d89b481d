//! `push`: offline push throughput. A local APNs stand-in (`push::mock`: HTTP/2 over TLS, checking
//! every provider token) plays Apple; the child server is started with `push.backend = "native"`
//! pointing at it. `users` offline users each get an APNs device bound through the app API; then
//! `senders` online clients send one text message to each offline user (a window of un-ACKed
//! messages per sender). Reported: the IM rate (messages ACKed per second) while pushes flow, and
//! the push rate (requests the local APNs accepted per second, from the first message to the last
//! push). The run fails unless every offline user's device got exactly one push.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BufMut;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::BenchError;
use crate::client::{Client, Event, Kind};
use crate::env::Env;
use crate::http::HttpClient;
use crate::report::Report;

/// Parameters of the `push` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PushOptions {
    pub users: usize,
    pub senders: usize,
    pub window: usize,
}

/// The APNs device token of offline user `uid`.
fn device(uid: i64) -> String {
    format!("{:064x}", uid)
}

/// Runs the scenario against a server already configured to push to `mock`.
pub async fn run(
    env: &Env,
    o: &PushOptions,
    mock: &push::mock::MockProvider,
) -> Result<Report, BenchError> {
    if o.users == 0 || o.senders == 0 || o.window == 0 {
        return Err(BenchError::Setup(
            "--users, --senders and --window must be >= 1".into(),
        ));
    }
    let Some((api, _)) = &env.api else {
        return Err(BenchError::Setup(
            "the push scenario needs the server's HTTP API".into(),
        ));
    };
    let mut report = Report::new(
        "push",
        serde_json::to_value(o).unwrap_or_default(),
        env.transport(),
    );
    let offline: Vec<i64> = (0..o.users as i64).map(|i| env.uid_base + i).collect();
    let senders: Vec<i64> = (0..o.senders as i64)
        .map(|i| env.uid_base + o.users as i64 + i)
        .collect();
    let offline_tokens = env.tokens.issue(env.appid, &offline).await?;
    let sender_tokens = env.tokens.issue(env.appid, &senders).await?;

    // Bind one APNs device per offline user through the app API, 16 at a time.
    let setup = Instant::now();
    let pairs: Vec<(i64, String)> = offline.iter().copied().zip(offline_tokens).collect();
    let mut tasks = JoinSet::new();
    for part in pairs.chunks(pairs.len().div_ceil(16)) {
        let part = part.to_vec();
        let base = api.clone();
        tasks.spawn(async move {
            for (uid, token) in part {
                let mut c = HttpClient::new(base.clone(), Some(token));
                let body = json!({ "apns_device_token": device(uid) }).to_string();
                let (st, resp) = c
                    .request("POST", "/v2/device/bind", Some(body.as_bytes()))
                    .await?;
                if st != 200 {
                    return Err(BenchError::Setup(format!(
                        "binding a device answered {st}: {}",
                        String::from_utf8_lossy(&resp)
                    )));
                }
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let setup_secs = setup.elapsed().as_secs_f64();

    let mut clients = Vec::new();
    for (i, (uid, token)) in senders.iter().zip(sender_tokens).enumerate() {
        clients.push(Client::connect(&env.connect_options(i, *uid, token)).await?);
    }
    let per_sender: Vec<Vec<i64>> = (0..o.senders)
        .map(|s| offline.iter().copied().skip(s).step_by(o.senders).collect())
        .collect();
    let before = mock.count("apns");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (mut c, targets) in clients.into_iter().zip(per_sender) {
        let window = o.window;
        tasks.spawn(async move {
            let mut next = 0;
            let mut acked = 0;
            let mut in_flight = 0;
            while acked < targets.len() {
                while in_flight < window && next < targets.len() {
                    c.queue_message(Kind::Peer, targets[next], 0, |b| {
                        b.put_slice(br#"{"text":"push bench"}"#)
                    });
                    next += 1;
                    in_flight += 1;
                }
                c.flush().await?;
                if let Event::Ack { .. } = c.next_event().await? {
                    acked += 1;
                    in_flight -= 1;
                }
            }
            Ok::<usize, crate::client::ClientError>(acked)
        });
    }
    let mut acked = 0;
    while let Some(r) = tasks.join_next().await {
        acked += r.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let im_secs = started.elapsed().as_secs_f64();
    let want = before + o.users;
    let deadline = Instant::now() + env.duration;
    while mock.count("apns") < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let push_secs = started.elapsed().as_secs_f64();
    // Anything late would show up as a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = mock.requests_of("apns");
    let mut per_device: HashMap<String, usize> = HashMap::new();
    let mut unauthorized = 0;
    for r in requests.iter().skip(before) {
        *per_device.entry(r.path.clone()).or_default() += 1;
        if !r.authorized {
            unauthorized += 1;
        }
    }
    let twice = per_device.values().filter(|&&n| n > 1).count();
    let missing = offline
        .iter()
        .filter(|u| !per_device.contains_key(&format!("/3/device/{}", device(**u))))
        .count();
    if missing > 0 {
        report.fail(format!("{missing} offline users got no push"));
    }
    if twice > 0 {
        report.fail(format!("{twice} devices got more than one push"));
    }
    if unauthorized > 0 {
        report.fail(format!("{unauthorized} pushes with a bad provider token"));
    }
    let pushes = per_device.values().sum::<usize>();
    report.duration_secs = push_secs;
    let figures = json!({
        "messages_acked": acked,
        "im_messages_per_sec": acked as f64 / im_secs.max(1e-9),
        "pushes": pushes,
        "pushes_per_sec": pushes as f64 / push_secs.max(1e-9),
        "im_secs": im_secs,
        "push_secs": push_secs,
        "device_bind_secs": setup_secs,
    });
    if let serde_json::Value::Object(m) = figures {
        report.extra.extend(m);
    }
    report.notes.push(format!(
        "{acked} messages ACKed in {im_secs:.2} s ({:.0}/s); {pushes} pushes accepted by the local APNs in {push_secs:.2} s ({:.0}/s)",
        acked as f64 / im_secs.max(1e-9),
        pushes as f64 / push_secs.max(1e-9)
    ));
    Ok(report)
}
