//! `media`: the app API under load — concurrent clients upload images and voice clips the way the
//! SDKs do (`POST /v2/images` with `image/png`, `POST /v2/audios` with `audio/amr`) and download
//! them again, each client on its own keep-alive HTTP connection with its own user token.
//!
//! Four phases, one after the other: image uploads, image downloads, voice uploads, voice
//! downloads. Every upload is unique (a per-upload trailer), so each one is really stored; every
//! download is compared byte for byte with what was uploaded (regenerated, not kept in memory).
//! Per phase: operations/s, MB/s, latency percentiles, and the server's largest resident set
//! size sampled every 100 ms (streaming keeps it flat however large the files are). Any failed
//! request or mismatched byte fails the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use node::reqwest;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{progress_bar, BenchError};
use crate::env::Env;
use crate::report::{new_histogram, Report, Sample};

/// Parameters of the `media` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct MediaOptions {
    /// Concurrent clients (one user and one connection each).
    pub clients: usize,
    /// Image uploads in all (and as many downloads).
    pub images: u64,
    /// Bytes per image (a noise PNG, which does not compress).
    pub image_size: usize,
    /// Voice uploads in all (and as many downloads).
    pub voices: u64,
    /// Bytes per voice clip (AMR header and noise).
    pub voice_size: usize,
    /// The app API's path prefix.
    pub prefix: String,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            clients: 50,
            images: 2_000,
            image_size: 100_000,
            voices: 500,
            voice_size: 1_000_000,
            prefix: "/v2".into(),
        }
    }
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum MediaReqError {
    #[error("{0}")]
    Http(String),
    #[error("malformed HTTP answer")]
    Malformed,
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("downloaded bytes differ from the upload")]
    Mismatch,
    #[error("timed out")]
    Timeout,
}

impl From<reqwest::Error> for MediaReqError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            MediaReqError::Timeout
        } else {
            MediaReqError::Http(e.to_string())
        }
    }
}

/// Bound on one request (upload or download).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One client's keep-alive HTTP/1.1 connection, as an SDK holds it: a client of the project's HTTP
/// client (`node::http_client`) of its own, keeping at most one idle connection.
struct Conn {
    client: reqwest::Client,
    base: String,
    auth: String,
}

impl Conn {
    fn new(addr: std::net::SocketAddr, token: &str) -> Result<Conn, MediaReqError> {
        let client = node::http_client::builder(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(1)
            .user_agent("banter-bench")
            .build()?;
        Ok(Conn {
            client,
            base: format!("http://{addr}"),
            auth: format!("Bearer {token}"),
        })
    }

    /// One request with the client's bearer token; a 2xx answer's body, or the error.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Bytes, MediaReqError> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.auth);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct).body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        if !(200..300).contains(&status) {
            return Err(MediaReqError::Status {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            });
        }
        Ok(body)
    }
}

/// Deterministic noise (xorshift) for a seed.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A noise PNG of about `size` bytes.
fn base_png(size: usize) -> Vec<u8> {
    let side = ((size / 3) as f64).sqrt().max(1.0) as u32;
    let px = noise((side * side * 3) as usize, 0x5eed);
    let Some(img) = image::RgbImage::from_raw(side, side, px) else {
        return Vec::new();
    };
    let mut out = std::io::Cursor::new(Vec::new());
    match image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png) {
        Ok(()) => out.into_inner(),
        Err(_) => Vec::new(),
    }
}

/// Payload `seq` of client `client`: the shared base with a unique 16-byte trailer (after a PNG's
/// IEND chunk, which decoders ignore), so every upload is a distinct object.
fn payload(base: &[u8], client: usize, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(base.len() + 16);
    v.extend_from_slice(base);
    v.extend_from_slice(&(client as u64).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

/// Figures of one phase.
#[derive(Debug, Default, Clone, Serialize)]
struct Phase {
    ops: u64,
    failed: u64,
    bytes: u64,
    secs: f64,
    ops_per_sec: f64,
    mib_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_rss_max_mib: Option<f64>,
}

#[derive(Clone)]
struct Shared {
    addr: std::net::SocketAddr,
    prefix: String,
    tokens: Arc<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    UploadImage,
    DownloadImage,
    UploadVoice,
    DownloadVoice,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::UploadImage => "image_upload",
            Op::DownloadImage => "image_download",
            Op::UploadVoice => "voice_upload",
            Op::DownloadVoice => "voice_download",
        }
    }
}

/// What one phase does.
struct PhaseSpec {
    op: Op,
    /// Operations in all, spread over the clients.
    total: u64,
    /// The payload every operation's bytes derive from.
    base: Arc<Vec<u8>>,
    /// Downloads: the paths each client uploaded.
    paths: Arc<Vec<Vec<String>>>,
}

