//! `shadowctl diff` on LLM answers, with results files built here so every
//! figure is known in advance: streams assembled before comparing (ids and
//! timestamps never diverge), time to first token, gaps and decode speed
//! from `event_offsets_ns`, the same text in other API shapes, text noise
//! measured on the primary against itself, an external judge (real python3
//! processes) and `[[stream]]` entries for streams of no known API.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};
use shadowctl::schema::{
    results_schema, results_to_batch, HeaderList, ParquetFileWriter, ReplayResult, TargetRole,
    WriterConfig, META_TARGETS, RESULTS,
};

const T0: i64 = 1_700_000_000_000_000_000;
const MS: i64 = 1_000_000;
const US: i64 = 1_000;
const CHAT: &str = "POST /v1/chat/completions";

/// Words of the generated answers (40 of them: a stride of 3 visits each
/// once, so the words of one answer are distinct).
const VOCAB: [&str; 40] = [
    "shadow",
    "traffic",
    "copies",
    "live",
    "requests",
    "to",
    "a",
    "candidate",
    "service",
    "users",
    "never",
    "see",
    "its",
    "answers",
    "paired",
    "comparisons",
    "cancel",
    "shared",
    "noise",
    "so",
    "smaller",
    "shifts",
    "become",
    "visible",
    "the",
    "gate",
    "reads",
    "every",
    "result",
    "and",
    "decides",
    "whether",
    "release",
    "is",
    "safe",
    "latency",
    "tokens",
    "stream",
    "model",
    "reply",
];

/// The `n` words of exchange `i`'s answer.
fn words(i: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|k| VOCAB[(i * 7 + k * 3) % VOCAB.len()].to_string())
        .collect()
}

/// `w` with `count` words replaced by words found nowhere else.
fn edit(w: &[String], count: usize, seed: usize) -> Vec<String> {
    let mut out = w.to_vec();
    for j in 0..count {
        let at = (seed + j * 7) % w.len();
        out[at] = format!("x{seed}q{j}");
    }
    out
}

/// Stream pieces: each word with the space before it.
fn pieces(w: &[String]) -> Vec<String> {
    w.iter()
        .enumerate()
        .map(|(k, x)| if k == 0 { x.clone() } else { format!(" {x}") })
        .collect()
}

/// What one target answered to one exchange.
#[derive(Clone, Debug)]
struct Answer {
    content_type: &'static str,
    body: String,
    /// Arrival of each event, ns after the send (streams only).
    offsets: Option<Vec<i64>>,
    /// Arrival of the first content event, ns after the send.
    first_token: Option<i64>,
    /// Send to last byte, ns.
    latency: i64,
}

/// When a stream's content events come: the first after `ttft`, then one
/// every `gap`.
#[derive(Clone, Copy)]
struct Timing {
    ttft: i64,
    gap: i64,
}

fn sse(events: &[(Option<&str>, String)]) -> String {
    let mut out = String::new();
    for (name, data) in events {
        if let Some(n) = name {
            out.push_str(&format!("event: {n}\n"));
        }
        out.push_str(&format!("data: {data}\n\n"));
    }
    out
}

/// An OpenAI chat completions stream: a role chunk, one chunk per piece,
/// a finish chunk, a usage chunk, `[DONE]`. `tag` goes into the id, the
/// model, the fingerprint and `created`, so two answers never share them.
fn openai_stream(tag: &str, w: &[String], finish: &str, tokens: u64, t: Timing) -> Answer {
    // Differs between the two sides of an exchange (`p{i}`, `s{i}`).
    let created = 1_760_000_000 + tag.bytes().map(u64::from).sum::<u64>();
    let chunk = |choices: Value, usage: Value| {
        json!({
            "id": format!("chatcmpl-{tag}"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": format!("gpt-test-{tag}"),
            "system_fingerprint": format!("fp_{tag}"),
            "choices": choices,
            "usage": usage,
        })
        .to_string()
    };
    let mut events = vec![(
        None,
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            Value::Null,
        ),
    )];
    let mut offsets = vec![t.ttft / 2];
    for (k, p) in pieces(w).iter().enumerate() {
        events.push((
            None,
            chunk(
                json!([{"index": 0, "delta": {"content": p}, "finish_reason": null}]),
                Value::Null,
            ),
        ));
        offsets.push(t.ttft + k as i64 * t.gap);
    }
    let last = *offsets.last().unwrap();
    events.push((
        None,
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
            Value::Null,
        ),
    ));
    events.push((
        None,
        chunk(
            json!([]),
            json!({"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}),
        ),
    ));
    events.push((None, "[DONE]".to_string()));
    offsets.extend([last + 100 * US, last + 200 * US, last + 300 * US]);
    Answer {
        content_type: "text/event-stream; charset=utf-8",
        body: sse(&events),
        latency: last + 400 * US,
        offsets: Some(offsets),
        first_token: Some(t.ttft),
    }
}

/// An Anthropic Messages stream of the same pieces (`finish` in OpenAI's
/// words, sent in Anthropic's).
fn anthropic_stream(tag: &str, w: &[String], finish: &str, tokens: u64, t: Timing) -> Answer {
    let stop = match finish {
        "stop" => "end_turn",
        "length" => "max_tokens",
        other => other,
    };
    let start = json!({"type": "message_start", "message": {
        "id": format!("msg_{tag}"), "type": "message", "role": "assistant",
        "model": format!("claude-test-{tag}"), "content": [], "stop_reason": null,
        "usage": {"input_tokens": 12, "output_tokens": 1}}});
    let mut events = vec![
        (Some("message_start"), start.to_string()),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                .to_string(),
        ),
        (Some("ping"), json!({"type": "ping"}).to_string()),
    ];
    let mut offsets = vec![t.ttft / 2, t.ttft / 2 + 100 * US, t.ttft / 2 + 200 * US];
    for (k, p) in pieces(w).iter().enumerate() {
        events.push((
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
                .to_string(),
        ));
        offsets.push(t.ttft + k as i64 * t.gap);
    }
    let last = *offsets.last().unwrap();
    events.push((
        Some("content_block_stop"),
        json!({"type": "content_block_stop", "index": 0}).to_string(),
    ));
    events.push((
        Some("message_delta"),
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": tokens}})
        .to_string(),
    ));
    events.push((
        Some("message_stop"),
        json!({"type": "message_stop"}).to_string(),
    ));
    offsets.extend([last + 100 * US, last + 200 * US, last + 300 * US]);
    Answer {
        content_type: "text/event-stream; charset=utf-8",
        body: sse(&events),
        latency: last + 400 * US,
        offsets: Some(offsets),
        first_token: Some(t.ttft),
    }
}

