use std::path::Path;

use super::*;

/// Every example answer in `testdata/llm/` assembles to its expected shape,
/// with the documented number of content events.
#[test]
fn every_example_answer_assembles_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/llm");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("body") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let meta = std::fs::read_to_string(path.with_extension("meta")).unwrap();
        let field = |k: &str| {
            meta.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("{}: no {k}", path.display()))
        };
        let ct = field("content-type:");
        let events: usize = field("content_events:").parse().unwrap();
        let expected: Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("expected.json")).unwrap())
                .unwrap();
        let a = assemble(Some(ct.as_bytes()), &body, None)
            .unwrap_or_else(|| panic!("{}: not recognised", path.display()));
        assert_eq!(a.to_json(), expected, "{}", path.display());
        if a.streamed {
            assert_eq!(
                a.content_events.len(),
                events,
                "{}: content events",
                path.display()
            );
        }
        seen += 1;
    }
    assert!(seen >= 12, "only {seen} examples in {}", dir.display());
}

#[test]
fn openai_chat_stream_with_tools_and_usage() {
    let body = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"name\":\"b\",\"arguments\":\"{\\\"y\\\":\"}}]}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"a\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"2}\"}}]}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5}}\n\n",
        "data: [DONE]\n\n"
    );
    let a = assemble(Some(b"text/event-stream"), body.as_bytes(), None).unwrap();
    assert_eq!(a.api, Api::OpenAiChat);
    assert_eq!(a.content_events, vec![1, 2, 3, 4, 5]);
    assert_eq!(a.events, 9);
    assert_eq!(
        a.to_json(),
        json!({
            "text": "Hello",
            "tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"y": 2}}],
            "finish_reason": "tool_calls",
            "usage": {"input_tokens": 9, "output_tokens": 5}
        })
    );
    assert_eq!(a.output_token_count(), Some(5));
}

#[test]
fn a_custom_stream_is_read_where_the_config_says() {
    let body = b"{\"piece\":\"a\"}\n{\"piece\":\"b\"}\n{\"end\":\"eos\",\"n\":2}\n";
    let text = |v: &Value| v.get("piece").and_then(Value::as_str).map(str::to_string);
    let finish = |v: &Value| v.get("end").and_then(Value::as_str).map(str::to_string);
    let tokens = |v: &Value| v.get("n").and_then(Value::as_u64);
    let c = Custom {
        text: &text,
        finish: &finish,
        output_tokens: &tokens,
    };
    assert!(assemble(Some(b"application/x-ndjson"), body, None).is_none());
    let a = assemble(Some(b"application/x-ndjson"), body, Some(&c)).unwrap();
    assert_eq!(
        a.to_json(),
        json!({"text": "ab", "finish_reason": "stop", "usage": {"output_tokens": 2}})
    );
}

#[test]
fn ordinary_json_is_not_an_llm_answer() {
    assert!(assemble(
        Some(b"application/json"),
        br#"{"label":"cat","score":0.9}"#,
        None
    )
    .is_none());
    assert!(assemble(None, b"plain text", None).is_none());
    assert!(assemble(None, b"", None).is_none());
    // Shapes that look like an answer's at a glance: taken for one, every
    // field but text, tool calls and finish reason went unchecked.
    for body in [
        r#"{"name":"operations/1","done":true,"response":{"state":"ACTIVE","id":42}}"#,
        r#"{"choices":[{"text":"Red"},{"text":"Blue"}],"correct":1}"#,
        r#"{"choices":[{"message":"hello"}]}"#,
        r#"{"object":"list","data":[],"has_more":false,"url":"/v1/customers"}"#,
        r#"{"generated_text":{"id":3}}"#,
    ] {
        assert!(
            assemble(Some(b"application/json"), body.as_bytes(), None).is_none(),
            "{body}"
        );
    }
    // An NDJSON progress stream with `done` and a `message` text.
    let progress = "{\"done\":false,\"message\":\"step 1\"}\n{\"done\":true,\"message\":\"ok\"}\n";
    assert!(assemble(Some(b"application/x-ndjson"), progress.as_bytes(), None).is_none());
    // The real shapes still are answers.
    let ollama =
        r#"{"model":"llama3","created_at":"2024-01-01T00:00:00Z","response":"Hi","done":true}"#;
    assert_eq!(
        assemble(Some(b"application/json"), ollama.as_bytes(), None).map(|a| a.api),
        Some(Api::Ollama)
    );
    let completion = r#"{"choices":[{"text":"Hi","index":0,"finish_reason":"stop"}]}"#;
    assert_eq!(
        assemble(Some(b"application/json"), completion.as_bytes(), None).map(|a| a.api),
        Some(Api::OpenAiCompletions)
    );
}

