//! Byte-exact text helpers shared by the stages.
//!
//! HTTP start lines and header values are bytes, not UTF-8. We store them as
//! ISO-8859-1 (every byte becomes the code point of the same value), which
//! is lossless and leaves the usual ASCII unchanged, so a replay can send
//! back exactly the bytes that were captured.

use std::borrow::Cow;

/// Decode wire bytes as ISO-8859-1 (a lossless byte -> char mapping).
pub fn latin1(bytes: &[u8]) -> Cow<'_, str> {
    if bytes.is_ascii() {
        // ASCII is valid UTF-8 and maps to itself under ISO-8859-1.
        Cow::Borrowed(std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        Cow::Owned(bytes.iter().map(|&b| b as char).collect())
    }
}

/// Encode text produced by [`latin1`] back to the original bytes.
/// Characters above U+00FF (which `latin1` never produces) become `?`.
pub fn latin1_bytes(text: &str) -> Cow<'_, [u8]> {
    if text.is_ascii() {
        Cow::Borrowed(text.as_bytes())
    } else {
        Cow::Owned(
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn latin1_round_trips_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = latin1(&bytes);
            let back = latin1_bytes(&text).into_owned();
            prop_assert_eq!(back, bytes);
        }
    }

    #[test]
    fn ascii_is_unchanged() {
        assert_eq!(latin1(b"GET /a?b=c"), "GET /a?b=c");
        assert_eq!(latin1(&[0x61, 0xe9]), "a\u{e9}");
    }
}
