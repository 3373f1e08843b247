//! Write a synthetic results file for the diff benchmark:
//! `cargo run --release --example make_results -- N DIVERGENT_FRACTION OUT.parquet`.
//! Each exchange is POST /predict with a small JSON answer from a live
//! primary and one shadow (`v2`); the given fraction of shadow answers has a
//! different label. Latencies are drawn from a fixed pseudo-random sequence,
//! so the file is the same on every run.
//!
//! With a fourth argument `streams`, each answer is instead a streamed
//! OpenAI chat completion (POST /v1/chat/completions, `text/event-stream`)
//! of 50 events: a role chunk, 47 content chunks of one word, a finish
//! chunk and `[DONE]`, with event times; chunk ids and timestamps differ
//! between the two sides (as they do between any two answers) and the
//! divergent fraction has one word changed.

use shadowctl::schema::{
    results_schema, results_to_batch, HeaderList, ParquetFileWriter, ReplayResult, TargetRole,
    WriterConfig, META_TARGETS, RESULTS,
};

fn answer(id: u64, name: &str, role: TargetRole, label: &str, latency_ns: i64) -> ReplayResult {
    let mut headers = HeaderList::new();
    headers.push(b"Content-Type", b"application/json");
    let body = format!(
        r#"{{"id":{id},"label":"{label}","score":{:.4},"model":"m-7","tokens":[1,2,3]}}"#,
        (id % 997) as f64 / 997.0
    );
    let sent = 1_700_000_000_000_000_000 + id as i64 * 100_000;
    ReplayResult {
        exchange_id: id,
        flow_id: id / 10,
        target_name: name.into(),
        role: Some(role),
        method: "POST".into(),
        target: "/predict".into(),
        endpoint: "POST /predict".into(),
        request_body: format!(r#"{{"text":"input {id}"}}"#).into_bytes(),
        due_ts: sent,
        sent_ts: Some(sent),
        first_byte_ts: Some(sent + latency_ns / 2),
        done_ts: Some(sent + latency_ns),
        status: Some(200),
        response_headers: headers,
        response_body_len: body.len() as u64,
        response_body: body.into_bytes(),
        ..Default::default()
    }
}

const WORDS: &[&str] = &[
    "the", "model", "answers", "with", "care", "and", "every", "token", "comes", "in", "order",
    "so", "shadow", "traffic", "can", "be", "compared", "fairly",
];

/// A streamed chat answer of 50 events; `changed` swaps one word.
fn stream_answer(
    id: u64,
    name: &str,
    role: TargetRole,
    changed: bool,
    first_ns: i64,
) -> ReplayResult {
    let mut headers = HeaderList::new();
    headers.push(b"Content-Type", b"text/event-stream");
    let created = 1_700_000_000 + id + u64::from(role == TargetRole::Shadow) * 7;
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-{id}-{name}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut body = chunk(r#"{"role":"assistant","content":""}"#, "null");
    let mut offsets = vec![first_ns / 2];
    for i in 0..47u64 {
        let mut w = WORDS[((id + i * 7) % WORDS.len() as u64) as usize];
        if changed && i == 20 {
            w = "differently";
        }
        let piece = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        body += &chunk(&format!(r#"{{"content":"{piece}"}}"#), "null");
        offsets.push(first_ns + i as i64 * 2_000_000);
    }
    let end = first_ns + 47 * 2_000_000;
    body += &chunk("{}", r#""stop""#);
    body += "data: [DONE]\n\n";
    offsets.extend([end, end]);
    let sent = 1_700_000_000_000_000_000 + id as i64 * 100_000;
    ReplayResult {
        exchange_id: id,
        flow_id: id / 10,
        target_name: name.into(),
        role: Some(role),
        method: "POST".into(),
        target: "/v1/chat/completions".into(),
        endpoint: "POST /v1/chat/completions".into(),
        request_body: format!(
            r#"{{"stream":true,"messages":[{{"role":"user","content":"q {id}"}}]}}"#
        )
        .into_bytes(),
        due_ts: sent,
        sent_ts: Some(sent),
        first_byte_ts: Some(sent + first_ns / 2),
        first_token_ts: Some(sent + first_ns),
        done_ts: Some(sent + end),
        status: Some(200),
        response_headers: headers,
        response_body_len: body.len() as u64,
        response_body: body.into_bytes(),
        event_offsets_ns: Some(offsets),
        ..Default::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (n, frac, out, streams) = match args.as_slice() {
        [_, n, frac, out] => (n, frac, out, false),
        [_, n, frac, out, mode] if mode == "streams" => (n, frac, out, true),
        _ => return Err("usage: make_results N DIVERGENT_FRACTION OUT.parquet [streams]".into()),
    };
    let (n, frac): (u64, f64) = (n.parse()?, frac.parse()?);
    let every = if frac > 0.0 {
        (1.0 / frac).round() as u64
    } else {
        u64::MAX
    };
    let mut w = ParquetFileWriter::create(
        std::path::Path::new(out),
        results_schema(),
        RESULTS,
        WriterConfig::default(),
    )?;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        1_000_000 + (rng % 4_000_000) as i64
    };
    let mut rows = Vec::with_capacity(8192);
    let batch = if streams { 2048 } else { 8192 };
    for id in 0..n {
        if streams {
            let changed = id % every == 0;
            rows.push(stream_answer(
                id,
                "primary",
                TargetRole::Primary,
                false,
                next() * 4,
            ));
            rows.push(stream_answer(
                id,
                "v2",
                TargetRole::Shadow,
                changed,
                next() * 4,
            ));
        } else {
            let label = if id % 3 == 0 { "cat" } else { "dog" };
            let shadow_label = if id % every == 0 { "bird" } else { label };
            rows.push(answer(id, "primary", TargetRole::Primary, label, next()));
            rows.push(answer(id, "v2", TargetRole::Shadow, shadow_label, next()));
        }
        if rows.len() >= batch {
            w.write_batch(&results_to_batch(&rows)?)?;
            rows.clear();
        }
    }
    if !rows.is_empty() {
        w.write_batch(&results_to_batch(&rows)?)?;
    }
    w.finish(vec![(META_TARGETS.to_string(), "primary,v2".to_string())])?;
    Ok(())
}
