//! The one HTTP client of the project (reqwest on rustls with the ring provider): the bench's API
//! calls, `banter ims promote`, and the webhook push provider.
//!
//! reqwest rather than hyper-util's legacy client: it is already in the dependency graph (the media
//! crate's S3 backend), and gives connection pooling, per-request timeouts, HTTPS with the
//! platform's roots, and JSON bodies without hand-written plumbing at each caller.

use std::time::Duration;

/// A client builder with the project's defaults: rustls (ring), `timeout` for a whole request
/// and for connecting, no redirects followed, idle connections kept 30 s.
pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    // reqwest's rustls needs a process-wide provider; ring is the one in the graph.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
}

/// [`builder`]`(timeout).build()`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder(timeout).build()
}
