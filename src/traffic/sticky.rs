//! Sticky sessions by cookie, as HAProxy's `cookie NAME insert`: the first answer to a client
//! sets a cookie naming its backend, and later requests carrying it go to the same backend.
//!
//! The cookie's value is an opaque token derived from the backend's id and address
//! ([`StickyCookie::token`]); a [`StickyIndex`] maps tokens back to backend indices for the
//! current membership. Nothing here knows HTTP types: the caller passes `Cookie` header values
//! as bytes and sends the `Set-Cookie` value it gets back.
//!
//! ```
//! use std::time::Duration;
//! use lb_sync::traffic::sticky::{StickyCookie, StickyIndex};
//!
//! let cookie = StickyCookie::new("lb", Some("s3cret"), Duration::from_secs(3600));
//! let index = StickyIndex::new(&cookie, [(0, "backend1", "10.0.0.1:8080"), (1, "backend2", "10.0.0.2:8080")]);
//!
//! // First request: no cookie; the balancer picks backend 1 and sets one.
//! assert_eq!(cookie.find_cookie([&b"theme=dark"[..]].into_iter()), None);
//! let set_cookie = cookie.set_cookie(index.token_for(1).unwrap());
//! assert!(set_cookie.starts_with("lb=") && set_cookie.ends_with("; Max-Age=3600; Path=/; HttpOnly"));
//!
//! // Next request: the browser sends it back.
//! let sent = format!("theme=dark; {}", set_cookie.split(';').next().unwrap());
//! let token = cookie.find_cookie([sent.as_bytes()].into_iter()).unwrap();
//! assert_eq!(index.resolve(token), Some(1));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

// HMAC-SHA256 from RustCrypto's `hmac` and `sha2`: widely used, reviewed, constant-time
// implementations of a standard MAC. Its output reveals nothing of the input, and without the
// secret nobody can compute the token of a backend, which a plain hash or a home-made scheme
// would not guarantee.
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key when no secret is configured. Public, so such tokens can be forged (see
/// [`StickyCookie::new`]).
const PUBLIC_KEY: &[u8] = b"lb-sync sticky cookie, no secret configured";

/// Bytes of the HMAC kept in a token: 128 bits, as many as needed against guessing, half the
/// cookie length of the full 256.
const TOKEN_BYTES: usize = 16;

/// Whether `name` may be a cookie name: a non-empty RFC 7230 token (visible ASCII except
/// separators such as `=`, `;`, `,`, spaces and quotes).
///
/// ```
/// use lb_sync::traffic::sticky::is_valid_cookie_name;
///
/// assert!(is_valid_cookie_name("SERVERID"));
/// assert!(is_valid_cookie_name("lb_backend-1"));
/// assert!(!is_valid_cookie_name(""));
/// assert!(!is_valid_cookie_name("a=b"));
/// assert!(!is_valid_cookie_name("two words"));
/// ```
#[must_use]
pub fn is_valid_cookie_name(name: &str) -> bool {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={}";
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b))
}

/// The sticky-session cookie: its name, the key its tokens are made with, and its lifetime.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::traffic::sticky::StickyCookie;
///
/// let cookie = StickyCookie::new("SERVERID", Some("s3cret"), Duration::from_secs(600));
/// let token = cookie.token("backend1", "10.0.0.1:8080");
/// assert_eq!(token.len(), 32, "128 bits in hex");
/// assert!(!token.contains("10.0.0.1"));
/// assert_eq!(cookie.set_cookie(&token), format!("SERVERID={token}; Max-Age=600; Path=/; HttpOnly"));
/// ```
#[derive(Clone)]
pub struct StickyCookie {
    name: String,
    /// HMAC-SHA256 already keyed with the secret; cloned for each token, which saves hashing
    /// the key again.
    mac: Hmac<Sha256>,
    /// Whether `mac` was keyed with a configured secret (for `Debug` only: the key is never shown).
    has_secret: bool,
    max_age: Duration,
}