/// A non-streamed OpenAI `chat.completion` with the same text.
fn openai_json(tag: &str, w: &[String], finish: &str, tokens: u64, latency: i64) -> Answer {
    let body = json!({
        "id": format!("chatcmpl-{tag}"),
        "object": "chat.completion",
        "created": 1_760_000_000 + tag.len(),
        "model": format!("gpt-test-{tag}"),
        "system_fingerprint": format!("fp_{tag}"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": pieces(w).concat(), "refusal": null},
                     "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens},
    });
    Answer {
        content_type: "application/json",
        body: body.to_string(),
        offsets: None,
        first_token: None,
        latency,
    }
}

/// A stream of no known API: NDJSON lines `{"piece": ...}`, then
/// `{"finish": "stop"}`.
fn ndjson_stream(w: &[String]) -> Answer {
    let mut body = String::new();
    let mut offsets = Vec::new();
    for (k, p) in pieces(w).iter().enumerate() {
        body.push_str(&json!({ "piece": p }).to_string());
        body.push('\n');
        offsets.push(5 * MS + k as i64 * MS);
    }
    body.push_str("{\"finish\":\"stop\"}\n");
    let last = *offsets.last().unwrap();
    offsets.push(last + 100 * US);
    Answer {
        content_type: "application/x-ndjson",
        body,
        latency: last + 200 * US,
        offsets: Some(offsets),
        first_token: Some(5 * MS),
    }
}

/// One exchange: the request and each target's answer.
struct Exchange {
    endpoint: &'static str,
    request: Value,
    recorded: Option<Answer>,
    primary: Answer,
    shadow: Answer,
}

fn request(i: usize, extra: &str) -> Value {
    json!({"model": "m", "stream": true,
           "messages": [{"role": "user", "content": format!("question {i}{extra}")}]})
}

fn row(id: u64, name: &str, role: TargetRole, x: &Exchange, a: &Answer) -> ReplayResult {
    let (method, path) = x.endpoint.split_once(' ').unwrap();
    let mut headers = HeaderList::new();
    headers.push(b"Content-Type", a.content_type.as_bytes());
    headers.push(b"Date", format!("t{id}{name}").as_bytes());
    let sent = T0 + id as i64 * 100 * MS;
    let first_byte = a.offsets.as_ref().map_or(a.latency / 2, |o| o[0]);
    ReplayResult {
        exchange_id: id,
        flow_id: id,
        target_name: name.into(),
        role: Some(role),
        method: method.into(),
        target: path.into(),
        endpoint: x.endpoint.into(),
        request_body: x.request.to_string().into_bytes(),
        due_ts: sent,
        sent_ts: Some(sent),
        first_byte_ts: Some(sent + first_byte),
        done_ts: Some(sent + a.latency),
        status: Some(200),
        response_headers: headers,
        response_body: a.body.clone().into_bytes(),
        response_body_len: a.body.len() as u64,
        event_offsets_ns: a.offsets.clone(),
        first_token_ts: a.first_token.map(|t| sent + t),
        ..Default::default()
    }
}

/// Write the exchanges as one results file of the targets `recorded`
/// (when any exchange has one), `primary` and the shadow `v2`.
fn write_results(path: &Path, exchanges: &[Exchange]) {
    let mut rows = Vec::new();
    let recorded = exchanges.iter().any(|x| x.recorded.is_some());
    for (i, x) in exchanges.iter().enumerate() {
        let id = i as u64;
        if let Some(r) = &x.recorded {
            rows.push(row(id, "recorded", TargetRole::Recorded, x, r));
        }
        rows.push(row(id, "primary", TargetRole::Primary, x, &x.primary));
        rows.push(row(id, "v2", TargetRole::Shadow, x, &x.shadow));
    }
    let targets = if recorded {
        "recorded,primary,v2"
    } else {
        "primary,v2"
    };
    write_rows(path, &rows, targets);
}

fn write_rows(path: &Path, rows: &[ReplayResult], targets: &str) {
    let mut w = ParquetFileWriter::create(path, results_schema(), RESULTS, WriterConfig::default())
        .unwrap();
    for chunk in rows.chunks(500) {
        w.write_batch(&results_to_batch(chunk).unwrap()).unwrap();
    }
    w.finish(vec![(META_TARGETS.to_string(), targets.to_string())])
        .unwrap();
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: Value,
}

impl Run {
    fn shadow(&self, endpoint: &str) -> &Value {
        let ep = self.report["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("no endpoints: {}\n{}", self.stdout, self.stderr))
            .iter()
            .find(|e| e["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no endpoint {endpoint} in {}", self.report));
        &ep["shadows"]["v2"]
    }

    /// The reason for `criterion` on `endpoint` (None: overall).
    fn reason(&self, criterion: &str, endpoint: Option<&str>) -> &Value {
        let want = endpoint.map_or(Value::Null, |e| Value::String(e.into()));
        self.report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["criterion"] == criterion && r["endpoint"] == want)
            .unwrap_or_else(|| {
                panic!(
                    "no {criterion} reason for {endpoint:?} in {:#}",
                    self.report["reasons"]
                )
            })
    }

    fn failed_criteria(&self) -> Vec<String> {
        let mut out: Vec<String> = self.report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "fail")
            .map(|r| r["criterion"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn diff(exchanges: &[Exchange], config: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.parquet");
    write_results(&results, exchanges);
    run_diff(dir.path(), &results, config)
}

fn run_diff(dir: &Path, results: &Path, config: &str) -> Run {
    let cfg = dir.join("shadow.toml");
    std::fs::write(&cfg, config).unwrap();
    let json_path = dir.join("report.json");
    let _ = std::fs::remove_file(&json_path);
    let out = Command::cargo_bin("shadowctl")
        .unwrap()
        .arg("diff")
        .arg(results)
        .arg("--config")
        .arg(&cfg)
        .arg("--json")
        .arg(&json_path)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    }
}

/// `got` within `rel` (relative) of `want`.
fn near(what: &str, got: &Value, want: f64, rel: f64) {
    let x = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {got}"));
    assert!(
        (x - want).abs() <= rel * want.abs(),
        "{what}: {x}, expected {want} within {}%",
        rel * 100.0
    );
}

fn paths(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn judge_script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/judges")
        .join(name)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------
// 1. Streamed OpenAI answers: assembled, timed.

const PRIMARY_TIMING: Timing = Timing {
    ttft: 10 * MS,
    gap: 2 * MS,
};

/// 400 streamed chat answers of 10 words (usage: 10 tokens); every 10th
/// stopped by length. The shadow says the same in `shadow_words` words
/// (usage as many tokens) with its own timing. 400: enough for the p99
/// time to first token to be bounded from above (0.99^400 < 2.25%).
fn chat_streams(shadow_words: usize, shadow_timing: Timing) -> Vec<Exchange> {
    (0..400)
        .map(|i| {
            let w = words(i, 10);
            let finish = if i % 10 == 0 { "length" } else { "stop" };
            let sw = words(i, shadow_words);
            Exchange {
                endpoint: CHAT,
                request: request(i, ""),
                recorded: None,
                primary: openai_stream(&format!("p{i}"), &w, finish, 10, PRIMARY_TIMING),
                shadow: openai_stream(
                    &format!("s{i}"),
                    &sw,
                    finish,
                    shadow_words as u64,
                    shadow_timing,
                ),
            }
        })
        .collect()
}

/// A model that answers 503 while it loads: those first answers say
/// nothing about the endpoint's kind, and its LLM figures (here a shadow
/// three times slower to its first token) are still gathered and judged.
#[test]
fn warm_up_errors_do_not_turn_an_endpoint_s_llm_figures_off() {
    let slow_first = Timing {
        ttft: 30 * MS,
        gap: MS,
    };
    let streams = chat_streams(10, slow_first);
    let overloaded = Answer {
        content_type: "application/json",
        body: r#"{"error":"overloaded"}"#.into(),
        offsets: None,
        first_token: None,
        latency: MS,
    };
    let mut rows = Vec::new();
    for i in 0..150u64 {
        for (name, role) in [("primary", TargetRole::Primary), ("v2", TargetRole::Shadow)] {
            let mut r = row(i, name, role, &streams[0], &overloaded);
            r.status = Some(503);
            rows.push(r);
        }
    }
    for (i, x) in streams.iter().enumerate() {
        let id = 150 + i as u64;
        rows.push(row(id, "primary", TargetRole::Primary, x, &x.primary));
        rows.push(row(id, "v2", TargetRole::Shadow, x, &x.shadow));
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.parquet");
    write_rows(&results, &rows, "primary,v2");
    let run = run_diff(dir.path(), &results, "");
    let llm = &run.shadow(CHAT)["llm"];
    assert_eq!(
        llm["answers"],
        json!({"primary": 400, "shadow": 400}),
        "{llm:#}"
    );
    near("ttft p99 ratio", &llm["ttft_p99_ratio"], 3.0, 0.03);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn streamed_answers_are_assembled_and_timed_from_event_offsets() {
    let slow_first = Timing {
        ttft: 30 * MS,
        gap: MS,
    };
    let run = diff(&chat_streams(10, slow_first), "");
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.report["verdict"], "NO-GO");
    let v2 = run.shadow(CHAT);
    // Chunk ids, `created`, model names and fingerprints differ on every
    // pair: the streams are compared as assembled answers, which agree.
    assert_eq!(v2["compared"], 400);
    assert_eq!(v2["divergent"], 0, "{:#}", v2["fields"]);
    assert_eq!(paths(&v2["fields"]), Vec::<String>::new());
    let llm = &v2["llm"];
    assert_eq!(llm["answers"], json!({"primary": 400, "shadow": 400}));
    assert_eq!(llm["streamed"], json!({"primary": 400, "shadow": 400}));
    // TTFT is the first content chunk, not the role chunk (at half of it).
    near(
        "primary ttft p50",
        &llm["ttft_ms"]["primary"]["p50"],
        10.0,
        0.02,
    );
    near(
        "primary ttft p99",
        &llm["ttft_ms"]["primary"]["p99"],
        10.0,
        0.02,
    );
    near(
        "shadow ttft p50",
        &llm["ttft_ms"]["shadow"]["p50"],
        30.0,
        0.02,
    );
    assert_eq!(llm["ttft_ms"]["primary"]["count"], 400);
    near("ttft p99 ratio", &llm["ttft_p99_ratio"], 3.0, 0.03);
    // 9 gaps per answer.
    assert_eq!(llm["inter_token_ms"]["primary"]["count"], 3600);
    assert_eq!(llm["inter_token_ms"]["shadow"]["count"], 3600);
    near(
        "primary gap p50",
        &llm["inter_token_ms"]["primary"]["p50"],
        2.0,
        0.02,
    );
    near(
        "shadow gap p50",
        &llm["inter_token_ms"]["shadow"]["p50"],
        1.0,
        0.02,
    );
    // (10 - 1) tokens over 9 gaps: 500 tokens/s primary, 1,000 shadow.
    let tps = &llm["tokens_per_second"];
    assert_eq!(tps["primary"]["count"], 400);
    near("primary tokens/s p50", &tps["primary"]["p50"], 500.0, 0.02);
    near(
        "primary tokens/s mean",
        &tps["primary"]["mean"],
        500.0,
        1e-9,
    );
    near("shadow tokens/s p50", &tps["shadow"]["p50"], 1000.0, 0.02);
    near("shadow tokens/s mean", &tps["shadow"]["mean"], 1000.0, 1e-9);
    near("tokens/s ratio", &llm["tokens_per_second_ratio"], 2.0, 0.03);
    // Output tokens from the usage chunk.
    assert_eq!(llm["output_tokens"]["primary"]["mean"], 10.0);
    assert_eq!(llm["output_tokens"]["shadow"]["mean"], 10.0);
    assert_eq!(llm["output_tokens"]["shadow"]["count"], 400);
    assert_eq!(llm["output_tokens_ratio"], 1.0);
    let finish = json!({"length": 40, "stop": 360});
    assert_eq!(
        llm["finish_reasons"],
        json!({"primary": finish, "shadow": finish})
    );
    // The default gate: TTFT p99 at most 1.5x the primary's.
    for ep in [Some(CHAT), None] {
        let ttft = run.reason("ttft_p99_ratio", ep);
        assert_eq!(ttft["outcome"], "fail", "{ttft}");
        near("ttft reason observed", &ttft["observed"], 3.0, 0.03);
        assert_eq!(ttft["threshold"], 1.5);
        let tps = run.reason("tokens_per_second_ratio", ep);
        assert_eq!(tps["outcome"], "pass", "{tps}");
        assert_eq!(tps["threshold"], 0.8);
        let tokens = run.reason("output_tokens_ratio", ep);
        assert_eq!(tokens["outcome"], "pass", "{tokens}");
        // 0 of 400: the 95% interval (0 to 0.95%) is below 1%.
        assert_eq!(run.reason("divergence_rate", ep)["outcome"], "pass");
    }
    // Last byte at 30 + 9 + 0.4 ms vs 10 + 18 + 0.4 ms: 1.38x, within 1.5x.
    assert_eq!(
        run.failed_criteria(),
        ["ttft_p99_ratio"],
        "{:#}",
        run.report["reasons"]
    );
}

#[test]
fn a_shadow_writing_40_percent_more_tokens_fails_the_output_token_gate() {
    let run = diff(&chat_streams(14, PRIMARY_TIMING), "");
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let llm = &run.shadow(CHAT)["llm"];
    assert_eq!(llm["output_tokens"]["primary"]["mean"], 10.0);
    assert_eq!(llm["output_tokens"]["shadow"]["mean"], 14.0);
    near(
        "output tokens ratio",
        &llm["output_tokens_ratio"],
        1.4,
        1e-9,
    );
    for ep in [Some(CHAT), None] {
        let tokens = run.reason("output_tokens_ratio", ep);
        assert_eq!(tokens["outcome"], "fail", "{tokens}");
        near("output tokens observed", &tokens["observed"], 1.4, 1e-9);
        assert_eq!(tokens["threshold"], 1.25);
        // Same first token and speed: those pass.
        assert_eq!(run.reason("ttft_p99_ratio", ep)["outcome"], "pass");
        assert_eq!(run.reason("tokens_per_second_ratio", ep)["outcome"], "pass");
    }
    // The longer text is a divergence too (on the text, and the usage).
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["divergent"], 400);
    assert_eq!(paths(&v2["fields"]), ["$.text", "$.usage.output_tokens"]);
}

// ---------------------------------------------------------------------------
// 2. The same text in another API's shape is the same answer.

const MESSAGES: &str = "POST /v1/messages";

#[test]
fn the_same_text_in_other_api_shapes_does_not_diverge() {
    let mut xs: Vec<Exchange> = (0..100)
        .map(|i| {
            let w = words(i, 12);
            let finish = if i % 4 == 0 { "length" } else { "stop" };
            Exchange {
                endpoint: CHAT,
                request: request(i, ""),
                recorded: None,
                primary: openai_stream(&format!("p{i}"), &w, finish, 12, PRIMARY_TIMING),
                shadow: openai_json(&format!("s{i}"), &w, finish, 12, 25 * MS),
            }
        })
        .collect();
    xs.extend((0..100).map(|i| {
        let w = words(i, 12);
        let finish = if i % 4 == 0 { "length" } else { "stop" };
        Exchange {
            endpoint: MESSAGES,
            request: request(i, " (anthropic)"),
            recorded: None,
            primary: anthropic_stream(&format!("p{i}"), &w, finish, 12, PRIMARY_TIMING),
            shadow: openai_stream(&format!("s{i}"), &w, finish, 12, PRIMARY_TIMING),
        }
    }));
    let run = diff(&xs, "");
    assert_ne!(run.code, Some(2), "{}", run.stderr);

    // OpenAI stream vs `chat.completion`: text, stop reason and usage
    // agree; only the Content-Type header tells a stream from a whole body.
    let chat = run.shadow(CHAT);
    assert_eq!(chat["compared"], 100);
    assert_eq!(paths(&chat["fields"]), ["header:content-type"]);
    assert_eq!(chat["by_kind"]["body"], 0);
    assert_eq!(chat["by_kind"]["header"], 100);
    let llm = &chat["llm"];
    assert_eq!(llm["answers"], json!({"primary": 100, "shadow": 100}));
    assert_eq!(llm["streamed"], json!({"primary": 100, "shadow": 0}));
    let finish = json!({"length": 25, "stop": 75});
    assert_eq!(
        llm["finish_reasons"],
        json!({"primary": finish, "shadow": finish})
    );
    // A whole body has no token timing: nothing to compare, no ratio.
    assert_eq!(llm["ttft_ms"]["shadow"]["count"], 0);
    assert_eq!(llm["ttft_p99_ratio"], Value::Null);
    assert_eq!(llm["tokens_per_second_ratio"], Value::Null);
    assert_eq!(llm["output_tokens_ratio"], 1.0);

    // Anthropic stream vs OpenAI stream: nothing differs at all (same
    // content type, stop reasons `end_turn`/`max_tokens` normalised).
    let messages = run.shadow(MESSAGES);
    assert_eq!(messages["compared"], 100);
    assert_eq!(messages["divergent"], 0, "{:#}", messages["fields"]);
    let llm = &messages["llm"];
    assert_eq!(
        llm["finish_reasons"],
        json!({"primary": finish, "shadow": finish})
    );
    near("ttft ratio", &llm["ttft_p99_ratio"], 1.0, 0.02);
    near(
        "anthropic ttft",
        &llm["ttft_ms"]["primary"]["p50"],
        10.0,
        0.02,
    );
    assert_eq!(llm["output_tokens"]["primary"]["mean"], 12.0);
    assert_eq!(llm["output_tokens_ratio"], 1.0);
}

// ---------------------------------------------------------------------------
// 3. Text noise: the shadow's similarity against the primary's own.

const ROUGE: &str = r#"
[[rule]]
path = "$.text"
compare = "rouge_l"
min = 0.3
"#;

/// 400 answers of 20 words. The recorded answer (a second primary sample)
/// differs from the live one in 1 to 3 words; the shadow in
/// `shadow_edits(i)` words.
fn sampled(shadow_edits: impl Fn(usize) -> usize) -> Vec<Exchange> {
    (0..400)
        .map(|i| {
            let base = words(i, 20);
            let recorded = edit(&base, 1 + i % 3, i);
            let shadow = edit(&base, shadow_edits(i), i + 3);
            Exchange {
                endpoint: CHAT,
                request: request(i, ""),
                recorded: Some(openai_json(
                    &format!("r{i}"),
                    &recorded,
                    "stop",
                    20,
                    20 * MS,
                )),
                primary: openai_json(&format!("p{i}"), &base, "stop", 20, 20 * MS),
                shadow: openai_json(&format!("s{i}"), &shadow, "stop", 20, 20 * MS),
            }
        })
        .collect()
}

fn similarity(v2: &Value) -> &Value {
    let list = v2["similarity"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["path"], "$.text");
    assert_eq!(list[0]["metric"], "rouge_l");
    &list[0]
}

#[test]
fn a_shadow_as_far_from_the_primary_as_the_primary_from_itself_passes() {
    // 1, 2 or 3 words in 20 changed on both sides: ROUGE-L 0.95, 0.9, 0.85.
    let run = diff(&sampled(|i| 1 + (i + 1) % 3), ROUGE);
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["divergent"], 0, "{:#}", v2["fields"]);
    let sim = similarity(v2);
    assert_eq!(sim["shadow"]["count"], 400);
    assert_eq!(sim["noise"]["count"], 400);
    near("shadow median", &sim["shadow"]["p50"], 0.9, 1e-9);
    near("noise median", &sim["noise"]["p50"], 0.9, 1e-9);
    assert_eq!(sim["drop"], 0.0);
    let ci = sim["drop_ci"].as_array().unwrap();
    assert!(ci[1].as_f64().unwrap() < 0.05, "{sim}");
    let r = run.reason("similarity_drop", Some(CHAT));
    assert_eq!(r["outcome"], "pass", "{r}");
    assert_eq!(r["threshold"], 0.05);
    assert_eq!(
        run.failed_criteria(),
        Vec::<String>::new(),
        "{:#}",
        run.report["reasons"]
    );
    assert_eq!(run.report["verdict"], "GO", "{}", run.stdout);
    assert_eq!(run.code, Some(0));
}

#[test]
fn rewritten_answers_fail_the_similarity_drop_though_each_passes_its_rule() {
    // Half the words rewritten: ROUGE-L 0.5, above the rule's 0.3, so no
    // single answer diverges; but far below the primary's own 0.9.
    let run = diff(&sampled(|_| 10), ROUGE);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.report["verdict"], "NO-GO");
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["divergent"], 0, "{:#}", v2["fields"]);
    let sim = similarity(v2);
    near("shadow median", &sim["shadow"]["p50"], 0.5, 1e-9);
    near("drop", &sim["drop"], 0.4, 0.15);
    let ci = sim["drop_ci"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() > 0.05, "{sim}");
    assert!(sim["p_value"].as_f64().unwrap() < 1e-6, "{sim}");
    let r = run.reason("similarity_drop", Some(CHAT));
    assert_eq!(r["outcome"], "fail", "{r}");
    assert_eq!(run.failed_criteria(), ["similarity_drop"]);
}

// ---------------------------------------------------------------------------
// 4. An external judge, through diff.

fn judge_config(script: &str, extra: &str) -> String {
    judge_command_config(&format!("{:?}", judge_script(script)), extra)
}

/// A judge rule on `$.text` run by `python3 ARGS` (ARGS as TOML strings).
fn judge_command_config(args: &str, extra: &str) -> String {
    format!(
        "judge_command = [\"python3\", {args}]\n{extra}\n[[rule]]\npath = \"$.text\"\ncompare = \"judge\"\nmin = 0.5\n"
    )
}

/// 200 answers of 10 words, recorded = live primary. The shadow changes
/// `edits` words (word overlap 9/11 for one) except in `low` exchanges,
/// where it says something else entirely (overlap 0); `mark` puts a marker
/// word first in the shadow's text of the given exchanges.
fn judged(low: usize, edits: usize, mark: &[(usize, &str)]) -> Vec<Exchange> {
    judged_by(
        // Byte for byte the live answer: scored 1 without a call.
        |_, base| base.to_vec(),
        |i, base| {
            let shadow = if i < low {
                other()
            } else {
                edit(base, edits, i)
            };
            match mark.iter().find(|(j, _)| *j == i) {
                Some((_, m)) => marked(shadow, m),
                None => shadow,
            }
        },
    )
}

#[test]
fn a_judge_scores_every_pair_and_low_scores_diverge() {
    let run = diff(&judged(20, 1, &[]), &judge_config("overlap.py", ""));
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    // 200 shadow pairs; the 200 noise pairs (recorded vs live primary, the
    // same bytes) score 1 without a call.
    assert_eq!(
        run.report["judge"],
        json!({"calls": 200, "scored": 200, "failed": 0, "timeouts": 0, "restarts": 0})
    );
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["judge_failed"], 0);
    // Overlap 0 is below min 0.5; 9/11 is above.
    assert_eq!(v2["divergent"], 20);
    assert_eq!(paths(&v2["fields"]), ["$.text"]);
    assert_eq!(v2["fields"][0]["divergent"], 20);
    let sim = &v2["similarity"][0];
    assert_eq!(sim["path"], "$.text");
    assert_eq!(sim["metric"], "judge");
    assert_eq!(sim["shadow"]["count"], 200);
    assert_eq!(sim["noise"]["count"], 200);
    assert_eq!(sim["noise"]["p50"], 1.0);
    near("shadow median", &sim["shadow"]["p50"], 9.0 / 11.0, 1e-9);
    near("drop", &sim["drop"], 2.0 / 11.0, 1e-9);
    let ex = &run.report["top_divergences"][0];
    assert_eq!(ex["differences"][0]["path"], "$.text");
    assert!(
        !run.report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["criterion"] == "judge_failures"),
        "{:#}",
        run.report["reasons"]
    );
    // 10% divergent; and the judge's scores fell 0.18 below the primary's own.
    assert_eq!(
        run.failed_criteria(),
        ["divergence_rate", "similarity_drop"]
    );
}

