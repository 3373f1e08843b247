//! What `diff` compares of an answer's body: its JSON, or, for an LLM
//! answer (an event stream, or a known API's JSON), the assembled answer
//! in the one shape of `docs/llm.md`. Built lazily: identical bodies are
//! never parsed.

use std::cell::OnceCell;

use serde_json::Value;

use super::compare::{decoded_body, parse_json};
use super::config::StreamSpec;
use crate::llm::{self, Answer, Custom};
use crate::proto::events;
use crate::schema::ReplayResult;

/// The comparable form of one body.
#[derive(Debug, Default)]
pub struct Doc {
    /// The JSON compared field by field (None: not JSON, compared as bytes
    /// or text).
    pub json: Option<Value>,
    /// Set when the body is an LLM answer.
    pub answer: Option<Answer>,
}

/// What the config says about reading one endpoint's bodies.
#[derive(Clone, Copy, Debug, Default)]
pub struct DocSpec<'r> {
    /// The `[[stream]]` entry for this endpoint, if any.
    pub stream: Option<&'r StreamSpec>,
    /// Protobuf descriptors for gRPC answers (`proto_descriptors`).
    pub protos: Option<&'r super::grpc::Descriptors>,
}

/// A body's [`Doc`], made on first use.
pub struct LazyDoc<'r> {
    pub row: &'r ReplayResult,
    spec: DocSpec<'r>,
    doc: OnceCell<Doc>,
}

impl<'r> LazyDoc<'r> {
    pub fn new(row: &'r ReplayResult, spec: DocSpec<'r>) -> Self {
        Self {
            row,
            spec,
            doc: OnceCell::new(),
        }
    }

    pub fn get(&self) -> &Doc {
        self.doc.get_or_init(|| build(self.row, self.spec))
    }
}

fn first_str(p: &Option<super::jsonpath::PathPattern>, v: &Value) -> Option<String> {
    let found = p.as_ref()?.select(v);
    found.first()?.as_str().map(str::to_string)
}

fn build(r: &ReplayResult, doc_spec: DocSpec<'_>) -> Doc {
    if super::grpc::is_grpc(r) {
        return Doc {
            json: super::grpc::body_json(r, doc_spec.protos),
            answer: None,
        };
    }
    let spec = doc_spec.stream;
    let body = decoded_body(r);
    let ct = r.response_headers.get("content-type");
    if let Some(format) = events::detect(ct, &body) {
        let ev = events::events_of(format, &body, &[], 0);
        let answer = match spec.and_then(|s| s.patterns.as_ref()) {
            Some([text, finish, tokens]) => {
                let t = |v: &Value| first_str(text, v);
                let f = |v: &Value| first_str(finish, v);
                let n = |v: &Value| {
                    let found = tokens.as_ref()?.select(v);
                    found.first()?.as_u64()
                };
                let custom = Custom {
                    text: &t,
                    finish: &f,
                    output_tokens: &n,
                };
                llm::assemble_stream(&ev, Some(&custom))
            }
            None => llm::assemble_stream(&ev, None),
        };
        if let Some(a) = answer {
            return Doc {
                json: Some(a.to_json()),
                answer: Some(a),
            };
        }
        // A stream of no known API: its events as a JSON array (what a
        // `[[stream]]` entry would assemble is up to the user).
        let values = llm::event_values(&ev)
            .into_iter()
            .zip(&ev)
            .map(|(v, e)| {
                v.unwrap_or_else(|| Value::String(String::from_utf8_lossy(&e.data).into()))
            })
            .collect();
        return Doc {
            json: Some(Value::Array(values)),
            answer: None,
        };
    }
    let json = parse_json(&body);
    if let Some(a) = json.as_ref().and_then(llm::assemble_body) {
        return Doc {
            json: Some(a.to_json()),
            answer: Some(a),
        };
    }
    Doc { json, answer: None }
}

/// The request body as the judge sees it: JSON when it is, else text.
pub fn request_value(r: &ReplayResult) -> Value {
    parse_json(&r.request_body)
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&r.request_body).into_owned()))
}

/// Whether a body may be an LLM answer, by cheap tests (event timing, a
/// stream content type, or a key every supported API answers with), so
/// ordinary JSON is not parsed only to find out it is not one.
pub fn maybe_llm(r: &ReplayResult) -> bool {
    if r.event_offsets_ns.is_some() {
        return true;
    }
    let ct = r.response_headers.get("content-type");
    if ct.and_then(events::by_content_type).is_some() {
        return true;
    }
    // Built once: making a searcher per answer cost more than the search.
    const KEYS: [&[u8]; 6] = [
        b"\"choices\"",
        b"\"content\"",
        b"\"generated_text\"",
        b"\"embedding\"",
        b"\"done\"",
        b"\"output\"",
    ];
    static FINDERS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::LazyLock::new(|| KEYS.into_iter().map(memchr::memmem::Finder::new).collect());
    let body = &r.response_body;
    FINDERS.iter().any(|f| f.find(body).is_some())
}