impl StickyCookie {
    /// A cookie called `name` lasting `max_age` (whole seconds; zero makes it a session cookie,
    /// with no `Max-Age`).
    ///
    /// With a `secret`, a token is an HMAC that only holders of the secret can compute: a
    /// client cannot pick its backend by forging a cookie, nor learn a backend's address from
    /// it. Without one, tokens are the same HMAC under a fixed public key: still opaque to a
    /// casual look, and still equal across processes, but anyone who knows (or guesses, as
    /// private address ranges are small) a backend's id and address can compute its token and
    /// so choose that backend, or confirm a guess of its address.
    ///
    /// # Panics
    /// When `name` is not a valid cookie name ([`is_valid_cookie_name`]): check configuration
    /// with that first.
    #[must_use]
    pub fn new(name: &str, secret: Option<&str>, max_age: Duration) -> StickyCookie {
        assert!(is_valid_cookie_name(name), "invalid cookie name {name:?}");
        let key = secret.map_or(PUBLIC_KEY, str::as_bytes);
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        StickyCookie { name: name.to_string(), mac, has_secret: secret.is_some(), max_age }
    }

    /// The cookie's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cookie value naming the backend `backend_id` at `address`: the first 128 bits of
    /// `HMAC-SHA256(key, backend_id + '\0' + address)`, as 32 lowercase hex digits. It depends
    /// on nothing but the key and these two strings, so every process with the same
    /// configuration gives the same token, and a backend that moves to another address gets
    /// another token (its old cookies then find nothing, rather than the wrong server).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::traffic::sticky::StickyCookie;
    ///
    /// let a = StickyCookie::new("lb", Some("k"), Duration::from_secs(60));
    /// let b = StickyCookie::new("lb", Some("k"), Duration::from_secs(60));
    /// assert_eq!(a.token("web1", "10.0.0.1:80"), b.token("web1", "10.0.0.1:80"));
    /// assert_ne!(a.token("web1", "10.0.0.1:80"), a.token("web1", "10.0.0.2:80"));
    /// ```
    #[must_use]
    pub fn token(&self, backend_id: &str, address: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(backend_id.as_bytes());
        // A separator that ids and addresses do not contain, so ("ab", "c") and ("a", "bc")
        // differ.
        mac.update(b"\0");
        mac.update(address.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut token = String::with_capacity(2 * TOKEN_BYTES);
        for byte in &digest[..TOKEN_BYTES] {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            token.push(HEX[usize::from(byte >> 4)] as char);
            token.push(HEX[usize::from(byte & 0xf)] as char);
        }
        token
    }

    /// The value of this cookie in a request's `Cookie` header values (`a=1; NAME=v; b=2`;
    /// several headers allowed): the first pair whose name is exactly ours, its value trimmed of
    /// spaces and of surrounding double quotes. `Some("")` when that value is empty; `None` when
    /// no pair has our name or the first one's value is not UTF-8 (no token is).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::traffic::sticky::StickyCookie;
    ///
    /// let cookie = StickyCookie::new("lb", None, Duration::from_secs(60));
    /// let headers: [&[u8]; 2] = [b"a=1; xlb=no", b" b=2 ;lb = yes ; c=3"];
    /// assert_eq!(cookie.find_cookie(headers.into_iter()), Some("yes"));
    /// ```
    pub fn find_cookie<'a>(&self, cookie_header_values: impl Iterator<Item = &'a [u8]>) -> Option<&'a str> {
        let name = self.name.as_bytes();
        for header in cookie_header_values {
            for pair in header.split(|&b| b == b';') {
                // A pair without `=` is a value with an empty name (RFC 6265bis): never ours.
                let Some(eq) = pair.iter().position(|&b| b == b'=') else { continue };
                if pair[..eq].trim_ascii() != name {
                    continue;
                }
                let value = pair[eq + 1..].trim_ascii();
                let value = match value {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => value,
                };
                return std::str::from_utf8(value).ok();
            }
        }
        None
    }

    /// A `Cookie` header value without this cookie, so that the backend never sees the
    /// balancer's cookie (HAProxy's `indirect`): `None` when no pair has our name (send the value
    /// as it is); else the other pairs, trimmed and joined with `"; "`, which is empty when ours
    /// was the only one (then drop the header).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::traffic::sticky::StickyCookie;
    ///
    /// let cookie = StickyCookie::new("lb", None, Duration::from_secs(60));
    /// assert_eq!(cookie.without_cookie(b"a=1; lb=x ;b=2"), Some(b"a=1; b=2".to_vec()));
    /// assert_eq!(cookie.without_cookie(b"lb=x"), Some(Vec::new()));
    /// assert_eq!(cookie.without_cookie(b"a=1; xlb=2"), None);
    /// ```
    #[must_use]
    pub fn without_cookie(&self, cookie_header_value: &[u8]) -> Option<Vec<u8>> {
        let name = self.name.as_bytes();
        let is_ours =
            |pair: &&[u8]| pair.iter().position(|&b| b == b'=').is_some_and(|eq| pair[..eq].trim_ascii() == name);
        let pairs = || cookie_header_value.split(|&b| b == b';');
        if !pairs().any(|pair| is_ours(&pair)) {
            return None;
        }
        let mut rest = Vec::with_capacity(cookie_header_value.len());
        for pair in pairs().filter(|pair| !is_ours(pair)).map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
            if !rest.is_empty() {
                rest.extend_from_slice(b"; ");
            }
            rest.extend_from_slice(pair);
        }
        Some(rest)
    }

    /// The `Set-Cookie` value that gives a client `token`:
    /// `NAME=TOKEN; Max-Age=SECONDS; Path=/; HttpOnly` (`Max-Age` left out when the lifetime is
    /// zero). `HttpOnly`: scripts have no use for it. Not `Secure`: the balancer speaks plain
    /// HTTP, and a `Secure` cookie would never come back over it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_sync::traffic::sticky::StickyCookie;
    ///
    /// let session = StickyCookie::new("lb", None, Duration::ZERO);
    /// assert_eq!(session.set_cookie("abc"), "lb=abc; Path=/; HttpOnly");
    /// ```
    #[must_use]
    pub fn set_cookie(&self, token: &str) -> String {
        let max_age = self.max_age.as_secs();
        if max_age == 0 {
            format!("{}={token}; Path=/; HttpOnly", self.name)
        } else {
            format!("{}={token}; Max-Age={max_age}; Path=/; HttpOnly", self.name)
        }
    }

    /// The cookie's lifetime.
    #[must_use]
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