/// Runs one phase; returns its figures, the URLs (paths) uploaded per client, and the first error.
async fn phase(
    env: &Env,
    sh: &Shared,
    spec: PhaseSpec,
    deadline: Instant,
    timeline: &mut Vec<Sample>,
) -> (Phase, Vec<Vec<String>>, Option<String>) {
    let PhaseSpec {
        op,
        total,
        base,
        paths,
    } = spec;
    let clients = sh.tokens.len();
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(env.progress, total, op.label());
    let mut set = JoinSet::new();
    let started = Instant::now();
    for c in 0..clients {
        let share = total / clients as u64 + u64::from((c as u64) < total % clients as u64);
        let (sh, base, paths, done) = (sh.clone(), base.clone(), paths.clone(), done.clone());
        set.spawn(async move {
            let conn = Conn::new(sh.addr, &sh.tokens[c]);
            let mut hist = new_histogram();
            let mut bytes = 0u64;
            let mut failed = 0u64;
            let mut first_err = None;
            let mut uploaded = Vec::new();
            for seq in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                let r: Result<u64, MediaReqError> = async {
                    let conn = conn
                        .as_ref()
                        .map_err(|e| MediaReqError::Http(e.to_string()))?;
                    match op {
                        Op::UploadImage | Op::UploadVoice => {
                            let (path, ctype) = match op {
                                Op::UploadImage => ("images", "image/png"),
                                _ => ("audios", "audio/amr"),
                            };
                            let data = payload(&base, c, seq);
                            let len = data.len() as u64;
                            let url = format!("{}/{path}", sh.prefix);
                            let body = conn
                                .send(reqwest::Method::POST, &url, Some(ctype), data)
                                .await?;
                            let v: serde_json::Value = serde_json::from_slice(&body)
                                .map_err(|_| MediaReqError::Malformed)?;
                            let src = v["src"].as_str().ok_or(MediaReqError::Malformed)?;
                            uploaded.push(format!("{}{src}", sh.prefix));
                            Ok(len)
                        }
                        Op::DownloadImage | Op::DownloadVoice => {
                            let mine = &paths[c];
                            let Some(path) = mine.get(seq as usize) else {
                                return Ok(0);
                            };
                            let body = conn
                                .send(reqwest::Method::GET, path, None, Vec::new())
                                .await?;
                            if body[..] != payload(&base, c, seq)[..] {
                                return Err(MediaReqError::Mismatch);
                            }
                            Ok(body.len() as u64)
                        }
                    }
                }
                .await;
                match r {
                    Ok(n) => {
                        bytes += n;
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        failed += 1;
                        first_err.get_or_insert_with(|| e.to_string());
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, bytes, failed, first_err, uploaded, c)
        });
    }
    // Sample progress and the server's memory while the phase runs.
    let mut rss_max: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = (Instant::now(), 0u64);
    let mut results = Vec::new();
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(v)) => results.push(v),
                Some(Err(e)) => results.push((new_histogram(), 0, 1, Some(format!("client task failed: {e}")), Vec::new(), usize::MAX)),
                None => break,
            },
            _ = tick.tick() => {
                let n = done.load(Ordering::Relaxed);
                bar.set_position(n);
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64();
                if dt >= 0.5 {
                    timeline.push(Sample {
                        t: env.epoch.elapsed().as_secs_f64(),
                        rate: (n - last.1) as f64 / dt,
                    });
                    last = (now, n);
                }
                if let Some(m) = &env.memory {
                    if let Some(rss) = m.rss().await {
                        rss_max = Some(rss_max.map_or(rss, |r| r.max(rss)));
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mut hist = new_histogram();
    let mut out = Phase {
        secs,
        ..Phase::default()
    };
    let mut first = None;
    let mut uploaded = vec![Vec::new(); clients];
    for (h, bytes, failed, err, up, c) in results {
        let _ = hist.add(&h);
        out.bytes += bytes;
        out.failed += failed;
        if first.is_none() {
            first = err;
        }
        if let Some(slot) = uploaded.get_mut(c) {
            *slot = up;
        }
    }
    out.ops = hist.len();
    out.ops_per_sec = out.ops as f64 / secs;
    out.mib_per_sec = out.bytes as f64 / 1048576.0 / secs;
    out.p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
    out.p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
    out.max_ms = hist.max() as f64 / 1000.0;
    out.server_rss_max_mib = rss_max.map(|b| b as f64 / 1048576.0);
    (out, uploaded, first)
}

/// Runs the scenario against the app API of `env.api`.
pub async fn run(env: &Env, o: &MediaOptions) -> Result<Report, BenchError> {
    if o.clients == 0 || o.image_size < 1024 || o.voice_size < 1024 {
        return Err(BenchError::Setup(
            "--clients must be >= 1 and the sizes >= 1024 bytes".into(),
        ));
    }
    let Some((api, _)) = &env.api else {
        return Err(BenchError::Setup(
            "the media scenario needs the server's HTTP API (--http)".into(),
        ));
    };
    let addr = api.resolve().await?;
    let mut report = Report::new("media", serde_json::to_value(o).unwrap_or_default(), "http");
    let uids: Vec<i64> = (0..o.clients as i64).map(|i| env.uid_base + i).collect();
    let tokens = env.tokens.issue(env.appid, &uids).await?;
    let prefix = {
        let p = o.prefix.trim_end_matches('/');
        if p.is_empty() || p.starts_with('/') {
            p.to_string()
        } else {
            format!("/{p}")
        }
    };
    let sh = Shared {
        addr,
        prefix,
        tokens: Arc::new(tokens),
    };
    let png = base_png(o.image_size);
    if png.is_empty() {
        return Err(BenchError::Setup("cannot make the test image".into()));
    }
    let mut amr = b"#!AMR\n".to_vec();
    amr.extend(noise(o.voice_size.saturating_sub(6 + 16), 0xa77));
    let (png, amr) = (Arc::new(png), Arc::new(amr));
    let baseline = match &env.memory {
        Some(m) => m.rss().await,
        None => None,
    };
    let deadline = Instant::now() + env.duration;
    let mut timeline = Vec::new();
    let none = Arc::new(Vec::new());
    let mut figures = Vec::new();
    let spec = |op, total, base: &Arc<Vec<u8>>, paths: &Arc<Vec<Vec<String>>>| PhaseSpec {
        op,
        total,
        base: base.clone(),
        paths: paths.clone(),
    };
    let (up_img, img_paths, e1) = phase(
        env,
        &sh,
        spec(Op::UploadImage, o.images, &png, &none),
        deadline,
        &mut timeline,
    )
    .await;
    let img_paths = Arc::new(img_paths);
    let (down_img, _, e2) = phase(
        env,
        &sh,
        spec(Op::DownloadImage, o.images, &png, &img_paths),
        deadline,
        &mut timeline,
    )
    .await;
    let (up_voice, voice_paths, e3) = phase(
        env,
        &sh,
        spec(Op::UploadVoice, o.voices, &amr, &none),
        deadline,
        &mut timeline,
    )
    .await;
    let voice_paths = Arc::new(voice_paths);
    let (down_voice, _, e4) = phase(
        env,
        &sh,
        spec(Op::DownloadVoice, o.voices, &amr, &voice_paths),
        deadline,
        &mut timeline,
    )
    .await;
    figures.push((Op::UploadImage, up_img, o.images, e1));
    figures.push((Op::DownloadImage, down_img, o.images, e2));
    figures.push((Op::UploadVoice, up_voice, o.voices, e3));
    figures.push((Op::DownloadVoice, down_voice, o.voices, e4));
    let mut total_secs = 0.0;
    for (op, f, planned, err) in &figures {
        total_secs += f.secs;
        if f.failed > 0 {
            report.fail(format!(
                "{}: {} of {} requests failed; first: {}",
                op.label(),
                f.failed,
                planned,
                err.as_deref().unwrap_or("?")
            ));
        } else if f.ops < *planned {
            report.fail(format!(
                "{}: only {} of {} done within the duration cap",
                op.label(),
                f.ops,
                planned
            ));
        }
        report.notes.push(format!(
            "{:<15} {:>6} ops  {:>8.1} ops/s  {:>7.1} MiB/s  p50 {:>7.2} ms  p99 {:>7.2} ms  server RSS max {}",
            op.label(),
            f.ops,
            f.ops_per_sec,
            f.mib_per_sec,
            f.p50_ms,
            f.p99_ms,
            f.server_rss_max_mib
                .map_or("?".to_string(), |m| format!("{m:.1} MiB"))
        ));
        report.extra.insert(op.label().to_string(), json!(f));
    }
    report.extra.insert(
        "server_rss_baseline_mib".into(),
        json!(baseline.map(|b| b as f64 / 1048576.0)),
    );
    report.duration_secs = total_secs;
    report.timeline_label = "requests/s".into();
    report.timeline = timeline;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_unique_and_valid_pngs() {
        let base = base_png(20_000);
        assert!(base.starts_with(b"\x89PNG"));
        let a = payload(&base, 0, 1);
        let b = payload(&base, 1, 0);
        assert_ne!(a, b);
        let img = image::load_from_memory(&a).expect("a PNG with a trailer still decodes");
        assert!(img.width() > 10);
    }
}
