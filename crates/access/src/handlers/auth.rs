//! AUTH_TOKEN and UNREAD_COUNT. AUTH_STATUS is the first frame the client sees; a failure leaves the
//! connection open for a retry. A successful login registers the session in the route table and
//! announces it to the routers.

use std::sync::Arc;

use proto::{AuthToken, Body, Platform};
use tracing::debug;

use super::{Conn, Reply};
use crate::app::Stats;
use crate::route::{OutboxLimits, SessionHandle, SessionId};

/// AUTH_TOKEN before authentication.
pub(crate) async fn on_auth_token(
    conn: &mut Conn,
    out: &mut Reply,
    a: AuthToken,
    version: u8,
) -> Option<super::Append> {
    match login(conn, &a).await {
        Ok(login) => {
            out.set_version(version);
            out.emit(&Body::AuthStatus(0), 0);
            let app = &conn.app;
            let info = login.id;
            let handle = Arc::new(SessionHandle::new(
                info,
                OutboxLimits {
                    frames: app.server.outbox_frames,
                    bytes: app.server.outbox_bytes,
                },
            ));
            app.route.add(handle.clone());
            app.links
                .login(conn.conn_id, info.appid, info.uid, info.online);
            conn.handle = Some(handle);
            app.backend.set_unread(info.appid, info.uid, 0);
            Stats::inc(&app.stats.auth_ok);
            let span = tracing::Span::current();
            span.record("appid", info.appid);
            span.record("uid", info.uid);
            debug!(
                device_id = info.device_id,
                platform = a.platform_id,
                version,
                "authenticated"
            );
        }
        Err(why) => {
            Stats::inc(&conn.app.stats.auth_failed);
            debug!(why, "authentication failed");
            out.emit(&Body::AuthStatus(1), 0);
        }
    }
    None
}

/// Who logged in.
struct Login {
    id: SessionId,
}

/// Checks the token and resolves the session's identity; the error is why it failed.
async fn login(conn: &Conn, a: &AuthToken) -> Result<Login, &'static str> {
    let app = &conn.app;
    let backend_error = |e: &dyn std::fmt::Display, what: &'static str| {
        Stats::inc(&app.stats.backend_errors);
        node::warn_throttled!(error = %e, "{what} failed");
        "backend error"
    };
    let token = match std::str::from_utf8(&a.token) {
        Ok(t) if !t.is_empty() => t,
        _ => return Err("malformed token"),
    };
    let info = match app.backend.authenticate(token).await {
        Ok(Some(info)) => info,
        Ok(None) => return Err("unknown, expired or revoked token"),
        Err(e) => return Err(backend_error(&e, "token lookup")),
    };
    let flags = app
        .backend
        .user_flags(info.appid, info.uid)
        .await
        .map_err(|e| backend_error(&e, "user flags lookup"))?;
    let device_id = if a.platform_id == Platform::WEB || a.device_id.is_empty() {
        0
    } else {
        let d = std::str::from_utf8(&a.device_id).map_err(|_| "malformed device id")?;
        app.backend
            .device_id(d, a.platform_id)
            .await
            .map_err(|e| backend_error(&e, "device id allocation"))?
    };
    Ok(Login {
        id: SessionId {
            conn_id: conn.conn_id,
            appid: info.appid,
            uid: info.uid,
            device_id,
            platform: a.platform_id,
            online: !flags.notification_on || Platform::is_mobile(a.platform_id),
            forbidden: flags.forbidden,
            token_fp: backend::token_fingerprint(token),
        },
    })
}

/// UNREAD_COUNT: the client's badge count, kept by the backend.
pub(crate) fn on_unread_count(conn: &mut Conn, n: i32) {
    if let Some(h) = &conn.handle {
        conn.app.backend.set_unread(h.appid, h.uid, n);
    }
}