impl fmt::Debug for StickyCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyCookie")
            .field("name", &self.name)
            .field("has_secret", &self.has_secret)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// Tokens of one membership: token → backend index, so resolving a cookie is one hash lookup,
/// and backend index → token, for the `Set-Cookie` of a backend just picked. Built again
/// whenever membership changes (a backend's id or address, or the list).
///
/// ```
/// use std::time::Duration;
/// use lb_sync::traffic::sticky::{StickyCookie, StickyIndex};
///
/// let cookie = StickyCookie::new("lb", Some("k"), Duration::from_secs(60));
/// let backends = vec![(0, "a".to_string(), "10.0.0.1:80".to_string()), (2, "c".into(), "10.0.0.3:80".into())];
/// let index = StickyIndex::new(&cookie, backends.iter().map(|(i, id, a)| (*i, id.as_str(), a.as_str())));
/// assert_eq!(index.len(), 2);
/// assert_eq!(index.resolve(&cookie.token("c", "10.0.0.3:80")), Some(2));
/// assert_eq!(index.token_for(1), None);
/// ```
#[derive(Clone, Debug, Default)]
pub struct StickyIndex {
    by_token: HashMap<String, usize>,
    /// Token of backend `i` at position `i`; `None` for an index not in the membership.
    by_index: Vec<Option<String>>,
}