/// A gate loose enough that 200 exchanges with 2 divergent can be a GO.
/// Latency is not the subject (200 answers cannot bound a p99): its gate is off.
const LOOSE: &str = "[gate]\nmax_divergence_rate = 0.05\nmax_error_rate_increase = 0.05\nmax_p99_latency_ratio = inf\n";

#[test]
fn judge_timeouts_are_counted_and_never_a_go() {
    // Shadow = primary, but for the word HANG first in 2 answers.
    let xs = judged(0, 0, &[(5, "HANG"), (6, "HANG")]);
    // With a judge that answers, that is a GO...
    let control = diff(&xs, &judge_config("overlap.py", LOOSE));
    assert_eq!(
        control.code,
        Some(0),
        "{}\n{}",
        control.stdout,
        control.stderr
    );
    assert_eq!(control.report["judge"]["failed"], 0);
    // ...but these two judgements time out.
    let started = std::time::Instant::now();
    let run = diff(
        &xs,
        &judge_config("hang.py", &format!("judge_timeout_s = 1\n{LOOSE}")),
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    assert_ne!(run.code, Some(2), "{}", run.stderr);
    assert_ne!(run.report["verdict"], "GO");
    assert_eq!(run.code, Some(3), "{}", run.stdout);
    assert_eq!(run.report["verdict"], "INCONCLUSIVE");
    // Only the two values that differ are sent: equal ones score 1.
    let j = &run.report["judge"];
    assert_eq!(j["calls"], 2, "{j}");
    assert_eq!(j["failed"], 2, "{j}");
    assert_eq!(j["timeouts"], 2, "{j}");
    assert_eq!(j["scored"], 0, "{j}");
    assert!(j["restarts"].as_u64().unwrap() >= 2, "{j}");
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["judge_failed"], 2);
    assert_eq!(run.report["overall"]["v2"]["judge_failed"], 2);
    // A failed judgement is never a pass, nor the shadow's fault: the two
    // exchanges are unjudged, not divergent.
    assert_eq!(v2["divergent"], 0);
    assert_eq!(v2["unjudged"], 2);
    assert_eq!(run.report["overall"]["v2"]["unjudged"], 2);
    let r = run.reason("judge_failures", None);
    assert_eq!(r["outcome"], "inconclusive", "{r}");
    assert_eq!(r["observed"], 2.0);
    assert_eq!(run.failed_criteria(), Vec::<String>::new());
}

