//! A compact list of header fields: one byte buffer plus spans, so a message
//! with twenty headers costs two allocations instead of forty.

use std::borrow::Cow;

use crate::text::latin1;

/// Header fields in wire order, duplicates kept, bytes exactly as sent.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    bytes: Vec<u8>,
    /// (name start, name end = value start, value end) into `bytes`.
    spans: Vec<[u32; 3]>,
}

impl HeaderList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `fields` fields of `bytes` bytes in all: a list filled
    /// from a parsed head or a column grows once, not field by field.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(fields),
        }
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let a = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        let b = self.bytes.len() as u32;
        self.bytes.extend_from_slice(value);
        let c = self.bytes.len() as u32;
        self.spans.push([a, b, c]);
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Bytes of all names and values together.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Name and value of every field, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(move |&[a, b, c]| {
            (
                &self.bytes[a as usize..b as usize],
                &self.bytes[b as usize..c as usize],
            )
        })
    }

    /// Name and value of every field as text (Latin-1, see
    /// [`crate::text::latin1`]). Header bytes are nearly always ASCII: then
    /// the whole buffer is checked once and the fields are borrowed from it,
    /// instead of each being checked and validated on its own (which was a
    /// tenth of the results writer's work).
    pub fn iter_text(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
        let ascii = self
            .bytes
            .is_ascii()
            .then(|| std::str::from_utf8(&self.bytes).ok())
            .flatten();
        self.spans.iter().map(move |&[a, b, c]| {
            let (a, b, c) = (a as usize, b as usize, c as usize);
            match ascii {
                Some(text) => (Cow::Borrowed(&text[a..b]), Cow::Borrowed(&text[b..c])),
                None => (latin1(&self.bytes[a..b]), latin1(&self.bytes[b..c])),
            }
        })
    }

    /// First value of the field `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// All values of the field `name` (ASCII case-insensitive).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Replace the value of every field whose name is in `names` (lower case).
    /// Returns how many values were replaced.
    pub fn redact(&mut self, names: &[String], marker: &str) -> usize {
        // The lengths of the names, as bits: most fields are passed over
        // on one test (this runs for every field captured).
        let lengths = names.iter().fold(0u64, |m, x| m | length_bit(x.len()));
        let hit = |n: &[u8]| {
            lengths & length_bit(n.len()) != 0
                && names.iter().any(|x| n.eq_ignore_ascii_case(x.as_bytes()))
        };
        if !self.iter().any(|(n, _)| hit(n)) {
            return 0;
        }
        let mut out = HeaderList::new();
        let mut count = 0;
        for (n, v) in self.iter() {
            if hit(n) {
                out.push(n, marker.as_bytes());
                count += 1;
            } else {
                out.push(n, v);
            }
        }
        *self = out;
        count
    }

    /// Bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * 12
    }
}

/// A bit for a name length; lengths past 63 share the top bit.
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl std::fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_duplicates() {
        let mut h = HeaderList::new();
        h.push(b"Set-Cookie", b"a=1");
        h.push(b"Host", b"x");
        h.push(b"set-cookie", b"b=2");
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("host"), Some(&b"x"[..]));
        assert_eq!(h.get_all("SET-COOKIE").count(), 2);
        let n = h.redact(&["set-cookie".to_string()], "[R]");
        assert_eq!(n, 2);
        let pairs: Vec<_> = h.iter().collect();
        assert_eq!(pairs[0], (&b"Set-Cookie"[..], &b"[R]"[..]));
        assert_eq!(pairs[1], (&b"Host"[..], &b"x"[..]));
        assert_eq!(pairs[2], (&b"set-cookie"[..], &b"[R]"[..]));
    }

    #[test]
    fn text_view_maps_non_ascii_bytes_as_latin1() {
        let mut ascii = HeaderList::new();
        ascii.push(b"Host", b"x");
        ascii.push(b"Accept", b"*/*");
        let text: Vec<_> = ascii.iter_text().collect();
        assert_eq!(
            text,
            [("Host".into(), "x".into()), ("Accept".into(), "*/*".into())]
        );
        let mut mixed = HeaderList::new();
        mixed.push(b"Host", b"x");
        mixed.push(b"X-Name", b"caf\xe9");
        let text: Vec<_> = mixed.iter_text().collect();
        assert_eq!(text[0], ("Host".into(), "x".into()));
        assert_eq!(text[1], ("X-Name".into(), "caf\u{e9}".into()));
    }
}
