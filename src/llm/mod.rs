//! LLM answers in one shape. OpenAI (Chat Completions, Completions,
//! Responses, Embeddings), Anthropic Messages, Ollama and Hugging Face TGI
//! answer in their own JSON, streamed as events or not; [`Answer`] is what
//! they all say: the text, tool calls, why generation stopped and the token
//! counts. `diff` compares answers in this shape (see `docs/llm.md`), and
//! the content events it marks give time to first token and token gaps.

mod apis;

use serde_json::{json, Map, Value};

use crate::proto::events::{self, Event};

/// Which API an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiResponses,
    OpenAiEmbeddings,
    AnthropicMessages,
    Ollama,
    Tgi,
    /// A JSON event stream assembled by a `[[stream]]` config entry.
    Custom,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai.chat",
            Api::OpenAiCompletions => "openai.completions",
            Api::OpenAiResponses => "openai.responses",
            Api::OpenAiEmbeddings => "openai.embeddings",
            Api::AnthropicMessages => "anthropic.messages",
            Api::Ollama => "ollama",
            Api::Tgi => "tgi",
            Api::Custom => "custom",
        }
    }
}

/// One tool (function) call the model asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// As the API sent them: a JSON text (OpenAI, pieces joined) or a value.
    pub arguments: Value,
}

/// What one LLM answer said, whatever API said it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub api: Api,
    /// Generated text of the first choice (None for embeddings).
    pub text: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// Normalised: `stop`, `length`, `tool_calls`, `content_filter`, or the
    /// API's own word for anything else.
    pub finish_reason: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub embeddings: Option<Vec<Value>>,
    /// Streams: indexes (into the body's events) of the events that carried
    /// generated content, in order.
    pub content_events: Vec<usize>,
    /// Streams: how many events the body held.
    pub events: usize,
    /// A stream (false for one JSON body).
    pub streamed: bool,
    /// An error the API sent inside a stream that had begun as a success
    /// (its status was already 200): what it said, as it said it.
    pub error: Option<Value>,
    /// Streams: more than one choice came (`n > 1`): the API's token count
    /// covers them all, the text and times only the first.
    pub choices: u64,
    /// Reasoning tokens the API counted in `output_tokens` but never
    /// streamed (OpenAI's reasoning models): made before the first event.
    pub hidden_reasoning_tokens: u64,
    /// Streams: events longer than [`events::MAX_EVENT`], cut there and so
    /// not read: what they held is missing from the text.
    pub cut_events: u64,
}

impl Answer {
    fn new(api: Api) -> Self {
        Self {
            api,
            text: None,
            tool_calls: Vec::new(),
            finish_reason: None,
            input_tokens: None,
            output_tokens: None,
            embeddings: None,
            content_events: Vec::new(),
            events: 0,
            streamed: false,
            error: None,
            choices: 1,
            hidden_reasoning_tokens: 0,
            cut_events: 0,
        }
    }

    /// Output tokens of the first choice over its content events, for the
    /// decode speed: the API's count when it is that choice's alone (not
    /// for `n > 1`) less reasoning it never streamed, else one per content
    /// event.
    pub fn timed_token_count(&self) -> Option<u64> {
        if self.choices > 1 {
            return Some(self.content_events.len() as u64);
        }
        match (self.output_tokens, self.hidden_reasoning_tokens) {
            (Some(n), hidden) if hidden > 0 && n > hidden => Some(n - hidden),
            _ => self.output_token_count(),
        }
    }

    /// Output tokens: the API's count, else one per content event.
    pub fn output_token_count(&self) -> Option<u64> {
        self.output_tokens.or_else(|| {
            (self.streamed && !self.content_events.is_empty())
                .then_some(self.content_events.len() as u64)
        })
    }