/// A judge that is down: it starts, then exits before answering, every time.
fn down_judge_config(extra: &str) -> String {
    judge_command_config("\"-c\", \"import sys; sys.exit(3)\"", extra)
}

/// LOOSE, and one edited word in ten (a similarity drop of 2/11) allowed.
fn looser() -> String {
    format!("{LOOSE}max_similarity_drop = 0.5\n")
}

#[test]
fn a_judge_outage_alone_is_inconclusive_not_a_no_go() {
    // Every shadow answer has one word edited: a working judge passes them.
    let xs = judged(0, 1, &[]);
    let control = diff(&xs, &judge_config("overlap.py", &looser()));
    assert_eq!(
        control.code,
        Some(0),
        "{}\n{}",
        control.stdout,
        control.stderr
    );
    assert_eq!(control.shadow(CHAT)["divergent"], 0);
    // The judge is down: nothing is known about the 200 texts, which is
    // not a reason to stop the rollout, nor to allow it.
    let run = diff(&xs, &down_judge_config(&looser()));
    assert_eq!(run.code, Some(3), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.report["verdict"], "INCONCLUSIVE");
    assert_eq!(run.report["judge"]["scored"], 0);
    assert!(
        run.stdout.contains("0 divergent, 200 unjudged"),
        "{}",
        run.stdout
    );
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["judge_failed"], 200);
    assert_eq!(v2["divergent"], 0);
    assert_eq!(v2["unjudged"], 200);
    assert_eq!(run.failed_criteria(), Vec::<String>::new());
    let r = run.reason("judge_failures", None);
    assert_eq!(r["outcome"], "inconclusive", "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("200 exchanges hold such values and no other difference"),
        "{r}"
    );
}

