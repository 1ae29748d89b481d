//! The process signals every server role answers: SIGINT and SIGTERM stop it, SIGHUP reloads
//! (`banter serve`). Handlers are installed before a role starts, so a signal that arrives the moment
//! the role says it is ready is handled, never left to the default action that kills the process
//! without its clean shutdown.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks of the running role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGINT or SIGTERM: stop cleanly.
    Stop,
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// Installed signal handlers.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Option<Signal>,
}

impl Signals {
    /// Installs SIGINT and SIGTERM handlers, and a SIGHUP handler when `reload` is set (roles that
    /// have nothing to reload keep SIGHUP's default).
    pub fn install(reload: bool) -> std::io::Result<Self> {
        let int = signal(SignalKind::interrupt())?;
        let term = signal(SignalKind::terminate())?;
        let hup = if reload {
            Some(signal(SignalKind::hangup())?)
        } else {
            None
        };
        Ok(Signals { int, term, hup })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Request {
        let hup = async {
            match self.hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => Request::Stop,
            _ = self.term.recv() => Request::Stop,
            _ = hup => Request::Reload,
        }
    }
}
