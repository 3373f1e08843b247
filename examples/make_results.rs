//! Write a synthetic results file for the diff benchmark:
//! `cargo run --release --example make_results -- N DIVERGENT_FRACTION OUT.parquet`.
//! Each exchange is POST /predict with a small JSON answer from a live
//! primary and one shadow (`v2`); the given fraction of shadow answers has a
//! different label. Latencies are drawn from a fixed pseudo-random sequence,
//! so the file is the same on every run.

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, n, frac, out] = args.as_slice() else {
        return Err("usage: make_results N DIVERGENT_FRACTION OUT.parquet".into());
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
    for id in 0..n {
        let label = if id % 3 == 0 { "cat" } else { "dog" };
        let shadow_label = if id % every == 0 { "bird" } else { label };
        rows.push(answer(id, "primary", TargetRole::Primary, label, next()));
        rows.push(answer(id, "v2", TargetRole::Shadow, shadow_label, next()));
        if rows.len() >= 8192 {
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