#[test]
fn a_judge_outage_hides_no_real_divergence() {
    // As above, and the recorded answers differ from the live primary's by
    // a word, so the noise pairs are judged (and fail) too; 100 shadow
    // answers also stop for another reason, which needs no judge.
    let xs: Vec<Exchange> = judged(0, 1, &[])
        .into_iter()
        .enumerate()
        .map(|(i, mut x)| {
            let base = words(i, 10);
            x.recorded = Some(openai_json(
                &format!("r{i}"),
                &edit(&base, 1, i + 7),
                "stop",
                10,
                20 * MS,
            ));
            if i < 100 {
                let text = edit(&base, 1, i);
                x.shadow = openai_json(&format!("s{i}"), &text, "length", 10, 20 * MS);
            }
            x
        })
        .collect();
    let run = diff(&xs, &down_judge_config(&looser()));
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.report["verdict"], "NO-GO");
    let v2 = run.shadow(CHAT);
    // 200 shadow pairs and 200 noise pairs failed.
    assert_eq!(v2["judge_failed"], 400);
    let r = run.reason("judge_failures", None);
    let detail = r["detail"].as_str().unwrap();
    assert!(
        detail.contains("200 on this shadow's pairs, 200 on the primary's own noise pairs"),
        "{detail}"
    );
    // The failed noise pairs did not make `$.text` noise, and the failed
    // shadow pairs did not hide the 100 real differences.
    assert_eq!(v2["divergent"], 100);
    assert_eq!(v2["unjudged"], 100);
    assert_eq!(
        paths(&v2["fields"]),
        ["$.finish_reason"],
        "{:#}",
        v2["fields"]
    );
    assert_eq!(run.failed_criteria(), ["divergence_rate"]);
}

