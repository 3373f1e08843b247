//! One fold per API: streamed events and whole bodies into an [`Answer`].
//! Written from each provider's published wire format (see
//! `testdata/README.md` for the sources of the example streams).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{normalize_finish, Answer, Api, Custom, ToolCall};
use crate::proto::events::Event;

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str()
}

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// The elements of the array at `key` (none when absent or not an array).
fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

// The shapes below are strict on purpose: a body taken for an LLM answer is
// compared only on what an answer holds (text, tool calls, finish reason,
// usage), so ordinary JSON mistaken for one (a long-running operation's
// `{"done": true, "response": {...}}`, a quiz's `choices[].text`, an empty
// `{"object": "list"}` page) would have every other field go unchecked.

/// An OpenAI Completions choice: its text, and a `finish_reason` key
/// (`null` while streaming).
fn completion_choice(c: &Value) -> bool {
    c.get("text").is_some_and(Value::is_string) && c.get("finish_reason").is_some()
}

/// Ollama's `/api/generate` and `/api/chat`: a model name, `done`, and a
/// text `response` or a `message` object.
fn ollama_shaped(v: &Value) -> bool {
    v.get("done").is_some_and(Value::is_boolean)
        && s(v, "model").is_some()
        && (v.get("response").is_some_and(Value::is_string)
            || v.get("message").is_some_and(Value::is_object))
}

/// Which API a stream speaks, from the first event that tells.
fn stream_api(events: &[Event], values: &[Option<Value>]) -> Option<Api> {
    for (e, v) in events.iter().zip(values) {
        let Some(v) = v else { continue };
        let obj = s(v, "object").unwrap_or("");
        let ty = s(v, "type").unwrap_or("");
        let first_choice = v.get("choices").and_then(|c| c.get(0));
        if obj == "chat.completion.chunk" || first_choice.is_some_and(|c| c.get("delta").is_some())
        {
            return Some(Api::OpenAiChat);
        }
        if obj == "text_completion" || first_choice.is_some_and(completion_choice) {
            return Some(Api::OpenAiCompletions);
        }
        if ty.starts_with("response.") {
            return Some(Api::OpenAiResponses);
        }
        let anthropic = [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ];
        if anthropic.contains(&ty) || e.name.as_deref().is_some_and(|n| anthropic.contains(&n)) {
            return Some(Api::AnthropicMessages);
        }
        if ollama_shaped(v) {
            return Some(Api::Ollama);
        }
        if v.get("token").is_some_and(Value::is_object)
            || v.get("generated_text").is_some_and(Value::is_string)
        {
            return Some(Api::Tgi);
        }
    }
    None
}

/// Tool calls being assembled, by the index the API gives them.
#[derive(Default)]
struct Tools(BTreeMap<u64, (String, String, Option<Value>)>, LastCall);

/// The call the last piece went to, and its id.
#[derive(Default)]
struct LastCall(Option<(u64, Option<String>)>);

impl Tools {
    /// Where a streamed piece goes: `k` is its place in its chunk. Most
    /// servers give an `index`; some OpenAI-compatible ones (older Ollama,
    /// Gemini's compatibility layer) do not, and send each call in its own
    /// chunk: there a new `id` opens a new call, and a piece without one
    /// continues the last, unless it follows another in the same chunk or
    /// names a function when the last call already has its name.
    fn slot(&mut self, index: Option<u64>, id: Option<&str>, name: &str, k: usize) -> u64 {
        let id = id.filter(|x| !x.is_empty());
        let last = &mut self.1 .0;
        let named = |i: &u64| self.0.get(i).is_some_and(|c| !c.0.is_empty());
        let i = match (index, last.as_ref()) {
            (Some(i), _) => i,
            (None, Some((i, last_id))) if id.is_some() && id == last_id.as_deref() => *i,
            (None, Some((i, _))) if id.is_none() && k == 0 && (name.is_empty() || !named(i)) => *i,
            (None, _) => self.0.keys().next_back().map_or(0, |k| k + 1),
        };
        if index.is_some() || id.is_some() || last.is_none() {
            *last = Some((i, id.map(str::to_string)));
        }
        i
    }

