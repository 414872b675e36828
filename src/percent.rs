//! Percent-decoding of URL parts, one implementation for the stream keys
//! and SRT stream ids the servers read, the URLs the client dials, and
//! the redaction of URLs in logs. A `%` must be followed by exactly two
//! hex digits (`%+1`, `%-1`, `%1` are malformed, though `u8::from_str_radix`
//! alone would take a sign); the result must be UTF-8.

/// Decode `%XX` escapes, and `+` as a space when `plus_is_space` (a query
/// string's form encoding). `None` for a malformed escape or bytes that
/// are not UTF-8.
pub fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (hi, lo) = (hex_digit(*b.get(i + 1)?)?, hex_digit(*b.get(i + 2)?)?);
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn escapes_and_plus() {
        assert_eq!(
            decode("a%20b%2Fc%e2%82%AC", false).as_deref(),
            Some("a b/c€")
        );
        assert_eq!(decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(decode("", true).as_deref(), Some(""));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for s in ["%+1", "%-1", "%1", "%", "%zz", "a%2", "%+f", "% 1"] {
            assert_eq!(decode(s, true), None, "{s:?}");
        }
        // Not UTF-8.
        assert_eq!(decode("%ff%fe", false), None);
    }
}
