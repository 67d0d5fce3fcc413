//! The resolver under the shared ureq agent: a backend's host was resolved once, when it was
//! added, and that address is what its requests connect to, whatever name the URL carries. An
//! HTTPS backend's URL names its host (the name its certificate must have, sent as SNI), and
//! ureq resolves before every request, pooled connection or not: without this, each request
//! would ask DNS again.

use std::cell::Cell;
use std::net::SocketAddr;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

thread_local! {
    /// The address of the request this thread is sending: ureq runs a request on the calling
    /// thread, so the resolver it calls reads what [`pin`] set just before.
    static PINNED: Cell<Option<SocketAddr>> = const { Cell::new(None) };
}

/// Until it is dropped, requests this thread sends connect to `addr`.
pub(crate) fn pin(addr: SocketAddr) -> Pinned {
    PINNED.with(|p| p.set(Some(addr)));
    Pinned(())
}

/// Unpins when dropped, so no later request of the thread can get a stale address.
pub(crate) struct Pinned(());

impl Drop for Pinned {
    fn drop(&mut self) {
        PINNED.with(|p| p.set(None));
    }
}

/// The pinned address, or ureq's own resolution when nothing is pinned.
#[derive(Debug, Default)]
pub(crate) struct PinnedResolver {
    fallback: DefaultResolver,
}

impl Resolver for PinnedResolver {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        match PINNED.with(Cell::get) {
            Some(addr) => {
                let mut addrs = self.empty();
                addrs.push(addr);
                Ok(addrs)
            }
            None => self.fallback.resolve(uri, config, timeout),
        }
    }
}
