//! Reading header fields for a decision (who may use the API, who the client is, what the backend
//! is told): every instance of a name and every byte of each, so that a second line or an odd
//! byte can never hide a value. Anything that cannot be read for its purpose is
//! [`Sole::Unusable`] or an `Err`, and the caller makes the safe decision with it.
//!
//! A value is read from the fields spelt exactly as its name (case aside): `X_Forwarded_For` is
//! never read as `X-Forwarded-For`. But a CGI/WSGI backend reads both as `HTTP_X_FORWARDED_FOR`,
//! so where a name's *presence* decides ([`is_forwarding`]) or a field must not reach the backend
//! ([`aliases`]), `_` counts as `-`.

use super::head::Header;

/// One field that must appear at most once, as read for a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sole<'a> {
    /// No instance.
    Absent,
    /// Exactly one instance, all of it printable text (visible ASCII, spaces and tabs inside),
    /// trimmed.
    Text(&'a str),
    /// Several instances, or one with bytes that are not printable ASCII: no value can be
    /// trusted.
    Unusable,
}

/// The elements of a comma-separated field were unusable: some instance held bytes that are
/// not printable ASCII.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

/// Whether `header` is named `name` (ASCII case-insensitive).
fn names(header: &Header, name: &str) -> bool {
    header.name.eq_ignore_ascii_case(name)
}

/// Whether `header` would reach a CGI/WSGI backend as `name`: ASCII case-insensitive, with `_`
/// read as `-` (`name` is given lowercase with dashes).
///
/// ```
/// use lb_sync::server::{field, Header};
/// assert!(field::aliases(&Header::new("X_Real_ip", "1.2.3.4"), "x-real-ip"));
/// assert!(!field::aliases(&Header::new("X-Real-IPs", "1.2.3.4"), "x-real-ip"));
/// ```
pub fn aliases(header: &Header, name: &str) -> bool {
    let given = header.name.as_bytes();
    given.len() == name.len() && given.iter().zip(name.bytes()).all(|(&g, n)| canonical_byte(g) == n)
}

/// Whether two field names reach a CGI/WSGI backend as one: ASCII case-insensitive, with `_`
/// read as `-` on both sides.
///
/// ```
/// use lb_sync::server::field::same_for_cgi;
/// assert!(same_for_cgi("X_Route", "x-route"));
/// assert!(!same_for_cgi("X-Routes", "X-Route"));
/// ```
pub fn same_for_cgi(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| canonical_byte(x) == canonical_byte(y))
}

/// `_` read as `-`, ASCII lowercased.
fn canonical_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether a field name has an underscore: CGI/WSGI backends read it as its dashed twin
/// (`HTTP_X_REAL_IP`), so it could stand in for a field the proxy rewrites. nginx drops such
/// fields by default (`underscores_in_headers off`).
///
/// ```
/// assert!(lb_sync::server::field::has_underscore("X_Real_IP"));
/// assert!(!lb_sync::server::field::has_underscore("X-Real-IP"));
/// ```
pub fn has_underscore(name: &str) -> bool {
    name.contains('_')
}

/// Whether every byte of a value is printable: visible ASCII, with spaces and tabs inside.
fn printable(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
}

/// The one instance of `name` among `headers`, as text; see [`Sole`].
///
/// ```
/// use lb_sync::server::field::{sole, Sole};
/// use lb_sync::server::Header;
/// let one = [Header::new("Authorization", " Bearer x ")];
/// assert_eq!(sole(&one, "authorization"), Sole::Text("Bearer x"));
/// let two = [Header::new("Authorization", "Bearer x"), Header::new("authorization", "Bearer y")];
/// assert_eq!(sole(&two, "authorization"), Sole::Unusable);
/// assert_eq!(sole(&[Header::new("Authorization", b"Bearer \xff".to_vec())], "authorization"), Sole::Unusable);
/// assert_eq!(sole(&[], "authorization"), Sole::Absent);
/// ```
pub fn sole<'a>(headers: &'a [Header], name: &str) -> Sole<'a> {
    let mut found = headers.iter().filter(|h| names(h, name));
    let Some(first) = found.next() else { return Sole::Absent };
    if found.next().is_some() || !printable(&first.value) {
        return Sole::Unusable;
    }
    // Printable ASCII is UTF-8.
    std::str::from_utf8(&first.value).map_or(Sole::Unusable, |text| Sole::Text(text.trim_matches([' ', '\t'])))
}