    fn name(&mut self, i: u64, name: &str) {
        self.0.entry(i).or_default().0.push_str(name);
    }
    fn args(&mut self, i: u64, piece: &str) {
        self.0.entry(i).or_default().1.push_str(piece);
    }
    fn value(&mut self, i: u64, v: Value) {
        self.0.entry(i).or_default().2 = Some(v);
    }
    fn finish(self) -> Vec<ToolCall> {
        self.0
            .into_values()
            .map(|(name, text, value)| ToolCall {
                name,
                arguments: match value {
                    // A value given whole wins unless pieces followed it
                    // (Anthropic's `input: {}` at block start).
                    Some(v) if text.is_empty() => v,
                    _ => Value::String(text),
                },
            })
            .collect()
    }
}

/// A fold over the events of one stream.
struct Fold {
    a: Answer,
    text: String,
    tools: Tools,
    /// Reasoning tokens the usage counted, and whether any were streamed.
    reasoning_tokens: Option<u64>,
    reasoning_streamed: bool,
}

impl Fold {
    fn new(api: Api) -> Self {
        Self {
            a: Answer::new(api),
            text: String::new(),
            tools: Tools::default(),
            reasoning_tokens: None,
            reasoning_streamed: false,
        }
    }

    fn content(&mut self, i: usize, piece: &str) {
        if !piece.is_empty() {
            self.text.push_str(piece);
            self.mark(i);
        }
    }

    /// Generated tokens that are not the answer's text (reasoning,
    /// "thinking"): they count for the timing (the model made them, and
    /// the API's token count includes them), not in the text compared.
    fn reasoning(&mut self, i: usize, piece: Option<&str>) {
        if piece.is_some_and(|p| !p.is_empty()) {
            self.reasoning_streamed = true;
            self.mark(i);
        }
    }

    /// A tool call's name: generated content, though not text.
    fn named(&mut self, i: usize, name: &str) {
        if !name.is_empty() {
            self.mark(i);
        }
    }

    /// An error sent inside the stream (the status was already 200).
    fn error(&mut self, e: &Value) {
        self.a.error.get_or_insert_with(|| e.clone());
    }

    fn mark(&mut self, i: usize) {
        if self.a.content_events.last() != Some(&i) {
            self.a.content_events.push(i);
        }
    }

    fn finish_reason(&mut self, raw: Option<&str>) {
        if let Some(r) = raw {
            self.a.finish_reason = Some(normalize_finish(r));
        }
    }

    fn usage(&mut self, u_: &Value, input: &str, output: &str) {
        if let Some(n) = u(u_, input) {
            self.a.input_tokens = Some(n);
        }
        if let Some(n) = u(u_, output) {
            self.a.output_tokens = Some(n);
        }
        // OpenAI's reasoning models count their reasoning in the output
        // tokens (Chat Completions and Responses name the detail apart).
        let details = u_
            .get("completion_tokens_details")
            .or_else(|| u_.get("output_tokens_details"));
        if let Some(n) = details.and_then(|d| u(d, "reasoning_tokens")) {
            self.reasoning_tokens = Some(n);
        }
    }

    fn done(mut self) -> Answer {
        // Reasoning the stream never showed was made before its first
        // event: those tokens are not in the timed span.
        if !self.reasoning_streamed {
            self.a.hidden_reasoning_tokens = self.reasoning_tokens.unwrap_or(0);
        }
        // An answer of tool calls only has no text (rather than "").
        self.a.text = (!self.text.is_empty()).then_some(self.text);
        self.a.tool_calls = self.tools.finish();
        self.a
    }
}

pub(super) fn stream(events: &[Event], values: &[Option<Value>]) -> Option<Answer> {
    let api = stream_api(events, values)?;
    let mut f = Fold::new(api);
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        match api {
            Api::OpenAiChat => openai_chat_event(&mut f, i, v),
            Api::OpenAiCompletions => openai_completions_event(&mut f, i, v),
            Api::OpenAiResponses => openai_responses_event(&mut f, i, v),
            Api::AnthropicMessages => anthropic_event(&mut f, i, v),
            Api::Ollama => ollama_event(&mut f, i, v),
            Api::Tgi => tgi_event(&mut f, i, v),
            Api::OpenAiEmbeddings | Api::Custom => {}
        }
    }
    Some(f.done())
}

/// The first choice only: `n > 1` answers are rare in production and the
/// first is the one a client shows.
fn first_choice(v: &Value) -> Option<&Value> {
    v.get("choices")?
        .as_array()?
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
}