    /// The documented shape `diff` compares (`docs/llm.md`): only what the
    /// API said; ids, timestamps and model names are left out because they
    /// differ between any two answers.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(t) = &self.text {
            m.insert("text".into(), Value::String(t.clone()));
        }
        if !self.tool_calls.is_empty() {
            let calls = self
                .tool_calls
                .iter()
                .map(|c| json!({"name": c.name, "arguments": parse_arguments(&c.arguments)}))
                .collect();
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(f) = &self.finish_reason {
            m.insert("finish_reason".into(), Value::String(f.clone()));
        }
        let mut usage = Map::new();
        if let Some(n) = self.input_tokens {
            usage.insert("input_tokens".into(), n.into());
        }
        if let Some(n) = self.output_tokens {
            usage.insert("output_tokens".into(), n.into());
        }
        if !usage.is_empty() {
            m.insert("usage".into(), Value::Object(usage));
        }
        if let Some(e) = &self.embeddings {
            m.insert("embeddings".into(), Value::Array(e.clone()));
        }
        if let Some(e) = &self.error {
            m.insert("error".into(), e.clone());
        }
        // Said, so an answer missing a piece is never taken for a whole one.
        if self.cut_events > 0 {
            m.insert("cut_events".into(), self.cut_events.into());
        }
        Value::Object(m)
    }
}

/// Arguments sent as JSON text are compared as the JSON they hold.
fn parse_arguments(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

/// Normalise a stop reason across APIs, so one config serves them all.
pub fn normalize_finish(raw: &str) -> String {
    match raw {
        "stop" | "end_turn" | "stop_sequence" | "eos_token" | "eos" | "completed" => "stop",
        "length" | "max_tokens" | "max_output_tokens" | "model_length" => "length",
        "tool_calls" | "tool_use" | "function_call" => "tool_calls",
        "content_filter" | "refusal" => "content_filter",
        other => other,
    }
    .to_string()
}

/// How to read a stream no built-in API matches (`[[stream]]` in the diff
/// config): where each event keeps its piece of text, and optionally the
/// stop reason and output token count.
pub struct Custom<'a> {
    pub text: &'a dyn Fn(&Value) -> Option<String>,
    pub finish: &'a dyn Fn(&Value) -> Option<String>,
    pub output_tokens: &'a dyn Fn(&Value) -> Option<u64>,
}

/// Parse each event's data as JSON (`[DONE]` and other markers are None).
pub fn event_values(events: &[Event]) -> Vec<Option<Value>> {
    events
        .iter()
        .map(|e| {
            let d = e.data.trim_ascii();
            matches!(d.first(), Some(b'{' | b'['))
                .then(|| serde_json::from_slice(d).ok())
                .flatten()
        })
        .collect()
}

/// Assemble a stream of events into one answer, if it is one of the known
/// APIs (or `custom` says how).
pub fn assemble_stream(events: &[Event], custom: Option<&Custom>) -> Option<Answer> {
    let values = event_values(events);
    let mut answer = match custom {
        Some(c) => apis::custom(&values, c),
        None => apis::stream(events, &values)?,
    };
    answer.streamed = true;
    answer.events = events.len();
    answer.cut_events = events.iter().filter(|e| e.truncated).count() as u64;
    Some(answer)
}

/// Assemble one JSON body (a non-streamed answer) if it is a known API's.
pub fn assemble_body(v: &Value) -> Option<Answer> {
    apis::body(v)
}

/// A response body as an answer: events when it is a stream (by content
/// type or content), else one JSON document.
pub fn assemble(
    content_type: Option<&[u8]>,
    body: &[u8],
    custom: Option<&Custom>,
) -> Option<Answer> {
    match events::detect(content_type, body) {
        Some(format) => {
            let ev = events::events_of(format, body, &[], 0);
            assemble_stream(&ev, custom)
        }
        None => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
            if *first != b'{' && *first != b'[' {
                return None;
            }
            assemble_body(&serde_json::from_slice(body).ok()?)
        }
    }
}

/// Index of the first event that carries generated content, for replay's
/// `first_token_ts` (role-only deltas, pings and usage chunks are not
/// tokens). A stream of an unknown shape counts its first event with data.
pub fn first_content_event(events: &[Event]) -> Option<usize> {
    match assemble_stream(events, None) {
        Some(a) => a.content_events.first().copied(),
        None => events.iter().position(|e| !e.data.trim_ascii().is_empty()),
    }
}

#[cfg(test)]
mod tests;
