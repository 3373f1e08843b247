//! Fuzz the replay client's reading of an answer: the bytes a hostile target
//! sends, split into chunks where the input says, through the same
//! `ResponseReader` the client drives from its socket. Nothing may panic,
//! and the stored body never exceeds `max_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowctl::replay::client::parse_response;

fuzz_target!(|data: &[u8]| {
    // First byte: the request method (HEAD has no body) and the body cap;
    // second: the chunk size, so framing is tested across every split.
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else {
        return;
    };
    let method = ["GET", "HEAD", "POST", "CONNECT"][usize::from(a & 3)];
    let max_body = usize::from(a >> 2) * 37;
    let chunk = usize::from(b).max(1);
    let chunks: Vec<&[u8]> = data[2..].chunks(chunk).collect();
    let answer = parse_response(&chunks, method, max_body);
    assert!(answer.body.len() <= max_body);
    assert!(answer.body.len() as u64 <= answer.body_len);
});