/// The legacy `function_call` is the answer's one tool call, whole or
/// streamed: two answers calling different functions differ.
#[test]
fn a_legacy_function_call_is_a_tool_call() {
    let body = |name: &str| {
        format!(
            r#"{{"object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":null,"function_call":{{"name":"{name}","arguments":"{{\"amount\":5}}"}}}},"finish_reason":"function_call"}}]}}"#
        )
    };
    let a = assemble(None, body("refund").as_bytes(), None).unwrap();
    let b = assemble(None, body("delete_account").as_bytes(), None).unwrap();
    assert_eq!(a.to_json()["tool_calls"][0]["name"], "refund");
    assert_ne!(a.to_json(), b.to_json());
    let stream = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"function_call\":{\"name\":\"refund\",\"arguments\":\"{\\\"amount\\\":\"}}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"function_call\":{\"arguments\":\"5}\"}}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"function_call\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    let s = assemble(Some(b"text/event-stream"), stream.as_bytes(), None).unwrap();
    assert_eq!(s.content_events, vec![0, 1]);
    assert_eq!(s.tool_calls.len(), 1);
    assert_eq!(s.tool_calls[0].name, "refund");
    assert_eq!(s.to_json()["tool_calls"], a.to_json()["tool_calls"]);
}

/// Servers that send each streamed tool call in its own chunk without an
/// `index`: a new `id` is a new call, a piece without one continues it.
#[test]
fn streamed_tool_calls_without_an_index_stay_apart() {
    let chunk = |call: &str| {
        format!("data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{call}]}}}}]}}\n\n")
    };
    let body = [
        chunk(r#"{"id":"a","function":{"name":"f","arguments":"{\"x\":"}}"#),
        chunk(r#"{"id":"","function":{"arguments":"1}"}}"#),
        chunk(r#"{"id":"b","function":{"name":"g","arguments":"{\"y\":2}"}}"#),
        // Two whole calls in one chunk, with neither index nor id.
        chunk(r#"{"function":{"name":"h","arguments":"{}"}},{"function":{"name":"k","arguments":"{}"}}"#),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    let a = assemble(Some(b"text/event-stream"), body.as_bytes(), None).unwrap();
    let names: Vec<&str> = a.tool_calls.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f", "g", "h", "k"]);
    let calls = a.to_json()["tool_calls"].clone();
    assert_eq!(calls[0]["arguments"], serde_json::json!({"x": 1}));
    assert_eq!(calls[1]["arguments"], serde_json::json!({"y": 2}));
}

/// A stream cut before `message_delta` has no output count: the
/// placeholder of `message_start` is not taken for one.
#[test]
fn a_cut_anthropic_stream_counts_its_content_events() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/llm/anthropic-messages-stream.body"
    );
    let body = std::fs::read_to_string(path).unwrap();
    let cut = &body[..body.find("event: message_delta").unwrap()];
    let a = assemble(Some(b"text/event-stream"), cut.as_bytes(), None).unwrap();
    assert_eq!(a.output_tokens, None);
    assert!(a.input_tokens.is_some());
    assert_eq!(a.output_token_count(), Some(a.content_events.len() as u64));
    assert!(a.content_events.len() >= 2);
}

#[test]
fn an_openai_refusal_is_the_answer_text() {
    let body = br#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
    let a = assemble(Some(b"application/json"), body, None).unwrap();
    assert_eq!(a.text.as_deref(), Some("I can't help with that."));
}

#[test]
fn an_error_inside_a_stream_is_part_of_the_answer() {
    let openai = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
    );
    let a = assemble(Some(b"text/event-stream"), openai.as_bytes(), None).unwrap();
    assert_eq!(a.to_json()["error"]["message"], "overloaded");
    assert_eq!(a.to_json()["text"], "Hi");
    let anthropic = concat!(
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let a = assemble(Some(b"text/event-stream"), anthropic.as_bytes(), None).unwrap();
    assert_eq!(a.to_json()["error"]["type"], "overloaded_error");
    // A stream without one has no `error` key.
    let ok = &openai[..openai.find("data: {\"error").unwrap()];
    let a = assemble(Some(b"text/event-stream"), ok.as_bytes(), None).unwrap();
    assert!(a.to_json().get("error").is_none());
}

#[test]
fn reasoning_counts_for_the_timing_not_the_text() {
    let anthropic = concat!(
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me see\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"42\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":30}}\n\n",
    );
    let a = assemble(Some(b"text/event-stream"), anthropic.as_bytes(), None).unwrap();
    assert_eq!(a.text.as_deref(), Some("42"));
    assert_eq!(
        a.content_events,
        vec![1, 2],
        "the first token is the thinking"
    );
    let vllm = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Hmm\"}}]}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Yes\"}}]}\n\n",
    );
    let a = assemble(Some(b"text/event-stream"), vllm.as_bytes(), None).unwrap();
    assert_eq!(
        (a.text.as_deref(), a.content_events.clone()),
        (Some("Yes"), vec![0, 1])
    );
}