impl StickyIndex {
    /// The index of `backends`, each `(backend index, id, address)`. Ids are meant to be unique;
    /// if two backends have the same id and address (the same token), the first keeps it.
    pub fn new<'a>(cookie: &StickyCookie, backends: impl IntoIterator<Item = (usize, &'a str, &'a str)>) -> Self {
        let mut index = StickyIndex::default();
        for (i, id, address) in backends {
            let token = cookie.token(id, address);
            if index.by_index.len() <= i {
                index.by_index.resize(i + 1, None);
            }
            index.by_token.entry(token.clone()).or_insert(i);
            index.by_index[i] = Some(token);
        }
        index
    }

    /// The backend index a cookie's token names; `None` for a forged token, or one of a
    /// backend that left or moved.
    #[must_use]
    pub fn resolve(&self, token: &str) -> Option<usize> {
        self.by_token.get(token).copied()
    }

    /// The token of backend `index`, to set in a cookie.
    #[must_use]
    pub fn token_for(&self, index: usize) -> Option<&str> {
        self.by_index.get(index)?.as_deref()
    }

    /// Backends with a token.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether no backend has a token.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn find<'a>(cookie: &StickyCookie, headers: &[&'a str]) -> Option<&'a str> {
        cookie.find_cookie(headers.iter().map(|h| h.as_bytes()))
    }

    #[test]
    fn same_configuration_gives_the_same_token() {
        let a = StickyCookie::new("lb", Some("secret"), HOUR);
        let b = StickyCookie::new("lb", Some("secret"), Duration::from_secs(60));
        assert_eq!(a.token("backend1", "127.0.0.1:8081"), b.token("backend1", "127.0.0.1:8081"));
        let public = StickyCookie::new("lb", None, HOUR);
        assert_eq!(public.token("backend1", "x"), StickyCookie::new("lb", None, HOUR).token("backend1", "x"));
    }

    #[test]
    fn token_is_hmac_sha256_truncated_to_128_bits() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let cookie = StickyCookie::new("lb", Some("Jefe"), HOUR);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            format!("{:x}", mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The token is the same construction over id, NUL, address.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"web1\x0010.0.0.1:80");
        let full = format!("{:x}", mac.finalize().into_bytes());
        assert_eq!(cookie.token("web1", "10.0.0.1:80"), full[..32]);
    }

    #[test]
    fn different_secret_gives_a_different_token() {
        let a = StickyCookie::new("lb", Some("one"), HOUR);
        let b = StickyCookie::new("lb", Some("two"), HOUR);
        let public = StickyCookie::new("lb", None, HOUR);
        let tokens = [&a, &b, &public].map(|c| c.token("backend1", "127.0.0.1:8081"));
        assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2] && tokens[0] != tokens[2]);
    }

    #[test]
    fn changed_address_or_id_gives_a_different_token() {
        let cookie = StickyCookie::new("lb", Some("secret"), HOUR);
        let token = cookie.token("backend1", "127.0.0.1:8081");
        assert_ne!(token, cookie.token("backend1", "127.0.0.1:8082"));
        assert_ne!(token, cookie.token("backend2", "127.0.0.1:8081"));
        assert_ne!(cookie.token("ab", "c"), cookie.token("a", "bc"), "the separator keeps fields apart");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn forged_or_stale_tokens_find_nothing() {
        let cookie = StickyCookie::new("lb", Some("secret"), HOUR);
        let index = StickyIndex::new(&cookie, [(0, "b1", "10.0.0.1:80"), (1, "b2", "10.0.0.2:80")]);
        assert_eq!(index.resolve(&cookie.token("b2", "10.0.0.2:80")), Some(1));
        // Made with another secret (or none), for a moved backend, or made up.
        let other = StickyCookie::new("lb", Some("guess"), HOUR);
        assert_eq!(index.resolve(&other.token("b2", "10.0.0.2:80")), None);
        assert_eq!(index.resolve(&StickyCookie::new("lb", None, HOUR).token("b2", "10.0.0.2:80")), None);
        assert_eq!(index.resolve(&cookie.token("b2", "10.0.0.9:80")), None);
        for forged in ["", "0", "00000000000000000000000000000000", "b2", "10.0.0.2:80"] {
            assert_eq!(index.resolve(forged), None, "{forged:?}");
        }
        // After a membership change the old token of a removed backend finds nothing.
        let token_b1 = index.token_for(0).unwrap().to_string();
        let rebuilt = StickyIndex::new(&cookie, [(0, "b2", "10.0.0.2:80")]);
        assert_eq!(rebuilt.resolve(&token_b1), None);
        assert_eq!(rebuilt.resolve(index.token_for(1).unwrap()), Some(0), "b2 moved to index 0");
    }

    #[test]
    fn index_maps_both_ways_and_first_duplicate_wins() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        let index = StickyIndex::new(&cookie, [(3, "a", "x:1"), (1, "b", "x:2"), (0, "a", "x:1")]);
        assert_eq!(index.len(), 2, "two distinct tokens");
        assert_eq!(index.resolve(&cookie.token("a", "x:1")), Some(3));
        assert_eq!(index.token_for(1), Some(cookie.token("b", "x:2").as_str()));
        assert_eq!(index.token_for(2), None);
        assert_eq!(index.token_for(99), None);
        assert!(StickyIndex::new(&cookie, []).is_empty());
    }

    #[test]
    fn finds_our_cookie_among_others() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        assert_eq!(find(&cookie, &["lb=abc"]), Some("abc"));
        assert_eq!(find(&cookie, &["a=1; lb=abc; b=2"]), Some("abc"));
        assert_eq!(find(&cookie, &["a=1; b=2"]), None);
        assert_eq!(find(&cookie, &[]), None);
        assert_eq!(find(&cookie, &[""]), None);
    }

    #[test]
    fn finds_our_cookie_in_any_of_several_headers_first_match_wins() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        assert_eq!(find(&cookie, &["a=1", "b=2; lb=second-header"]), Some("second-header"));
        assert_eq!(find(&cookie, &["lb=first; lb=second"]), Some("first"));
        assert_eq!(find(&cookie, &["lb=first", "lb=second"]), Some("first"));
    }

    #[test]
    fn tolerates_whitespace_and_quotes() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        assert_eq!(find(&cookie, &["a=1;lb=x;b=2"]), Some("x"));
        assert_eq!(find(&cookie, &["  a=1 ;  lb = x  ; b=2  "]), Some("x"));
        assert_eq!(find(&cookie, &["a=1;\tlb=x\t"]), Some("x"));
        assert_eq!(find(&cookie, &["lb=\"x\""]), Some("x"));
        assert_eq!(find(&cookie, &["lb=a=b"]), Some("a=b"), "only the first `=` separates");
    }

    #[test]
    fn names_must_match_exactly() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        assert_eq!(find(&cookie, &["xlb=1; my_lb=2"]), None, "our name as a suffix");
        assert_eq!(find(&cookie, &["lbx=1; lb_id=2"]), None, "our name as a prefix");
        assert_eq!(find(&cookie, &["LB=1"]), None, "cookie names are case-sensitive");
        assert_eq!(find(&cookie, &["xlb=1; lb=2"]), Some("2"));
        assert_eq!(find(&cookie, &["lb; a=1"]), None, "a pair without `=` has no name");
    }

    #[test]
    fn empty_and_invalid_values() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        assert_eq!(find(&cookie, &["lb="]), Some(""));
        assert_eq!(find(&cookie, &["a=1; lb= ; b=2"]), Some(""));
        assert_eq!(find(&cookie, &["lb=\"\""]), Some(""));
        assert_eq!(cookie.find_cookie([&b"lb=\xff\xfe"[..]].into_iter()), None, "not UTF-8");
    }

    #[test]
    fn without_cookie_removes_every_pair_of_ours_and_only_those() {
        let cookie = StickyCookie::new("lb", None, HOUR);
        let strip = |v: &str| cookie.without_cookie(v.as_bytes()).map(|r| String::from_utf8(r).unwrap());
        assert_eq!(strip("a=1; b=2"), None, "nothing of ours: untouched");
        assert_eq!(strip(""), None);
        assert_eq!(strip("xlb=1; lbx=2; LB=3; lb"), None, "similar names and a pair without `=` are not ours");
        assert_eq!(strip("lb=t").as_deref(), Some(""));
        assert_eq!(strip(" lb = t ; lb=u").as_deref(), Some(""), "every copy goes");
        assert_eq!(strip("a=1;lb=t;b=\"q\"").as_deref(), Some("a=1; b=\"q\""), "others kept as they were");
        assert_eq!(strip("a=1; lb=t; ; b=2;").as_deref(), Some("a=1; b=2"), "empty pairs dropped");
    }

    #[test]
    fn set_cookie_carries_name_token_and_lifetime() {
        let cookie = StickyCookie::new("SERVERID", Some("k"), HOUR);
        assert_eq!(cookie.set_cookie("0123abcd"), "SERVERID=0123abcd; Max-Age=3600; Path=/; HttpOnly");
        let token = cookie.token("b", "a");
        let header = cookie.set_cookie(&token);
        let sent = header.split(';').next().unwrap();
        assert_eq!(find(&cookie, &[sent]), Some(token.as_str()), "what we set is what we find");
    }

    #[test]
    #[should_panic(expected = "invalid cookie name")]
    fn an_invalid_name_is_refused() {
        let _ = StickyCookie::new("a;b", None, HOUR);
    }

    #[test]
    fn cookie_and_index_are_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<StickyCookie>();
        send_sync::<StickyIndex>();
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let cookie = StickyCookie::new("lb", Some("hunter2"), HOUR);
        let debug = format!("{cookie:?}");
        assert!(debug.contains("has_secret: true") && !debug.contains("hunter2"), "{debug}");
    }
}
