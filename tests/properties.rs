//! Property tests (proptest) of what hostile input reaches first: the request-head parser, the
//! body decoder, and the config loader. None may panic on any input; valid input must come out
//! as it went in, however it is split into reads; and a configuration that validates is within
//! every documented range.

use lb_sync::config::{Config, RANGES};
use lb_sync::server::{
    canonical_target, parse_head, BodyDecoder, BodyFraming, Limits, ParseOutcome, PathRules, RequestError,
};
use proptest::prelude::*;

fn limits() -> Limits {
    Limits { max_body_bytes: 1 << 20, ..Limits::default() }
}

/// A parsed head reduced to what can be compared: method, target, headers, bytes used.
type Parsed = (String, String, Vec<(String, Vec<u8>)>, usize);

/// The outcome of parsing `input` whole.
fn outcome(input: &[u8]) -> Result<Option<Parsed>, RequestError> {
    match parse_head(input, &limits())? {
        ParseOutcome::Partial => Ok(None),
        ParseOutcome::Complete(head, used) => {
            Ok(Some((head.method, head.target, head.headers.into_iter().map(|h| (h.name, h.value)).collect(), used)))
        }
    }
}

fn token() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}").unwrap()
}

fn path() -> impl Strategy<Value = String> {
    proptest::string::string_regex("/[A-Za-z0-9/._~%!$&'()*+,;=:@?-]{0,40}").unwrap()
}

/// A target whose path is already canonical (no `%`, no dot segment, no `//`), with a query
/// of any of the same characters: it comes out of the parser unchanged.
fn canonical_path() -> impl Strategy<Value = String> {
    let segment = "[A-Za-z0-9_~!$&'()*+,=:@-][A-Za-z0-9._~!$&'()*+,;=:@-]{0,8}";
    proptest::string::string_regex(&format!("(/{segment}){{0,5}}/?([?][A-Za-z0-9/._~%!$&'()*+,;=:@?-]{{0,20}})?"))
        .unwrap()
        .prop_map(|target| if target.starts_with('/') { target } else { format!("/{target}") })
}

fn value() -> impl Strategy<Value = String> {
    // Visible ASCII and inner spaces, no surrounding whitespace (it is trimmed).
    proptest::string::string_regex("[!-~]([ !-~]{0,30}[!-~])?").unwrap()
}

