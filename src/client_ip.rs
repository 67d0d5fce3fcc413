//! Which address a request comes from: the TCP peer, unless the peer is a
//! trusted proxy, in which case the right-most untrusted address of `X-Forwarded-For`. A client
//! that is not trusted cannot choose its hash key or its logged address by sending the header.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::server::field;
use crate::server::Header;

/// An address block such as `127.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address (a block of one).
    ///
    /// ```
    /// use lb_sync::client_ip::Cidr;
    /// let lan = Cidr::parse("10.0.0.0/8").unwrap();
    /// assert!(lan.contains("10.1.2.3".parse().unwrap()));
    /// assert!(!lan.contains("11.0.0.1".parse().unwrap()));
    /// assert!(Cidr::parse("10.0.0.0/33").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| format!("'{text}' is not an address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|&p| p <= max).ok_or(format!("'{text}': prefix must be 0-{max}"))?
            }
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `addr` lies in this block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_match(&net.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_match(&net.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(net: &[u8], addr: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    let rest = prefix % 8;
    if net[..full] != addr[..full] {
        return false;
    }
    rest == 0 || (net[full] ^ addr[full]) >> (8 - rest) == 0
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `addr` is in any of `trusted`.
pub fn is_trusted(addr: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(addr))
}

/// The client's address: the peer, or, when the peer is trusted, the right-most address of
/// `forwarded_for` that is not itself trusted (a trusted chain is walked from the right).
/// Unparseable entries stop the walk: what lies left of them cannot be vouched for.
///
/// ```
/// use lb_sync::client_ip::{client_ip, Cidr};
/// let trusted = [Cidr::parse("127.0.0.0/8").unwrap()];
/// let peer = "127.0.0.1".parse().unwrap();
/// assert_eq!(client_ip(peer, Some("203.0.113.9, 127.0.0.2"), &trusted).to_string(), "203.0.113.9");
/// let stranger = "198.51.100.4".parse().unwrap();
/// assert_eq!(client_ip(stranger, Some("203.0.113.9"), &trusted), stranger);
/// ```
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    match forwarded_for {
        Some(header) => walk_from_the_right(peer, header.split(','), trusted),
        None => peer,
    }
}

/// From a trusted `peer`, the right-most of `entries` that is not trusted; an entry that is not
/// an address stops the walk.
fn walk_from_the_right<'a>(
    peer: IpAddr,
    entries: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let mut client = peer;
    for entry in entries.rev() {
        let Ok(addr) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = canonical(addr);
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

/// The client of a request from `peer` with these header fields: [`client_ip`] over every
/// `X-Forwarded-For` line, in order, as one list (RFC 9110 5.3: a proxy in front may add a line
/// of its own rather than extend the first). Fail closed: when any line has a byte that is not
/// printable ASCII, no entry can be vouched for and the client is the peer. The one answer to
/// "who is the client" for the proxy (hash key, rate limits, logs) and the front end's
/// per-client limits.
///
/// ```
/// use lb_sync::client_ip::{request_client, Cidr};
/// use lb_sync::server::Header;
///
/// let trusted = [Cidr::parse("127.0.0.0/8").unwrap()];
/// let xff = |value: &[u8]| Header::new("X-Forwarded-For", value.to_vec());
/// let headers = [xff(b"203.0.113.9"), xff(b"198.51.100.4")];
/// assert_eq!(request_client("127.0.0.1".parse().unwrap(), &headers, &trusted).to_string(), "198.51.100.4");
/// assert_eq!(request_client("192.0.2.1".parse().unwrap(), &headers, &trusted).to_string(), "192.0.2.1");
/// let odd = [xff(b"\xff, 198.51.100.4")];
/// assert_eq!(request_client("127.0.0.1".parse().unwrap(), &odd, &trusted).to_string(), "127.0.0.1");
/// ```
pub fn request_client(peer: IpAddr, headers: &[Header], trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    // Most requests: an untrusted peer, or no header at all; nothing to read.
    if !is_trusted(peer, trusted) {
        return peer;
    }
    match field::list(headers, "x-forwarded-for") {
        Ok(elements) => walk_from_the_right(peer, elements.into_iter(), trusted),
        Err(_) => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_blocks_and_mapped_addresses() {
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn right_most_untrusted_wins_and_garbage_stops_the_walk() {
        let trusted = [Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |xff| client_ip(peer, Some(xff), &trusted).to_string();
        assert_eq!(ip("1.1.1.1, 2.2.2.2, 10.0.0.5"), "2.2.2.2");
        assert_eq!(ip("1.1.1.1, junk, 10.0.0.5"), "10.0.0.5");
        assert_eq!(ip("10.0.0.7"), "10.0.0.7");
        assert_eq!(client_ip(peer, None, &trusted), peer);
    }

    #[test]
    fn every_forwarded_for_line_is_read_and_bad_bytes_stop_the_walk() {
        let trusted = [Cidr::parse("127.0.0.0/8").unwrap()];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let xff = |value: &[u8]| Header { name: "x-forwarded-for".into(), value: value.to_vec() };
        let client = |headers: &[Header]| request_client(peer, headers, &trusted).to_string();
        assert_eq!(client(&[xff(b"1.1.1.1"), xff(b"2.2.2.2, 127.0.0.9")]), "2.2.2.2");
        assert_eq!(client(&[xff(b"1.1.1.1"), xff(b"\xff")]), "127.0.0.1");
        assert_eq!(client(&[xff(b"\xff"), xff(b"1.1.1.1")]), "127.0.0.1", "fail closed: the peer");
        assert_eq!(client(&[xff(b"")]), "127.0.0.1");
        assert_eq!(client(&[]), "127.0.0.1");
    }
}
