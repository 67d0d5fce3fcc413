//! The resolver ureq's connectors are given for a backend: the backend's host was resolved once, when it was
//! added (or by the DNS refresh, which makes a fresh backend), and that address is what its
//! requests connect to, whatever name the URL carries. An HTTPS backend's URL names its host
//! (the name its certificate must have, sent as SNI), and it is resolved for every new
//! connection: without this, each would ask DNS again.

use std::net::SocketAddr;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Always the one address.
#[derive(Debug)]
pub(crate) struct PinnedResolver(pub SocketAddr);

impl Resolver for PinnedResolver {
    fn resolve(&self, _uri: &Uri, _config: &Config, _timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(self.0);
        Ok(addrs)
    }
}
