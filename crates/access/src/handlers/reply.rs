//! [`Reply`]: what a connection writes to its client, in order, with one per-connection seq.
//!
//! Handlers write their answers here; the session adds what others pushed to it (its outbox) and
//! writes the buffer to the transport in one call per wake-up. METADATA and the frame it belongs to
//! are queued on consecutive seqs. The buffers are given back when the session is idle.

use bytes::BytesMut;
use proto::{AckStatus, Body, Metadata};

use crate::route::Push;

/// The frames produced for one client and not yet written (see the module docs).
#[derive(Default)]
pub(crate) struct Reply {
    seq: i32,
    /// The session version: the version byte of the successful AUTH_TOKEN (0 before).
    version: u8,
    /// A write was abandoned part-way (kick or shutdown while the client did not read): what is on the
    /// wire ends mid-frame, so nothing more may be written. (Here, in the padding after `version`,
    /// rather than a field of its own in every session.)
    torn: bool,
    buf: BytesMut,
    /// Where each queued frame ends in `buf`.
    ends: Vec<usize>,
}

impl Reply {
    /// The version frames are written in.
    pub(crate) fn version(&self) -> u8 {
        self.version
    }

    /// Sets the session version (on a successful AUTH_TOKEN, before its AUTH_STATUS).
    pub(crate) fn set_version(&mut self, version: u8) {
        self.version = version;
    }

    fn next_seq(&mut self) -> i32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Queues one frame.
    pub(crate) fn emit(&mut self, body: &Body, flag: u8) {
        let seq = self.next_seq();
        body.encode_frame(seq, self.version, flag, &mut self.buf);
        self.ends.push(self.buf.len());
    }

    /// Queues METADATA then `body` on consecutive seqs.
    pub(crate) fn emit_with_meta(&mut self, meta: Metadata, body: &Body, flag: u8) {
        self.emit(&Body::Metadata(meta), 0);
        self.emit(body, flag);
    }

    /// Queues a frame whose body is stored (version 2 layout): re-laid for a version-0 session.
    pub(crate) fn emit_stored(&mut self, cmd: u8, flag: u8, body: &[u8]) {
        let seq = self.next_seq();
        proto::write_stored(&mut self.buf, seq, self.version, cmd, flag, body);
        self.ends.push(self.buf.len());
    }

    /// Queues frames others pushed to this session (each with its METADATA, when it has one).
    pub(crate) fn emit_pushes(&mut self, pushes: &mut Vec<Push>) {
        // Reserve once: the buffers are given back whenever the session is idle, so without this a
        // batch of pushes would grow them step by step on every wake-up.
        let (frames, bytes) = pushes.iter().fold((0, 0), |(f, b), p| {
            (f + 1 + usize::from(p.meta.is_some()), b + p.wire_len())
        });
        self.ends.reserve(frames);
        self.buf.reserve(bytes);
        for p in pushes.drain(..) {
            if let Some(meta) = p.meta {
                self.emit(&Body::Metadata(meta), 0);
            }
            self.emit_stored(p.cmd, p.flag, &p.body);
        }
    }

    /// Queues an ACK of the client frame `seq`, after its METADATA when given.
    pub(crate) fn ack(&mut self, seq: i32, status: i8, flag: u8, meta: Option<Metadata>) {
        let body = Body::Ack(proto::Ack { seq, status });
        match meta {
            Some(m) => self.emit_with_meta(m, &body, flag),
            None => self.emit(&body, flag),
        }
    }

    /// Queues the ACK of an accepted message with the sync keys of the sender's copy.
    pub(crate) fn ack_stored(&mut self, seq: i32, flag: u8, at: store::Appended) {
        self.ack(
            seq,
            AckStatus::SUCCESS,
            flag,
            Some(Metadata {
                sync_key: at.key,
                prev_sync_key: at.prev_key,
            }),
        );
    }

    /// Number of frames queued.
    pub(crate) fn frames(&self) -> usize {
        self.ends.len()
    }

    /// The queued bytes and where each frame ends, for the transport.
    pub(crate) fn parts(&mut self) -> (&mut BytesMut, &[usize]) {
        (&mut self.buf, &self.ends)
    }

    /// Marks the connection's output as ending mid-frame (a write was abandoned).
    pub(crate) fn tear(&mut self) {
        self.torn = true;
    }

    /// Whether a write was abandoned part-way, so nothing more may be written.
    pub(crate) fn is_torn(&self) -> bool {
        self.torn
    }

    /// Forgets the frames once written.
    pub(crate) fn written(&mut self) {
        self.ends.clear();
    }

    /// Gives back the buffers (an idle session holds none).
    pub(crate) fn release(&mut self) {
        self.buf = BytesMut::new();
        self.ends = Vec::new();
    }

    /// Gives back the write buffer if a burst grew it large.
    pub(crate) fn shrink(&mut self) {
        if self.buf.capacity() > 64 * 1024 {
            self.buf = BytesMut::new();
        }
    }

    /// Takes the queued frames out (tests decode them).
    #[cfg(test)]
    pub(crate) fn take_frames(&mut self) -> Vec<proto::Frame> {
        let mut buf = std::mem::take(&mut self.buf);
        self.ends.clear();
        let mut frames = Vec::new();
        while let Some(f) =
            proto::Frame::decode(&mut buf, proto::MAX_BODY_LEN).expect("valid frames")
        {
            frames.push(f);
        }
        assert!(buf.is_empty(), "a partial frame was queued");
        frames
    }
}
