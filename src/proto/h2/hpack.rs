//! HPACK header-block decoding (RFC 7541) for a recorder that may have
//! missed part of the connection.
//!
//! Written by hand because a recorder needs what no HPACK crate offers (they
//! are built for endpoints, which always see the whole connection): a capture
//! that starts mid-connection, or loses a header block, does not know the
//! older dynamic-table entries. Entries are addressed by position (index 62
//! is the newest), so the entries we did see stay correct: a reference past
//! them, or to an entry whose name we never learned, is reported as unknown
//! instead of failing the block or, worse, reading a wrong entry. String
//! Huffman decoding uses `httlib-huffman`.

use std::collections::VecDeque;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The default (and initial) dynamic table size, SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// What a recorder holds per table whatever the peers agreed: past it the
/// oldest entries go, and references to them read as unknown (never wrong).
pub const MAX_HELD: usize = 64 * 1024;
/// A header block that decodes to more than this is refused (a bomb of
/// references to one large entry).
const MAX_DECODED: usize = 1 << 20;

/// Why a header block could not be decoded at all. The decoder's table is
/// then unreliable and has been cleared: later blocks decode what they can.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("HPACK block ends inside a field")]
    Truncated,
    #[error("HPACK integer overflows")]
    Overflow,
    #[error("HPACK index 0")]
    ZeroIndex,
    #[error("invalid Huffman string")]
    Huffman,
    #[error("header block decodes to more than {MAX_DECODED} bytes")]
    TooLarge,
    #[error("table size update to {0} above the agreed {1}")]
    TableSize(usize, usize),
    #[error("table size update after a field (RFC 7541 section 4.2: only at a block's start)")]
    LateSizeUpdate,
}

/// A name or value the decoder could not know: it lives in a part of the
/// dynamic table the capture never saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    Known(Vec<u8>),
    Unknown,
}

/// One decoded field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Text,
    pub value: Text,
}

#[derive(Clone, Debug)]
struct Entry {
    name: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Entry {
    /// RFC 7541 section 4.1; an unknown name counts as empty, which keeps
    /// more entries than the peer, never fewer (extra old ones are harmless:
    /// the encoder never refers to entries it evicted).
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, Vec::len) + self.value.len() + 32
    }
}

/// A field as decoded, borrowed: name and value, None where they come from
/// an entry never seen.
pub type FieldRef<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Where decoded fields go.
type FieldSink<'s> = dyn FnMut(Option<&[u8]>, Option<&[u8]>) + 's;

/// One direction's HPACK decoder.
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    /// The table size currently in force (from size updates).
    max: usize,
    /// The largest size the peer may set (SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max: DEFAULT_TABLE_SIZE,
            limit: DEFAULT_TABLE_SIZE,
        }
    }

    /// The receiver of this direction advertised SETTINGS_HEADER_TABLE_SIZE.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The peer's SETTINGS were not seen (a capture that began mid-way, or
    /// lost them): any size update is taken, and the table holds up to our
    /// own cap. Holding more entries than the peer does is safe, since
    /// entries are found by position and the peer never refers past its
    /// table; the default 4,096 refused a larger size update, and with it
    /// every field of the block.
    pub fn limit_unknown(&mut self) {
        self.limit = usize::MAX;
        self.max = MAX_HELD;
        self.evict(0);
    }

    /// The largest table size the encoder may set now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Forget the table (a lost or undecodable block may have changed it).
    /// Entries added after this are known again, by position.
    pub fn clear(&mut self) {
        self.table.clear();
        self.size = 0;
    }

    /// Bytes held by the table.
    pub fn held(&self) -> usize {
        self.size
    }

    /// Decode one complete header block. On error the table is cleared.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut out = Vec::new();
        let text = |t: Option<&[u8]>| t.map_or(Text::Unknown, |b| Text::Known(b.to_vec()));
        self.decode_with(block, |n, v| {
            out.push(Field {
                name: text(n),
                value: text(v),
            })
        })?;
        Ok(out)
    }

    /// Decode one complete header block, giving each field to `f` as it is
    /// decoded, borrowed (None: from an entry never seen). On error the
    /// table is cleared.
    pub fn decode_with(
        &mut self,
        block: &[u8],
        mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>),
    ) -> Result<(), HpackError> {
        let r = self.decode_inner(block, &mut f);
        if r.is_err() {
            self.clear();
        }
        r
    }

    fn decode_inner(&mut self, mut b: &[u8], f: &mut FieldSink<'_>) -> Result<(), HpackError> {
        let mut decoded = 0usize;
        let mut decoded_fields = false;
        while let Some(&first) = b.first() {
            let size = if first & 0x80 != 0 {
                let i = int(&mut b, 7)?;
                let (n, v) = self.lookup(i)?;
                f(n, v);
                n.map_or(0, <[u8]>::len) + v.map_or(0, <[u8]>::len)
            } else if first & 0xe0 == 0x20 {
                if decoded_fields {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = int(&mut b, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableSize(size, self.limit));
                }
                self.max = size;
                self.evict(0);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or
                // never indexed (0001).
                let (prefix, index) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let i = int(&mut b, prefix)?;
                let name: Option<Vec<u8>> = if i == 0 {
                    Some(string(&mut b)?.into_owned())
                } else {
                    self.lookup(i)?.0.map(<[u8]>::to_vec)
                };
                let value = string(&mut b)?;
                f(name.as_deref(), Some(&value));
                let size = name.as_ref().map_or(0, Vec::len) + value.len();
                if index {
                    let value = value.into_owned();
                    self.insert(Entry { name, value });
                }
                size
            };
            decoded_fields = true;
            decoded += size;
            if decoded > MAX_DECODED {
                return Err(HpackError::TooLarge);
            }
        }
        Ok(())
    }

    /// Name and value of an index (None: an entry never seen).
    fn lookup(&self, i: usize) -> Result<FieldRef<'_>, HpackError> {
        match i {
            0 => Err(HpackError::ZeroIndex),
            1..=61 => {
                let (n, v) = STATIC[i - 1];
                Ok((Some(n.as_bytes()), Some(v.as_bytes())))
            }
            _ => Ok(match self.table.get(i - 62) {
                Some(e) => (e.name.as_deref(), Some(e.value.as_slice())),
                None => (None, None),
            }),
        }
    }

    fn insert(&mut self, e: Entry) {
        let size = e.size();
        self.evict(size);
        // An entry larger than the table empties it and is not added.
        if size <= self.cap() {
            self.size += size;
            self.table.push_front(e);
        }
    }

    fn cap(&self) -> usize {
        self.max.min(MAX_HELD)
    }

    /// Evict the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.cap() {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
    }
}

