//! RFC 3492 Punycode encoding, only to name the A-label of a U-label a route was written with
//! (the error message says what to write instead; nothing is matched through it).

const BASE: u32 = 36;
const T_MIN: u32 = 1;
const T_MAX: u32 = 26;
const SKEW: u32 = 38;
const DAMP: u32 = 700;
const INITIAL_BIAS: u32 = 72;
const INITIAL_N: u32 = 128;

/// `xn--` and the Punycode of `label` lowercased, or `None` for an ASCII label (its own
/// A-label) or one too long to encode. Unicode normalisation (NFC) is not applied: labels
/// typed on a keyboard are NFC already.
pub(crate) fn a_label(label: &str) -> Option<String> {
    if label.is_ascii() {
        return None;
    }
    let lower = label.to_lowercase();
    encode(&lower).map(|code| format!("xn--{code}"))
}

fn adapt(mut delta: u32, points: u32, first: bool) -> u32 {
    delta /= if first { DAMP } else { 2 };
    delta += delta / points;
    let mut k = 0;
    while delta > ((BASE - T_MIN) * T_MAX) / 2 {
        delta /= BASE - T_MIN;
        k += BASE;
    }
    k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
}

fn digit(d: u32) -> char {
    char::from(if d < 26 { b'a' + d as u8 } else { b'0' + (d - 26) as u8 })
}

/// The RFC's encoding procedure (section 6.3); `None` on overflow.
fn encode(input: &str) -> Option<String> {
    let points: Vec<u32> = input.chars().map(u32::from).collect();
    let mut output: String = input.chars().filter(char::is_ascii).collect();
    let basic = output.len() as u32;
    let mut handled = basic;
    if basic > 0 {
        output.push('-');
    }
    let (mut n, mut delta, mut bias) = (INITIAL_N, 0u32, INITIAL_BIAS);
    while (handled as usize) < points.len() {
        let m = points.iter().copied().filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(handled + 1)?)?;
        n = m;
        for &c in &points {
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        T_MIN
                    } else if k >= bias + T_MAX {
                        T_MAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    output.push(digit(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                output.push(digit(q));
                bias = adapt(delta, handled + 1, handled == basic);
                delta = 0;
                handled += 1;
            }
        }
        delta += 1;
        n += 1;
    }
    Some(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_a_labels() {
        assert_eq!(a_label("bücher").as_deref(), Some("xn--bcher-kva"));
        assert_eq!(a_label("München").as_deref(), Some("xn--mnchen-3ya"));
        assert_eq!(a_label("例え").as_deref(), Some("xn--r8jz45g"));
        assert_eq!(a_label("пример").as_deref(), Some("xn--e1afmkfd"));
        assert_eq!(a_label("example"), None);
    }

    #[test]
    fn rfc_3492_sample_strings() {
        // 7.1 (A) Arabic (Egyptian) and (L) Japanese, mixed with ASCII.
        let arabic = "\u{0644}\u{064A}\u{0647}\u{0645}\u{0627}\u{0628}\u{062A}\u{0643}\u{0644}\u{0645}\u{0648}\u{0634}\u{0639}\u{0631}\u{0628}\u{064A}\u{061F}";
        assert_eq!(encode(arabic).unwrap(), "egbpdaj6bu4bxfgehfvwxn");
        assert_eq!(encode("3\u{5E74}B\u{7D44}\u{91D1}\u{516B}\u{5148}\u{751F}").unwrap(), "3B-ww4c5e180e575a65lsy2b");
    }
}
