//! The few fields of an X.509 certificate we read ourselves: its serial number, its validity
//! period (an expired certificate is refused at start and on reload, as rustls would serve it)
//! and its DNS names (SNI picks a certificate by them). rustls and webpki parse and check the
//! rest; this is a bounds-checked walk of the DER to three fields, which never panics on any
//! input (a malformed certificate reads as `None`).

/// What we read from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertFacts {
    /// The serial number in hex (as `openssl x509 -serial` prints it), for the log.
    pub serial: String,
    /// Start and end of validity, in seconds since the Unix epoch (UTC).
    pub not_before: i64,
    pub not_after: i64,
    /// The DNS names of its subjectAltName extension, lowercase (`*.example.com` included).
    pub dns_names: Vec<String>,
}

/// A reader of DER TLVs (tag, length, value) over a slice.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Der<'a> {
        Der { rest: bytes }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next TLV. Only the definite lengths DER allows, up to 4 length bytes.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = rest.get(..n)?;
            rest = &rest[n..];
            bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let value = rest.get(..len)?;
        self.rest = &rest[len..];
        Some((tag, value))
    }

    /// The next TLV's value when it has this tag.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (got, value) = self.next()?;
        (got == tag).then_some(value)
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` and `[3] EXPLICIT Extensions` of a TBSCertificate.
const VERSION_TAG: u8 = 0xa0;
const EXTENSIONS_TAG: u8 = 0xa3;
/// `dNSName [2] IA5String` of a GeneralName.
const DNS_NAME_TAG: u8 = 0x82;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads the serial, validity and DNS names of a DER certificate (RFC 5280 4.1).
pub(crate) fn read(der: &[u8]) -> Option<CertFacts> {
    let certificate = Der::new(der).expect(SEQUENCE)?;
    let tbs = Der::new(certificate).expect(SEQUENCE)?;
    let mut fields = Der::new(tbs);
    if fields.peek_tag() == Some(VERSION_TAG) {
        fields.next()?;
    }
    let serial = fields.expect(INTEGER)?;
    let _signature = fields.expect(SEQUENCE)?;
    let _issuer = fields.expect(SEQUENCE)?;
    let mut validity = Der::new(fields.expect(SEQUENCE)?);
    let not_before = time(validity.next()?)?;
    let not_after = time(validity.next()?)?;
    let _subject = fields.expect(SEQUENCE)?;
    let _public_key = fields.expect(SEQUENCE)?;
    let mut dns_names = Vec::new();
    while let Some((tag, value)) = fields.next() {
        if tag == EXTENSIONS_TAG {
            dns_names = subject_alt_dns_names(value)?;
        }
    }
    // A positive serial may carry a leading zero byte (DER's sign rule): not part of the number.
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let serial = serial.iter().map(|b| format!("{b:02X}")).collect();
    Some(CertFacts { serial, not_before, not_after, dns_names })
}

/// The dNSNames of the subjectAltName extension, from `[3] { SEQUENCE OF Extension }`.
fn subject_alt_dns_names(extensions: &[u8]) -> Option<Vec<String>> {
    let mut list = Der::new(Der::new(extensions).expect(SEQUENCE)?);
    let mut names = Vec::new();
    while let Some(extension) = list.next() {
        let (SEQUENCE, extension) = extension else { return None };
        let mut parts = Der::new(extension);
        let oid = parts.expect(OID)?;
        if parts.peek_tag() == Some(BOOLEAN) {
            parts.next()?;
        }
        let value = parts.expect(OCTET_STRING)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        let mut general_names = Der::new(Der::new(value).expect(SEQUENCE)?);
        while let Some((tag, name)) = general_names.next() {
            if tag == DNS_NAME_TAG {
                names.push(String::from_utf8_lossy(name).to_ascii_lowercase());
            }
        }
    }
    Some(names)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the
/// forms RFC 5280 4.1.2.5 allows, as seconds since the epoch.
fn time((tag, text): (u8, &[u8])) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0')))
    };
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 15) => (digits(0..4)?, 4),
        _ => return None,
    };
    if text.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let (hour, minute, second) =
        (digits(rest + 4..rest + 6)?, digits(rest + 6..rest + 8)?, digits(rest + 8..rest + 10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `seconds` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
pub(crate) fn format_utc(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // civil_from_days, the inverse of the above.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of a TLV.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if value.len() < 0x80 {
            out.push(value.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    /// A certificate skeleton with the fields we read (the others are empty sequences).
    fn certificate(serial: &[u8], not_before: &[u8], not_after: (u8, &[u8]), names: &[&str]) -> Vec<u8> {
        let general_names: Vec<u8> = names.iter().flat_map(|n| tlv(DNS_NAME_TAG, n.as_bytes())).collect();
        let san = [tlv(OID, SUBJECT_ALT_NAME), tlv(OCTET_STRING, &tlv(SEQUENCE, &general_names))].concat();
        let other =
            [tlv(OID, &[0x55, 0x1d, 0x13]), tlv(BOOLEAN, &[0xff]), tlv(OCTET_STRING, &tlv(SEQUENCE, &[]))].concat();
        let extensions = tlv(EXTENSIONS_TAG, &tlv(SEQUENCE, &[tlv(SEQUENCE, &other), tlv(SEQUENCE, &san)].concat()));
        let validity = tlv(SEQUENCE, &[tlv(UTC_TIME, not_before), tlv(not_after.0, not_after.1)].concat());
        let tbs = [
            tlv(VERSION_TAG, &tlv(INTEGER, &[2])),
            tlv(INTEGER, serial),
            tlv(SEQUENCE, &[]),
            tlv(SEQUENCE, &[]),
            validity,
            tlv(SEQUENCE, &[]),
            tlv(SEQUENCE, &[]),
            extensions,
        ]
        .concat();
        tlv(SEQUENCE, &[tlv(SEQUENCE, &tbs), tlv(SEQUENCE, &[]), tlv(0x03, &[0])].concat())
    }

    #[test]
    fn reads_serial_validity_and_dns_names() {
        let der = certificate(
            &[0x00, 0x9a, 0x01],
            b"200101000000Z",
            (GENERALIZED_TIME, b"20500630235959Z"),
            &["Example.COM", "*.example.com"],
        );
        let facts = read(&der).unwrap();
        assert_eq!(facts.serial, "9A01");
        assert_eq!(facts.not_before, 1_577_836_800, "2020-01-01T00:00:00Z");
        assert_eq!(format_utc(facts.not_after), "2050-06-30 23:59:59 UTC");
        assert_eq!(facts.dns_names, ["example.com", "*.example.com"]);
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn utc_time_years_wrap_at_1950() {
        let der = certificate(&[1], b"491231235959Z", (UTC_TIME, b"500101000000Z"), &[]);
        let facts = read(&der).unwrap();
        assert_eq!(format_utc(facts.not_before), "2049-12-31 23:59:59 UTC");
        assert_eq!(format_utc(facts.not_after), "1950-01-01 00:00:00 UTC");
    }

    #[test]
    fn malformed_input_is_none_never_a_panic() {
        let good = certificate(&[7], b"200101000000Z", (UTC_TIME, b"300101000000Z"), &["a.test"]);
        assert!(read(&good).is_some());
        // Every truncation, and every single-byte change, of a good certificate.
        for len in 0..good.len() {
            let _ = read(&good[..len]);
        }
        for i in 0..good.len() {
            for byte in [0x00, 0x7f, 0x80, 0x84, 0x85, 0xff] {
                let mut bad = good.clone();
                bad[i] = byte;
                let _ = read(&bad);
            }
        }
        assert!(read(b"").is_none() && read(&[0x30, 0x85, 1, 2, 3, 4, 5]).is_none());
        let bad_time = certificate(&[7], b"201301000000Z", (UTC_TIME, b"300101000000Z"), &[]);
        assert!(read(&bad_time).is_none(), "month 13");
    }
}