/// The elements of every instance of a comma-separated field `name`, in order (RFC 9110 5.3:
/// several lines are one list), trimmed, empty ones dropped. `Err` when any instance has a byte
/// that is not printable ASCII: then nothing of the list can be trusted.
///
/// ```
/// use lb_sync::server::field::{list, Unreadable};
/// use lb_sync::server::Header;
/// let lines = [Header::new("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), Header::new("x-forwarded-for", "3.3.3.3")];
/// assert_eq!(list(&lines, "x-forwarded-for"), Ok(vec!["1.1.1.1", "2.2.2.2", "3.3.3.3"]));
/// let twin = [Header::new("X_Forwarded_For", "6.6.6.6")];
/// assert_eq!(list(&twin, "x-forwarded-for"), Ok(vec![]), "never read as its dashed twin");
/// let odd = [Header::new("X-Forwarded-For", b"\xff, 1.1.1.1".to_vec())];
/// assert_eq!(list(&odd, "x-forwarded-for"), Err(Unreadable));
/// ```
pub fn list<'a>(headers: &'a [Header], name: &str) -> Result<Vec<&'a str>, Unreadable> {
    let mut elements = Vec::new();
    for header in headers.iter().filter(|h| names(h, name)) {
        if !printable(&header.value) {
            return Err(Unreadable);
        }
        let text = std::str::from_utf8(&header.value).map_err(|_| Unreadable)?;
        elements.extend(text.split(',').map(|e| e.trim_matches([' ', '\t'])).filter(|e| !e.is_empty()));
    }
    Ok(elements)
}

/// Whether a field says that a proxy relayed the request, whatever its value (any bytes, empty
/// too) and however its name is spelt (case, `_` for `-`): `Via`, or any field that
/// [claims a client address](claims_client).
///
/// ```
/// use lb_sync::server::{field::is_forwarding, Header};
/// assert!(is_forwarding(&Header::new("X_FORWARDED_for", b"\xff".to_vec())));
/// assert!(is_forwarding(&Header::new("x-forwarded-host", "")));
/// assert!(is_forwarding(&Header::new("Via", "1.1 front")));
/// assert!(!is_forwarding(&Header::new("X-Request-Id", "abc")));
/// ```
pub fn is_forwarding(header: &Header) -> bool {
    aliases(header, "via") || claims_client(header)
}

/// Whether a field tells a backend who the client is or how it connected, however its name is
/// spelt (case, `_` for `-`): `Forwarded`, any `X-Forwarded-*`, and the client-address fields
/// CDNs and proxies add (`X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `Client-IP`,
/// `CF-Connecting-IP`, `Fastly-Client-IP`, `X-Cluster-Client-IP`, `X-Original-Forwarded-For`).
/// Only a trusted proxy may send them on.
///
/// ```
/// use lb_sync::server::{field::claims_client, Header};
/// assert!(claims_client(&Header::new("True-Client-IP", "6.6.6.6")));
/// assert!(claims_client(&Header::new("X-Forwarded-Port", "443")));
/// assert!(!claims_client(&Header::new("Via", "1.1 front")));
/// ```
pub fn claims_client(header: &Header) -> bool {
    const EXACT: [&str; 9] = [
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-original-forwarded-for",
    ];
    const PREFIX: &[u8] = b"x-forwarded-";
    let name = header.name.as_bytes();
    let prefixed = name.len() > PREFIX.len() && name.iter().zip(PREFIX).all(|(&b, &p)| canonical_byte(b) == p);
    prefixed || EXACT.iter().any(|e| aliases(header, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_and_obs_text_are_unusable() {
        for value in [&b"a\x7fb"[..], b"\x80", b"caf\xc3\xa9", b"a\x00b"] {
            let headers = [Header::new("Authorization", value.to_vec())];
            assert_eq!(sole(&headers, "authorization"), Sole::Unusable, "{value:?}");
            assert_eq!(list(&headers, "authorization"), Err(Unreadable), "{value:?}");
        }
    }

    #[test]
    fn an_empty_list_is_empty_and_an_absent_one_too() {
        assert_eq!(list(&[Header::new("X-Forwarded-For", " , ")], "x-forwarded-for"), Ok(vec![]));
        assert_eq!(list(&[], "x-forwarded-for"), Ok(vec![]));
    }
}