/// What OpenAI-style streams share: usage, an `error` object in place of a
/// chunk, and how many choices came.
fn openai_common(f: &mut Fold, v: &Value) {
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        f.usage(usage, "prompt_tokens", "completion_tokens");
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        f.error(e);
    }
    for c in items(v, "choices") {
        let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
        f.a.choices = f.a.choices.max(idx.saturating_add(1));
    }
}

fn openai_chat_event(f: &mut Fold, i: usize, v: &Value) {
    openai_common(f, v);
    let Some(c) = first_choice(v) else { return };
    f.finish_reason(s(c, "finish_reason"));
    let Some(d) = c.get("delta") else { return };
    // A refusal is what the model said instead of an answer: its text.
    if let Some(t) = s(d, "content").or_else(|| s(d, "refusal")) {
        f.content(i, t);
    }
    // vLLM, SGLang and DeepSeek stream reasoning beside the content.
    f.reasoning(i, s(d, "reasoning_content").or_else(|| s(d, "reasoning")));
    for (k, call) in items(d, "tool_calls").enumerate() {
        let func = call.get("function");
        let name = func.and_then(|fu| s(fu, "name")).unwrap_or("");
        let idx = f.tools.slot(u(call, "index"), s(call, "id"), name, k);
        let args = func.and_then(|fu| s(fu, "arguments")).unwrap_or("");
        f.tools.name(idx, name);
        f.tools.args(idx, args);
        if !name.is_empty() || !args.is_empty() {
            f.mark(i);
        }
    }
    // The legacy `function_call` (before tool calls): one call, in pieces.
    if let Some(fc) = d.get("function_call").filter(|x| x.is_object()) {
        let (name, args) = (
            s(fc, "name").unwrap_or(""),
            s(fc, "arguments").unwrap_or(""),
        );
        f.tools.name(0, name);
        f.tools.args(0, args);
        if !name.is_empty() || !args.is_empty() {
            f.mark(i);
        }
    }
}

fn openai_completions_event(f: &mut Fold, i: usize, v: &Value) {
    openai_common(f, v);
    let Some(c) = first_choice(v) else { return };
    f.finish_reason(s(c, "finish_reason"));
    if let Some(t) = s(c, "text") {
        f.content(i, t);
    }
}

fn openai_responses_event(f: &mut Fold, i: usize, v: &Value) {
    let out_idx = u(v, "output_index").unwrap_or(0);
    match s(v, "type").unwrap_or("") {
        "response.output_text.delta" | "response.refusal.delta" => {
            if let Some(t) = s(v, "delta") {
                f.content(i, t);
            }
        }
        "response.output_item.added" => {
            let item = v.get("item");
            if item.and_then(|it| s(it, "type")) == Some("function_call") {
                let name = item.and_then(|it| s(it, "name")).unwrap_or("");
                f.tools.name(out_idx, name);
                // The name is generated, as in a Chat Completions chunk.
                f.named(i, name);
            }
        }
        "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
            f.reasoning(i, s(v, "delta"));
        }
        "error" => f.error(v),
        "response.function_call_arguments.delta" => {
            if let Some(t) = s(v, "delta").filter(|t| !t.is_empty()) {
                f.tools.args(out_idx, t);
                f.mark(i);
            }
        }
        "response.completed" | "response.incomplete" | "response.failed" => {
            if let Some(r) = v.get("response") {
                responses_end(f, r);
            }
        }
        _ => {}
    }
}

/// Usage and stop reason of a finished Responses API `response` object.
fn responses_end(f: &mut Fold, r: &Value) {
    if let Some(usage) = r.get("usage").filter(|u| u.is_object()) {
        f.usage(usage, "input_tokens", "output_tokens");
    }
    let calls = r
        .get("output")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|it| s(it, "type") == Some("function_call")));
    let reason = match s(r, "status") {
        Some("completed") if calls || !f.tools.0.is_empty() => Some("tool_calls".to_string()),
        Some("incomplete") => r
            .get("incomplete_details")
            .and_then(|d| s(d, "reason"))
            .map(str::to_string),
        other => other.map(str::to_string),
    };
    f.finish_reason(reason.as_deref());
}