/// 200 exchanges whose recorded and shadow texts are made from the live
/// primary's words by `recorded` and `shadow` (given the exchange's index).
fn judged_by(
    recorded: impl Fn(usize, &[String]) -> Vec<String>,
    shadow: impl Fn(usize, &[String]) -> Vec<String>,
) -> Vec<Exchange> {
    (0..200)
        .map(|i| {
            let base = words(i, 10);
            let answer = |tag: String, w: &[String]| openai_json(&tag, w, "stop", 10, 20 * MS);
            Exchange {
                endpoint: CHAT,
                request: request(i, ""),
                recorded: Some(answer(format!("p{i}"), &recorded(i, &base))),
                primary: answer(format!("p{i}"), &base),
                shadow: answer(format!("s{i}"), &shadow(i, &base)),
            }
        })
        .collect()
}

fn other() -> Vec<String> {
    (0..10).map(|k| format!("other{k}")).collect()
}

fn marked(mut w: Vec<String>, marker: &str) -> Vec<String> {
    w[0] = marker.to_string();
    w
}

#[test]
fn a_judge_failing_on_most_shadow_pairs_hides_no_regression() {
    // The primary differs from itself on `$.text` in 10 of 200 exchanges
    // (5%). The judge refuses 150 of the shadow's pairs; of the 50 it
    // scores, 15 are far off (30%). Counted over all 200 (15 against 10)
    // that looked like noise; over the 50 known it is a regression.
    let xs = judged_by(
        |i, base| if i < 10 { other() } else { base.to_vec() },
        |i, base| match i {
            _ if i % 4 != 0 => marked(edit(base, 1, i), "LIMIT"),
            _ if i < 60 => other(),
            _ => edit(base, 1, i),
        },
    );
    let gate = "[gate]\nmax_divergence_rate = 0.01\nmax_p99_latency_ratio = inf\n";
    let run = diff(&xs, &judge_config("flaky.py", gate));
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["judge_failed"], 150);
    assert_eq!(
        run.report["judge"]["scored"],
        50 + 10,
        "{}",
        run.report["judge"]
    );
    assert_eq!(v2["divergent"], 15, "{v2:#}");
    assert_eq!(v2["unjudged"], 150);
    assert_eq!(paths(&v2["fields"]), ["$.text"]);
    assert!(
        run.failed_criteria()
            .contains(&"divergence_rate".to_string()),
        "{:?}",
        run.failed_criteria()
    );
}

