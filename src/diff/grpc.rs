//! gRPC answers in diff: a body is split into its messages, each decoded by
//! its method's output type into protobuf's JSON mapping when descriptors
//! are given (`proto_descriptors`), else read by field number from the wire
//! format. A unary answer is its message; a server-streaming one the list of
//! its messages (without descriptors: a list whenever there is not exactly
//! one).

use std::path::Path;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::proto::h2::grpc;
use crate::schema::{HeaderList, ReplayResult};

/// The `FileDescriptorSet`s named by `proto_descriptors`, merged.
#[derive(Debug)]
pub struct Descriptors(DescriptorPool);

impl Descriptors {
    /// Read each file (`protoc --descriptor_set_out --include_imports`).
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, String> {
        let mut pool = DescriptorPool::new();
        for p in paths {
            let p = p.as_ref();
            let bytes =
                std::fs::read(p).map_err(|e| format!("proto_descriptors: {}: {e}", p.display()))?;
            pool.decode_file_descriptor_set(bytes.as_slice())
                .map_err(|e| {
                    format!(
                        "proto_descriptors: {}: not a FileDescriptorSet: {e}",
                        p.display()
                    )
                })?;
        }
        Ok(Self(pool))
    }

    /// The method a request path (`/package.Service/Method`) names.
    fn method(&self, path: &str) -> Option<prost_reflect::MethodDescriptor> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        let service = self.0.get_service_by_name(service)?;
        let found = service.methods().find(|m| m.name() == method);
        found
    }
}

/// The gRPC status of an answer: from the trailers, or from the headers of
/// a trailers-only answer.
pub fn status(headers: &HeaderList, trailers: &HeaderList) -> Option<u32> {
    let v = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))?;
    parse_status(v)
}

/// A `grpc-status` value as a code.
pub fn parse_status(v: &[u8]) -> Option<u32> {
    // ASCII whitespace only: the same bytes must give the same status
    // whether read from the wire or from the stored text (where a byte
    // such as 0xA0 is a character Unicode's trim would remove).
    let v = v.trim_ascii();
    v.iter()
        .all(u8::is_ascii_digit)
        .then(|| std::str::from_utf8(v).ok()?.parse().ok())
        .flatten()
}

/// Canonical status code names (grpc/grpc doc/statuscodes.md).
pub fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("CODE_{code}"), |n| n.to_string())
}

/// Statuses that are the server's failure (what HTTP calls 5xx): counted
/// as errors, like a transport error. The others (NOT_FOUND, ...) are
/// answers, compared as a status.
pub fn is_server_error(code: u32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Whether a row is a gRPC answer (by its content type).
pub fn is_grpc(r: &ReplayResult) -> bool {
    grpc::is_grpc(r.response_headers.get("content-type"))
}

/// A gRPC answer's body as JSON (None when it cannot be split).
pub fn body_json(r: &ReplayResult, protos: Option<&Descriptors>) -> Option<Value> {
    let messages =
        grpc::messages(&r.response_body, r.response_headers.get("grpc-encoding")).ok()?;
    let method = protos.and_then(|d| d.method(&r.target));
    let decoded: Vec<Value> = messages
        .iter()
        .map(|m| match &method {
            Some(md) => typed(md.output(), m).unwrap_or_else(|| untyped(m)),
            None => untyped(m),
        })
        .collect();
    let streaming = method.as_ref().map(|m| m.is_server_streaming());
    Some(match (streaming, decoded.len()) {
        (Some(false), 1) | (None, 1) => decoded.into_iter().next().expect("one"),
        _ => Value::Array(decoded),
    })
}

fn typed(desc: prost_reflect::MessageDescriptor, bytes: &[u8]) -> Option<Value> {
    let msg = DynamicMessage::decode(desc, bytes).ok()?;
    // Proto field names (as in the .proto, matching rule paths written from
    // it) and every field, defaults too: a score that became 0 is a change,
    // not a missing field.
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        // Numbers, not the strings proto3's JSON mapping makes of 64-bit
        // integers: numeric rules, drift and cosine must see numbers
        // (integers are compared exactly whatever their size).
        .stringify_64_bit_integers(false);
    let mut ser = serde_json::Serializer::new(Vec::new());
    msg.serialize_with_options(&mut ser, &opts).ok()?;
    serde_json::from_slice(&ser.into_inner()).ok()
}

fn untyped(bytes: &[u8]) -> Value {
    grpc::wire_to_json(bytes).unwrap_or_else(|| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({ "undecodable_hex": hex })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::prost::Message;
    use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
    use prost_reflect::prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

    /// A status with a non-ASCII byte is no status, read from the wire or
    /// from the stored text (the fast path reads the text).
    #[test]
    fn a_status_is_ascii_digits_with_ascii_spaces() {
        assert_eq!(parse_status(b" 14 "), Some(14));
        assert_eq!(parse_status(b"0"), Some(0));
        for bad in [&b"14\xa0"[..], "14\u{a0}".as_bytes(), b"+1", b"", b"1 4"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
    }

    /// `message Count { int64 n = 1; uint64 big = 2; }`
    fn count_descriptor() -> prost_reflect::MessageDescriptor {
        let field = |name: &str, number, ty: Type| FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(ty as i32),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("count.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("Count".into()),
                field: vec![field("n", 1, Type::Int64), field("big", 2, Type::Uint64)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut pool = DescriptorPool::new();
        pool.add_file_descriptor_proto(file).unwrap();
        pool.get_message_by_name("t.Count").unwrap()
    }

    #[test]
    fn sixty_four_bit_integers_stay_numbers() {
        let desc = count_descriptor();
        let mut msg = DynamicMessage::new(desc.clone());
        msg.set_field_by_name("n", prost_reflect::Value::I64(-42));
        msg.set_field_by_name("big", prost_reflect::Value::U64(u64::MAX));
        let v = typed(desc, &msg.encode_to_vec()).unwrap();
        assert_eq!(v, serde_json::json!({"n": -42, "big": u64::MAX}));
    }
}
