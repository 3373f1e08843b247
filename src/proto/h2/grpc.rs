//! gRPC message framing (grpc/grpc doc/PROTOCOL-HTTP2.md) and a schema-less
//! reading of protobuf's wire format, for comparing answers field by field
//! when no descriptors are given (like `protoc --decode_raw`).

use serde_json::{Map, Value};

/// A gRPC body holds more than this in messages: refused (a bomb).
const MAX_DECODED: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrpcError {
    #[error("gRPC message cut short: {0} bytes announced, {1} present")]
    Cut(usize, usize),
    #[error("gRPC message compressed with unsupported encoding {0:?}")]
    Encoding(String),
    #[error("gRPC message does not decompress: {0}")]
    Decompress(String),
    #[error("gRPC messages decode to more than {MAX_DECODED} bytes")]
    TooLarge,
}

/// Whether a content type is gRPC's (`application/grpc`, `+proto`, ...).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|c| {
        let c = c.trim_ascii();
        c.len() >= 16
            && c[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(c.get(16), None | Some(b'+' | b';'))
    })
}

/// The messages of a gRPC body, decompressed with `encoding` (the
/// `grpc-encoding` header) where their flag says so.
pub fn messages(body: &[u8], encoding: Option<&[u8]>) -> Result<Vec<Vec<u8>>, GrpcError> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut total = 0usize;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(GrpcError::Cut(5, rest.len()));
        }
        let compressed = rest[0] & 1 == 1;
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = rest[5..]
            .get(..len)
            .ok_or(GrpcError::Cut(len, rest.len() - 5))?;
        rest = &rest[5 + len..];
        let msg = if compressed {
            decompress(payload, encoding.unwrap_or(b"identity"))?
        } else {
            payload.to_vec()
        };
        total += msg.len();
        if total > MAX_DECODED {
            return Err(GrpcError::TooLarge);
        }
        out.push(msg);
    }
    Ok(out)
}

fn decompress(payload: &[u8], encoding: &[u8]) -> Result<Vec<u8>, GrpcError> {
    use std::io::Read;
    let mut out = Vec::new();
    let limit = MAX_DECODED as u64 + 1;
    let r = match encoding.trim_ascii() {
        b"gzip" => flate2::read::GzDecoder::new(payload)
            .take(limit)
            .read_to_end(&mut out),
        b"deflate" => flate2::read::ZlibDecoder::new(payload)
            .take(limit)
            .read_to_end(&mut out),
        other => {
            return Err(GrpcError::Encoding(
                String::from_utf8_lossy(other).into_owned(),
            ))
        }
    };
    r.map_err(|e| GrpcError::Decompress(e.to_string()))?;
    Ok(out)
}

/// A protobuf message read without its schema, as JSON: an object keyed by
/// field number; repeated numbers become arrays. Varints are numbers,
/// fixed32/fixed64 are numbers (their bits as unsigned), and a length-
/// delimited field is a nested message when it parses as one to the end,
/// else text when it is UTF-8, else `{"bytes_hex": ...}`.
pub fn wire_to_json(msg: &[u8]) -> Option<Value> {
    parse_fields(msg, 0).map(Value::Object)
}

fn parse_fields(mut b: &[u8], depth: u32) -> Option<Map<String, Value>> {
    let mut out: Map<String, Value> = Map::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) {
            return None;
        }
        let value = match key & 7 {
            0 => Value::from(varint(&mut b)?),
            1 => {
                let (v, rest) = b.split_first_chunk::<8>()?;
                b = rest;
                Value::from(u64::from_le_bytes(*v))
            }
            5 => {
                let (v, rest) = b.split_first_chunk::<4>()?;
                b = rest;
                Value::from(u32::from_le_bytes(*v))
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..len)?, &b[len..]);
                b = rest;
                length_delimited(v, depth)
            }
            _ => return None,
        };
        match out.entry(field.to_string()) {
            serde_json::map::Entry::Vacant(e) => {
                e.insert(value);
            }
            serde_json::map::Entry::Occupied(mut e) => match e.get_mut() {
                Value::Array(a) if a.first().is_some_and(|f| f.is_array() || !value.is_array()) => {
                    a.push(value)
                }
                old => {
                    let first = old.take();
                    *old = Value::Array(vec![first, value]);
                }
            },
        }
    }
    Some(out)
}

fn length_delimited(v: &[u8], depth: u32) -> Value {
    if depth < 32 && !v.is_empty() {
        if let Some(m) = parse_fields(v, depth + 1) {
            // Short printable text can parse as fields by accident; text wins
            // when it is plain UTF-8 without control characters.
            let text = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.chars().any(char::is_control));
            if text.is_none() {
                return Value::Object(m);
            }
        }
    }
    match std::str::from_utf8(v) {
        Ok(s) => Value::from(s),
        Err(_) => {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "bytes_hex": hex })
        }
    }
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    #[test]
    fn content_types() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(!is_grpc(Some(b"application/grpc-web")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(None));
    }

    #[test]
    fn splits_messages_and_decompresses_gzip() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"\x08\x96\x01").unwrap();
        let z = gz.finish().unwrap();
        let mut body = framed(&[b"\x08\x01", b""]);
        body.push(1);
        body.extend_from_slice(&(z.len() as u32).to_be_bytes());
        body.extend_from_slice(&z);
        let m = messages(&body, Some(b"gzip")).unwrap();
        assert_eq!(
            m,
            vec![b"\x08\x01".to_vec(), vec![], b"\x08\x96\x01".to_vec()]
        );
        assert_eq!(messages(&body[..4], None), Err(GrpcError::Cut(5, 4)));
        assert_eq!(messages(&body[..6], None), Err(GrpcError::Cut(2, 1)));
        assert!(matches!(
            messages(&body, Some(b"snappy")),
            Err(GrpcError::Encoding(_))
        ));
    }

    #[test]
    fn wire_format_by_field_number() {
        // 1: 150 (varint), 2: "testing", 3: {1: 1}, 4: [1.5f32 bits], 1 again.
        let mut m = vec![0x08, 0x96, 0x01, 0x12, 7];
        m.extend_from_slice(b"testing");
        m.extend_from_slice(&[0x1a, 2, 0x08, 0x01, 0x25]);
        m.extend_from_slice(&1.5f32.to_le_bytes());
        m.extend_from_slice(&[0x08, 0x05]);
        assert_eq!(
            wire_to_json(&m).unwrap(),
            json!({"1": [150, 5], "2": "testing", "3": {"1": 1}, "4": 1.5f32.to_bits()})
        );
        assert_eq!(wire_to_json(&[0x08]), None);
        assert_eq!(
            wire_to_json(&[0x12, 2, 0xff, 0xfe]).unwrap(),
            json!({"2": {"bytes_hex": "fffe"}})
        );
    }
}