#[test]
fn a_judge_failing_on_the_noise_pairs_makes_no_false_regression() {
    // The primary differs from itself on `$.text` in 30% of the pairs the
    // judge scores (15 of 50; it refuses the other 150), and the shadow in
    // 30% of its 200. Counted over all 200 noise pairs (15 of 200) that
    // looked like a regression, and a NO-GO caused by the judge alone.
    let xs = judged_by(
        |i, base| match i {
            _ if i % 4 != 0 => marked(base.to_vec(), "LIMIT"),
            _ if i < 60 => other(),
            _ => base.to_vec(),
        },
        |i, base| if i < 60 { other() } else { edit(base, 1, i) },
    );
    let run = diff(&xs, &judge_config("flaky.py", &looser()));
    assert_eq!(run.code, Some(3), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.report["verdict"], "INCONCLUSIVE");
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["judge_failed"], 150);
    assert_eq!(v2["divergent"], 0, "{v2:#}");
    let noise = &v2["noise_fields"][0];
    assert_eq!(noise["path"], "$.text", "{v2:#}");
    near("noise rate", &noise["noise_rate"], 15.0 / 50.0, 1e-9);
    near("shadow rate", &noise["shadow_rate"], 60.0 / 200.0, 1e-9);
    assert_eq!(run.failed_criteria(), Vec::<String>::new());
}