fn anthropic_event(f: &mut Fold, i: usize, v: &Value) {
    let idx = u(v, "index").unwrap_or(0);
    match s(v, "type").unwrap_or("") {
        "message_start" => {
            // Its output_tokens is a placeholder (1 to 3): the count comes
            // with message_delta; a stream cut before it counts its events.
            let usage = v.get("message").and_then(|m| m.get("usage"));
            if let Some(n) = usage.and_then(|u_| u(u_, "input_tokens")) {
                f.a.input_tokens = Some(n);
            }
        }
        "content_block_start" => {
            let b = v.get("content_block");
            match b.and_then(|b| s(b, "type")) {
                Some("tool_use") | Some("server_tool_use") => {
                    let b = b.expect("checked");
                    let name = s(b, "name").unwrap_or("");
                    f.tools.name(idx, name);
                    // The name is generated, as in a Chat Completions chunk.
                    f.named(i, name);
                    if let Some(input) = b.get("input") {
                        f.tools.value(idx, input.clone());
                    }
                }
                Some("text") => {
                    if let Some(t) = b.and_then(|b| s(b, "text")) {
                        f.content(i, t);
                    }
                }
                _ => {}
            }
        }
        "content_block_delta" => {
            let Some(d) = v.get("delta") else { return };
            match s(d, "type") {
                Some("text_delta") => f.content(i, s(d, "text").unwrap_or("")),
                Some("thinking_delta") => f.reasoning(i, s(d, "thinking")),
                Some("input_json_delta") => {
                    let piece = s(d, "partial_json").unwrap_or("");
                    if !piece.is_empty() {
                        f.tools.args(idx, piece);
                        f.mark(i);
                    }
                }
                _ => {}
            }
        }
        "error" => f.error(v.get("error").unwrap_or(v)),
        "message_delta" => {
            f.finish_reason(v.get("delta").and_then(|d| s(d, "stop_reason")));
            if let Some(usage) = v.get("usage") {
                // Cumulative: the last one is the answer's count.
                f.usage(usage, "input_tokens", "output_tokens");
            }
        }
        _ => {}
    }
}

fn ollama_event(f: &mut Fold, i: usize, v: &Value) {
    if let Some(t) = s(v, "response") {
        f.content(i, t);
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        f.error(e);
    }
    f.reasoning(i, s(v, "thinking"));
    if let Some(m) = v.get("message") {
        f.content(i, s(m, "content").unwrap_or(""));
        f.reasoning(i, s(m, "thinking"));
        ollama_tools(f, m);
        let calls = m.get("tool_calls").and_then(Value::as_array);
        if calls.is_some_and(|c| !c.is_empty()) {
            f.mark(i);
        }
    }
    if v.get("done").and_then(Value::as_bool) == Some(true) {
        f.finish_reason(s(v, "done_reason").or(Some("stop")));
        f.usage(v, "prompt_eval_count", "eval_count");
    }
}

fn ollama_tools(f: &mut Fold, m: &Value) {
    let base = f.tools.0.len() as u64;
    for (k, call) in items(m, "tool_calls").enumerate() {
        let Some(func) = call.get("function") else {
            continue;
        };
        let idx = base + k as u64;
        f.tools.name(idx, s(func, "name").unwrap_or(""));
        if let Some(a) = func.get("arguments") {
            f.tools.value(idx, a.clone());
        }
    }
}

fn tgi_event(f: &mut Fold, i: usize, v: &Value) {
    if let Some(t) = v.get("token") {
        let special = t.get("special").and_then(Value::as_bool) == Some(true);
        if !special {
            f.content(i, s(t, "text").unwrap_or(""));
        }
    }
    if let Some(d) = v.get("details").filter(|d| d.is_object()) {
        f.finish_reason(s(d, "finish_reason"));
        if let Some(n) = u(d, "generated_tokens") {
            f.a.output_tokens = Some(n);
        }
    }
}

/// A `[[stream]]` config entry: text pieces where it says.
pub(super) fn custom(values: &[Option<Value>], c: &Custom) -> Answer {
    let mut f = Fold::new(Api::Custom);
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        if let Some(t) = (c.text)(v) {
            f.content(i, &t);
        }
        if let Some(r) = (c.finish)(v) {
            f.finish_reason(Some(&r));
        }
        if let Some(n) = (c.output_tokens)(v) {
            f.a.output_tokens = Some(n);
        }
    }
    f.done()
}