fn header() -> impl Strategy<Value = (String, String)> {
    // Names that framing rules would judge are left out: this is about the parser.
    (token(), value()).prop_filter("no framing or host fields", |(n, _)| {
        let n = n.to_ascii_lowercase();
        !["host", "content-length", "transfer-encoding", "expect", "connection"].contains(&n.as_str())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_head_parser_never_panics_and_never_claims_more_than_it_was_given(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Some((_, _, _, used))) = outcome(&input) {
            prop_assert!(used <= input.len());
        }
    }

    #[test]
    fn near_valid_heads_never_panic(
        method in token(),
        target in path(),
        headers in proptest::collection::vec(header(), 0..8),
        noise in proptest::collection::vec(any::<u8>(), 1..4),
        at in any::<prop::sample::Index>(),
    ) {
        let mut wire = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n").into_bytes();
        for (n, v) in &headers {
            wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        // A few arbitrary bytes spliced in anywhere: the parser accepts or refuses, never panics.
        let i = at.index(wire.len());
        wire.splice(i..i, noise);
        let _ = outcome(&wire);
    }

    #[test]
    fn a_canonical_path_is_canonical_again_and_has_nothing_left_to_resolve(
        target in proptest::string::string_regex("/([A-Za-z0-9/._~;:@\\\\-]|%(2[eEfF]|5[cC]|[0-9A-Fa-f]{2})|\\.\\.|//){0,24}").unwrap(),
        merge_slashes in any::<bool>(),
        allow_encoded_slashes in any::<bool>(),
    ) {
        let rules = PathRules { merge_slashes, allow_encoded_slashes };
        if let Ok(canonical) = canonical_target(&target, &rules) {
            let again = canonical_target(&canonical, &rules);
            prop_assert_eq!(again.as_deref(), Ok(&*canonical), "one pass is enough");
            let path = canonical.split('?').next().unwrap();
            prop_assert!(path.starts_with('/'));
            for segment in path.split('/').skip(1) {
                prop_assert!(segment != "." && segment != "..", "{} left a dot segment", target);
                let parameterless = segment.split(';').next().unwrap();
                prop_assert!(parameterless != "." && parameterless != "..", "{} left '..;'", target);
            }
            prop_assert!(!merge_slashes || !path.contains("//"), "{} left '//'", target);
            prop_assert!(!path.contains('\\') && !path.contains("%2e") && !path.contains("%2E"));
            prop_assert!(allow_encoded_slashes || !path.contains("%2F") && !path.contains("%5C"));
        }
    }

    #[test]
    fn a_valid_head_comes_out_as_it_went_in_however_it_is_split(
        method in token(),
        target in canonical_path(),
        headers in proptest::collection::vec(header(), 0..10),
        split in any::<prop::sample::Index>(),
    ) {
        let mut wire = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n").into_bytes();
        for (n, v) in &headers {
            wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        let whole = outcome(&wire).expect("valid").expect("complete");
        prop_assert_eq!(&whole.0, &method);
        prop_assert_eq!(&whole.1, &target);
        prop_assert_eq!(whole.3, wire.len());
        let mut expected = vec![("Host".to_string(), b"h".to_vec())];
        expected.extend(headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
        prop_assert_eq!(&whole.2, &expected);
        // A prefix is incomplete, never an error or another request.
        let cut = split.index(wire.len());
        prop_assert_eq!(outcome(&wire[..cut]), Ok(None));
    }

    #[test]
    fn the_chunked_decoder_gives_back_the_body_however_the_wire_is_split(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        sizes in proptest::collection::vec(1usize..700, 1..6),
        reads in proptest::collection::vec(1usize..300, 1..20),
    ) {
        let mut wire = Vec::new();
        let mut rest = &body[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        wire.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\nNEXT");
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 1 << 20);
        let mut decoded = Vec::new();
        let mut used = 0;
        let mut r = 0;
        while used < wire.len() && !decoder.is_complete() {
            let end = (used + reads[r % reads.len()]).min(wire.len());
            r += 1;
            used += decoder.feed(&wire[used..end], &mut |d| { decoded.extend_from_slice(d); Ok(()) }).expect("valid");
        }
        prop_assert!(decoder.is_complete());
        prop_assert_eq!(decoded, body);
        prop_assert_eq!(&wire[used..], b"NEXT");
    }

    #[test]
    fn the_body_decoder_never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..1024), max in 0u64..4096) {
        for framing in [BodyFraming::Chunked, BodyFraming::Length(max)] {
            let mut decoder = BodyDecoder::new(framing, 2048);
            let mut total = 0usize;
            if let Ok(used) = decoder.feed(&input, &mut |d| { total += d.len(); Ok(()) }) {
                prop_assert!(used <= input.len());
                prop_assert!(total as u64 <= 2048.max(max));
            }
        }
    }

    #[test]
    fn the_config_loader_never_panics_and_what_validates_is_in_range(
        keys in proptest::collection::vec(0usize..RANGES.len(), 1..6),
        numbers in proptest::collection::vec(prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            (-1e12f64..1e12).prop_map(|v| format!("{v:e}")),
            (0u32..5).prop_map(|v| v.to_string()),
            Just("null".to_string()),
            Just("\"3\"".to_string()),
            Just("[]".to_string()),
        ], 6),
    ) {
        let fields: Vec<String> = keys
            .iter()
            .zip(&numbers)
            .filter(|(k, _)| RANGES[**k].key != "weight")
            .map(|(k, n)| format!("\"{}\": {n}", RANGES[*k].key))
            .collect();
        let json = format!("{{{}}}", fields.join(", "));
        let Ok(config) = serde_json::from_str::<Config>(&json) else { return Ok(()) };
        if config.validate().is_ok() {
            let value = serde_json::to_value(&config).unwrap();
            for range in RANGES.iter().filter(|r| r.key != "weight") {
                match value.get(range.key).and_then(serde_json::Value::as_f64) {
                    Some(v) => prop_assert!(range.contains(v), "{} = {} validated: {json}", range.key, v),
                    None => prop_assert!(value.get(range.key).is_some_and(serde_json::Value::is_null), "{}", range.key),
                }
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_config_loader(input in "\\PC{0,200}") {
        if let Ok(config) = serde_json::from_str::<Config>(&input) {
            let _ = config.validate();
        }
    }
}
