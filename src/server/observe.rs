//! What the front end tells the application about answers it gives or finishes on its own:
//! each refusal it answers without the handler ([`RefusalHook`]), how many requests wait for a
//! worker ([`ServerConfig::queue_depth`](super::ServerConfig)), and when a handler's response
//! has left completely or broken off ([`Finished`], through [`Response::on_finish`]).
//!
//! [`Response::on_finish`]: super::Response::on_finish

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A request the front end answered itself, before or instead of the handler: `400`, `408`,
/// `413`, `414`, `431`, `501`, `505`, `503` (queue full, too many connections, no room for a
/// body). The connection is closed after it.
#[derive(Clone, Copy, Debug)]
pub struct Refusal<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The status answered.
    pub status: u16,
    /// The reason sent as the body.
    pub reason: &'a str,
    /// The request line as the client sent it (invalid UTF-8 replaced), when the refusal came
    /// while reading a head whose request line had arrived whole: the access log shows what
    /// was refused, as nginx's `$request`.
    pub request_line: Option<&'a str>,
}

/// Called by the poller thread once per refusal, as it answers: keep it short (count, queue a
/// log line); it must not block.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use lb_sync::server::{RefusalHook, ServerConfig};
///
/// let refused = Arc::new(AtomicU64::new(0));
/// let counter = Arc::clone(&refused);
/// let config = ServerConfig {
///     on_refusal: Some(RefusalHook::new(move |_refusal| {
///         counter.fetch_add(1, Ordering::Relaxed);
///     })),
///     ..ServerConfig::default()
/// };
/// # drop(config);
/// ```
#[derive(Clone)]
pub struct RefusalHook(Arc<dyn Fn(&Refusal<'_>) + Send + Sync>);

impl RefusalHook {
    /// A hook calling `f` for each refusal.
    pub fn new(f: impl Fn(&Refusal<'_>) + Send + Sync + 'static) -> RefusalHook {
        RefusalHook(Arc::new(f))
    }

    pub(crate) fn call(&self, refusal: &Refusal<'_>) {
        (self.0)(refusal);
    }
}

impl fmt::Debug for RefusalHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefusalHook")
    }
}

/// How a response's delivery ended, given to its [`on_finish`](super::Response::on_finish)
/// callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Bytes written after the head (chunk framing included, as nginx's `$body_bytes_sent`).
    pub body_bytes_sent: u64,
    /// Whether the whole response was written; false when the client or the body's source
    /// broke the transfer.
    pub complete: bool,
}

/// The callback of [`Response::on_finish`](super::Response::on_finish).
pub(crate) type FinishHook = Box<dyn FnOnce(Finished) + Send>;