/// A whole (non-streamed) answer.
pub(super) fn body(v: &Value) -> Option<Answer> {
    let obj = s(v, "object").unwrap_or("");
    let ty = s(v, "type").unwrap_or("");
    if obj == "chat.completion"
        || first_choice(v)
            .and_then(|c| c.get("message"))
            .is_some_and(|m| m.get("role").is_some_and(Value::is_string))
    {
        return Some(openai_chat_body(v));
    }
    if obj == "text_completion" || first_choice(v).is_some_and(completion_choice) {
        let mut f = Fold::new(Api::OpenAiCompletions);
        openai_completions_event(&mut f, 0, v);
        return Some(whole(f));
    }
    if obj == "response" && v.get("output").is_some() {
        return Some(openai_responses_body(v));
    }
    if obj == "list"
        && v.get("data")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty() && d.iter().all(|e| e.get("embedding").is_some()))
    {
        return Some(openai_embeddings(v));
    }
    if ty == "message" && v.get("content").is_some_and(Value::is_array) {
        return Some(anthropic_body(v));
    }
    if v.get("done").and_then(Value::as_bool) == Some(true) && ollama_shaped(v) {
        let mut f = Fold::new(Api::Ollama);
        ollama_event(&mut f, 0, v);
        return Some(whole(f));
    }
    let tgi = match v {
        Value::Array(a) if a.len() == 1 => s(&a[0], "generated_text").map(|_| &a[0]),
        _ => s(v, "generated_text").map(|_| v),
    };
    if let Some(t) = tgi {
        let mut f = Fold::new(Api::Tgi);
        f.text.push_str(s(t, "generated_text").unwrap_or(""));
        tgi_event(&mut f, 0, t);
        return Some(whole(f));
    }
    None
}

/// A whole body has no events to mark.
fn whole(f: Fold) -> Answer {
    let mut a = f.done();
    a.content_events.clear();
    a
}

fn openai_chat_body(v: &Value) -> Answer {
    let mut f = Fold::new(Api::OpenAiChat);
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        f.usage(usage, "prompt_tokens", "completion_tokens");
    }
    if let Some(c) = first_choice(v) {
        f.finish_reason(s(c, "finish_reason"));
        if let Some(m) = c.get("message") {
            f.text
                .push_str(s(m, "content").or_else(|| s(m, "refusal")).unwrap_or(""));
            let legacy = m.get("function_call").filter(|x| x.is_object());
            let calls = items(m, "tool_calls").filter_map(|c| c.get("function"));
            for (k, func) in legacy.into_iter().chain(calls).enumerate() {
                f.tools.name(k as u64, s(func, "name").unwrap_or(""));
                f.tools.args(k as u64, s(func, "arguments").unwrap_or(""));
            }
        }
    }
    whole(f)
}

fn openai_responses_body(v: &Value) -> Answer {
    let mut f = Fold::new(Api::OpenAiResponses);
    for (k, item) in items(v, "output").enumerate() {
        match s(item, "type") {
            Some("message") => {
                for part in items(item, "content") {
                    if matches!(s(part, "type"), Some("output_text") | Some("refusal")) {
                        let t = s(part, "text").or(s(part, "refusal")).unwrap_or("");
                        f.text.push_str(t);
                    }
                }
            }
            Some("function_call") => {
                f.tools.name(k as u64, s(item, "name").unwrap_or(""));
                f.tools.args(k as u64, s(item, "arguments").unwrap_or(""));
            }
            _ => {}
        }
    }
    responses_end(&mut f, v);
    whole(f)
}

fn openai_embeddings(v: &Value) -> Answer {
    let mut a = Answer::new(Api::OpenAiEmbeddings);
    let mut data: Vec<&Value> = items(v, "data").collect();
    data.sort_by_key(|e| u(e, "index").unwrap_or(0));
    a.embeddings = Some(data.iter().map(|e| e["embedding"].clone()).collect());
    if let Some(usage) = v.get("usage") {
        a.input_tokens = u(usage, "prompt_tokens");
    }
    a
}

fn anthropic_body(v: &Value) -> Answer {
    let mut f = Fold::new(Api::AnthropicMessages);
    for (k, block) in items(v, "content").enumerate() {
        match s(block, "type") {
            Some("text") => f.text.push_str(s(block, "text").unwrap_or("")),
            Some("tool_use") | Some("server_tool_use") => {
                f.tools.name(k as u64, s(block, "name").unwrap_or(""));
                f.tools
                    .value(k as u64, block.get("input").cloned().unwrap_or(Value::Null));
            }
            _ => {}
        }
    }
    f.finish_reason(s(v, "stop_reason"));
    if let Some(usage) = v.get("usage") {
        f.usage(usage, "input_tokens", "output_tokens");
    }
    whole(f)
}