#[test]
fn a_judge_failing_on_every_shadow_pair_leaves_them_unjudged() {
    // The primary differs from itself on `$.text` in 10 of 200 scored
    // noise pairs; the judge refuses every shadow pair. Nothing is known
    // of the shadow's texts: they are neither noise nor agreement.
    let xs = judged_by(
        |i, base| if i < 10 { other() } else { base.to_vec() },
        |i, base| marked(edit(base, 1, i), "LIMIT"),
    );
    let run = diff(&xs, &judge_config("flaky.py", &looser()));
    assert_eq!(run.code, Some(3), "{}\n{}", run.stdout, run.stderr);
    let v2 = run.shadow(CHAT);
    assert_eq!(v2["judge_failed"], 200);
    assert_eq!(v2["divergent"], 0);
    assert_eq!(v2["unjudged"], 200, "{v2:#}");
    assert_eq!(v2["noise_fields"], json!([]), "no shadow rate was measured");
    assert!(
        run.stdout.contains("0 divergent, 200 unjudged"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_judge_command_that_cannot_start_is_bad_input() {
    let config = "judge_command = [\"/nonexistent/no-such-judge\", \"--x\"]\n\
                  [[rule]]\npath = \"$.text\"\ncompare = \"judge\"\nmin = 0.5\n";
    let run = diff(&judged(0, 1, &[]), config);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/no-such-judge"),
        "{}",
        run.stderr
    );
    assert_eq!(run.report, Value::Null, "no report on bad input");
}

// ---------------------------------------------------------------------------
// 5. `[[stream]]`: streams of no known API.

const GEN: &str = "POST /gen";

/// 40 NDJSON streams of 6 pieces; the shadow changes one word in the first
/// 10 of them.
fn custom_streams() -> Vec<Exchange> {
    (0..40)
        .map(|i| {
            let w = words(i, 6);
            let sw = if i < 10 { edit(&w, 1, 2) } else { w.clone() };
            Exchange {
                endpoint: GEN,
                request: json!({"prompt": format!("p{i}")}),
                recorded: None,
                primary: ndjson_stream(&w),
                shadow: ndjson_stream(&sw),
            }
        })
        .collect()
}

#[test]
fn a_stream_entry_assembles_custom_events_into_text() {
    let config = "[[stream]]\nendpoint = \"POST /gen\"\ntext_path = \"$.piece\"\nfinish_path = \"$.finish\"\n";
    let run = diff(&custom_streams(), config);
    assert_ne!(run.code, Some(2), "{}", run.stderr);
    let v2 = run.shadow(GEN);
    assert_eq!(v2["compared"], 40);
    assert_eq!(v2["divergent"], 10);
    assert_eq!(paths(&v2["fields"]), ["$.text"]);
    assert_eq!(v2["fields"][0]["kinds"], json!({"changed": 10}));
    // The example shows the assembled texts.
    let ex = &run.report["top_divergences"][0];
    let d = &ex["differences"][0];
    assert_eq!(d["path"], "$.text");
    let id = ex["exchange_id"].as_u64().unwrap() as usize;
    let primary_text = pieces(&words(id, 6)).concat();
    let shadow_text = pieces(&edit(&words(id, 6), 1, 2)).concat();
    assert_eq!(d["primary"], json!(primary_text).to_string());
    assert_eq!(d["shadow"], json!(shadow_text).to_string());
    let llm = &v2["llm"];
    assert_eq!(llm["streamed"], json!({"primary": 40, "shadow": 40}));
    assert_eq!(
        llm["finish_reasons"],
        json!({"primary": {"stop": 40}, "shadow": {"stop": 40}})
    );
    // No usage: one token per content event.
    assert_eq!(llm["output_tokens"]["primary"]["mean"], 6.0);
    near("ttft", &llm["ttft_ms"]["primary"]["p50"], 5.0, 0.02);
    near("gap", &llm["inter_token_ms"]["primary"]["p50"], 1.0, 0.02);
}

#[test]
fn without_a_stream_entry_custom_events_are_compared_as_a_list() {
    let run = diff(&custom_streams(), "");
    assert_ne!(run.code, Some(2), "{}", run.stderr);
    let v2 = run.shadow(GEN);
    assert_eq!(v2["divergent"], 10);
    assert_eq!(paths(&v2["fields"]), ["$[*].piece"]);
    assert_eq!(v2["llm"], Value::Null);
}