/// An integer with an N-bit prefix (RFC 7541 section 5.1).
fn int(b: &mut &[u8], prefix: u32) -> Result<usize, HpackError> {
    let mask = (1u32 << prefix) - 1;
    let (&first, rest) = b.split_first().ok_or(HpackError::Truncated)?;
    *b = rest;
    let mut v = (first as u32 & mask) as usize;
    if v < mask as usize {
        return Ok(v);
    }
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = b.split_first().ok_or(HpackError::Truncated)?;
        *b = rest;
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        v = v
            .checked_add(((byte & 0x7f) as usize) << shift)
            .ok_or(HpackError::Overflow)?;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// A string literal (RFC 7541 section 5.2): borrowed from the block, or
/// Huffman-decoded.
fn string<'a>(b: &mut &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, HpackError> {
    let huffman = b.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = int(b, 7)?;
    if len > b.len() {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = b.split_at(len);
    *b = rest;
    if !huffman {
        return Ok(raw.into());
    }
    let mut out = Vec::with_capacity(len * 8 / 5);
    httlib_huffman::decode(raw, &mut out, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| HpackError::Huffman)?;
    if !canonical_huffman(raw, &out) {
        return Err(HpackError::Huffman);
    }
    Ok(out.into())
}

/// RFC 7541 section 5.2: the padding after the last code is the most
/// significant bits of EOS (all ones) and shorter than a byte. The decoder
/// checks only the padding's value, so "000" or a full byte of ones would
/// pass; the canonical encoding of what was decoded is unique, and a string
/// is valid exactly when it is that encoding.
fn canonical_huffman(raw: &[u8], decoded: &[u8]) -> bool {
    let mut again = Vec::with_capacity(raw.len());
    httlib_huffman::encode(decoded, &mut again).is_ok() && again == raw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        let t = |t: &Text| match t {
            Text::Known(v) => String::from_utf8_lossy(v).into_owned(),
            Text::Unknown => "?".into(),
        };
        fields.iter().map(|f| (t(&f.name), t(&f.value))).collect()
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// RFC 7541 C.4: three requests with Huffman coding, one decoder.
    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new();
        let r1 = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            pairs(&r1),
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.held(), 57);
        let r2 = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            pairs(&r2)[3],
            (":authority".into(), "www.example.com".into())
        );
        assert_eq!(pairs(&r2)[4], ("cache-control".into(), "no-cache".into()));
        let r3 = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(
            pairs(&r3),
            owned(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.held(), 164);
    }

    /// RFC 7541 C.5: responses with a 256-byte table, so entries are evicted.
    #[test]
    fn rfc7541_c5_responses_with_eviction() {
        let mut d = Decoder::new();
        d.set_limit(256);
        // The peer's size update is part of the test: 256 is in force only
        // after the encoder signals it; C.5 assumes it is from the start.
        d.max = 256;
        let r1 = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 \
             3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 \
             7777 2e65 7861 6d70 6c65 2e63 6f6d",
        );
        assert_eq!(
            pairs(&d.decode(&r1).unwrap())[0],
            (":status".into(), "302".into())
        );
        assert_eq!(d.held(), 222);
        let r2 = d.decode(&hex("4803 3330 37c1 c0bf")).unwrap();
        assert_eq!(
            pairs(&r2),
            owned(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.held(), 222, ":status 302 was evicted for 307");
    }

    #[test]
    fn huffman_padding_must_be_a_short_eos_prefix() {
        // A literal without indexing whose name is "a" in Huffman (the 5-bit
        // code 00011 and 3 bits of padding) and whose value is a raw "a".
        let block = |name: &[u8]| {
            let mut b = vec![0x00, 0x80 | name.len() as u8];
            b.extend_from_slice(name);
            b.extend_from_slice(&[0x01, b'a']);
            Decoder::new().decode(&b)
        };
        assert_eq!(pairs(&block(&[0x1f]).unwrap()), owned(&[("a", "a")]));
        // Padding 000: decodes to the same "a" if only the value is checked.
        assert!(matches!(block(&[0x18]), Err(HpackError::Huffman)));
        // Eight more bits of ones after the padding: longer than 7 bits.
        assert!(matches!(block(&[0x1f, 0xff]), Err(HpackError::Huffman)));
    }

    #[test]
    fn a_table_we_never_saw_reads_as_unknown_not_wrong() {
        // The encoder's table holds two entries we never saw; then it adds
        // "x-new: 1" (index 62 for both sides) and refers to 62 and 63.
        let mut d = Decoder::new();
        let mut block = vec![0x40, 5];
        block.extend_from_slice(b"x-new");
        block.extend_from_slice(&[1, b'1']);
        block.extend_from_slice(&[0x80 | 62, 0x80 | 63]);
        // A literal whose name is an unseen entry, added to the table.
        // (index 63 fills the 6-bit prefix: 0x7f, then a continuation 0.)
        block.extend_from_slice(&[0x7f, 0x00, 2, b'v', b'2']);
        block.push(0x80 | 62);
        let f = d.decode(&block).unwrap();
        assert_eq!(
            pairs(&f),
            owned(&[
                ("x-new", "1"),
                ("x-new", "1"),
                ("?", "?"),
                ("?", "v2"),
                ("?", "v2")
            ])
        );
    }

    #[test]
    fn bad_blocks_are_errors_and_clear_the_table() {
        let mut d = Decoder::new();
        d.decode(&[0x40, 1, b'a', 1, b'b']).unwrap();
        assert_eq!(d.decode(&[0x80]), Err(HpackError::ZeroIndex));
        assert_eq!(d.held(), 0);
        assert_eq!(d.decode(&[0x40, 5, b'a']), Err(HpackError::Truncated));
        assert_eq!(
            d.decode(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::Overflow)
        );
        // 31 + 0x62 + (0x1f << 7) = 4097, one above the agreed 4096.
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSize(4097, 4096))
        );
        assert!(d.decode(&[0x3f, 0xe1, 0x1f]).is_ok());
    }

    #[test]
    fn size_update_evicts() {
        let mut d = Decoder::new();
        d.decode(&[0x40, 1, b'a', 1, b'b']).unwrap();
        assert_eq!(d.held(), 34);
        d.decode(&[0x20]).unwrap();
        assert_eq!(d.held(), 0);
        assert_eq!(
            pairs(&d.decode(&[0x80 | 62]).unwrap()),
            owned(&[("?", "?")])
        );
    }

    /// Size updates lead a block (two in a row are allowed: a lower size
    /// then the final one); one after a field is a decoding error.
    #[test]
    fn a_size_update_after_a_field_is_an_error() {
        let mut d = Decoder::new();
        assert!(d.decode(&[0x20, 0x3f, 0xe1, 0x1f, 0x82]).is_ok());
        assert_eq!(d.decode(&[0x82, 0x20]), Err(HpackError::LateSizeUpdate));
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding returns (never panics) and the table
        /// stays within what a recorder holds.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(blocks in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..8)) {
            let mut d = Decoder::new();
            for b in &blocks {
                let _ = d.decode(b);
                proptest::prop_assert!(d.held() <= MAX_HELD);
            }
        }
    }
}