#[test]
fn tool_call_names_are_content_in_every_api() {
    let anthropic = concat!(
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
    );
    let a = assemble(Some(b"text/event-stream"), anthropic.as_bytes(), None).unwrap();
    assert_eq!(a.content_events, vec![0, 1]);
    let responses = concat!(
        "data: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"function_call\",\"name\":\"get_weather\"}}\n\n",
        "data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":0,\"delta\":\"{}\"}\n\n",
    );
    let a = assemble(Some(b"text/event-stream"), responses.as_bytes(), None).unwrap();
    assert_eq!(a.content_events, vec![0, 1]);
}

#[test]
fn with_several_choices_the_decode_speed_counts_the_first_ones_events() {
    let chunk = |i: u32, t: &str| {
        format!("data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n")
    };
    let usage = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":40}}\n\n";
    let body = [
        chunk(0, "a"),
        chunk(1, "x"),
        chunk(0, "b"),
        chunk(1, "y"),
        usage.to_string(),
    ]
    .concat();
    let a = assemble(Some(b"text/event-stream"), body.as_bytes(), None).unwrap();
    assert_eq!(a.text.as_deref(), Some("ab"));
    assert_eq!(a.output_token_count(), Some(40));
    assert_eq!(a.timed_token_count(), Some(2));
    let one = [chunk(0, "a"), chunk(0, "b"), usage.to_string()].concat();
    let a = assemble(Some(b"text/event-stream"), one.as_bytes(), None).unwrap();
    assert_eq!(a.timed_token_count(), Some(40));
}

#[test]
fn reasoning_never_streamed_is_left_out_of_the_decode_speed() {
    let chunk = |t: &str| {
        format!("data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n")
    };
    let usage = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1030,\"completion_tokens_details\":{\"reasoning_tokens\":1000}}}\n\n";
    let body = [chunk("a"), chunk("b"), usage.to_string()].concat();
    let a = assemble(Some(b"text/event-stream"), body.as_bytes(), None).unwrap();
    assert_eq!(a.output_token_count(), Some(1030));
    assert_eq!(a.timed_token_count(), Some(30));
    // Streamed reasoning is timed with the rest.
    let thought = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n";
    let body = [thought.to_string(), chunk("a"), usage.to_string()].concat();
    let a = assemble(Some(b"text/event-stream"), body.as_bytes(), None).unwrap();
    assert_eq!(a.timed_token_count(), Some(1030));
}

#[test]
fn an_event_longer_than_the_cap_is_counted_as_cut() {
    let chunk = |text: &str| {
        format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        )
    };
    let whole = chunk("Hi") + &chunk(" there");
    let a = assemble(Some(b"text/event-stream"), whole.as_bytes(), None).unwrap();
    assert!(a.to_json().get("cut_events").is_none());
    // The second event's text is past the cap: it cannot be read.
    let long = "x".repeat(crate::proto::events::MAX_EVENT);
    let cut = chunk("Hi") + &chunk(&long);
    let a = assemble(Some(b"text/event-stream"), cut.as_bytes(), None).unwrap();
    let shape = a.to_json();
    assert_eq!(shape["cut_events"], 1);
    assert_eq!(shape["text"], "Hi");
}
