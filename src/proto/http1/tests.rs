use super::*;
use crate::capture::flow::{Budget, FlowLimits, HttpFlow};
use crate::schema::Exchange;
use proptest::prelude::*;

const CLIENT: usize = 0;
const SERVER: usize = 1;

fn flow() -> (HttpFlow, Budget) {
    let mut f = HttpFlow::new(
        1,
        [
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ],
        FlowLimits {
            max_body: 1 << 20,
            max_pending: 64,
        },
    );
    f.set_client(CLIENT);
    f.set_clean_start(CLIENT, true);
    f.set_clean_start(SERVER, true);
    (
        f,
        Budget {
            held: 0,
            max: 1 << 30,
            memory_truncated: 0,
            memory_dropped_buffers: 0,
            interim_dropped: 0,
        },
    )
}

/// Feed the two directions in the given order of (side, bytes) pieces.
fn run(pieces: &[(usize, &[u8])]) -> Vec<Exchange> {
    let (mut f, mut b) = flow();
    for (i, (side, data)) in pieces.iter().enumerate() {
        f.data(*side, data, i as i64, None, &mut b);
    }
    f.finish(1000, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    out
}

#[test]
fn content_length_keep_alive_pairs_in_order() {
    let out = run(&[
        (
            CLIENT,
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            SERVER,
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ),
        (CLIENT, b"GET /b?q=1 HTTP/1.1\r\nHost: y\r\n\r\n"),
        (SERVER, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].method, "POST");
    assert_eq!(out[0].request_body, b"hello");
    assert_eq!(out[0].status, Some(201));
    assert_eq!(out[0].response_body, b"ok");
    assert_eq!(out[1].target, "/b?q=1");
    assert_eq!(out[1].host.as_deref(), Some("y"));
    assert_eq!(out[1].seq_in_flow, 1);
    assert_eq!(out[1].response_body, b"abc");
    assert!(out.iter().all(|e| e.incomplete.is_none()));
}

#[test]
fn chunked_with_trailers_is_dechunked() {
    let out = run(&[
        (CLIENT, b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n"),
        (SERVER, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"),
    ]);
    assert_eq!(out[0].request_body, b"abcde");
    assert_eq!(out[0].request_body_len, 5);
    assert_eq!(out[0].request_trailers.get("x-sum"), Some(&b"9"[..]));
    assert_eq!(
        out[0].response_body, b"\x1f\x8b\x08\x00",
        "content-encoding kept as sent"
    );
    assert!(out[0].incomplete.is_none());
}

#[test]
fn no_body_for_head_204_304_and_interim_statuses_are_kept() {
    let out = run(&[
        (
            CLIENT,
            b"HEAD / HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n",
        ),
        (SERVER, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        (
            SERVER,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
        ),
        (SERVER, b"HTTP/1.1 304 Not Modified\r\n\r\n"),
    ]);
    let statuses: Vec<_> = out.iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![Some(200), Some(204), Some(304)]);
    assert!(out
        .iter()
        .all(|e| e.response_body.is_empty() && e.incomplete.is_none()));
}

#[test]
fn expect_100_continue_records_final_status() {
    let out = run(&[
        (
            CLIENT,
            b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        ),
        (
            SERVER,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
        ),
        (CLIENT, b"data"),
        (SERVER, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, Some(200));
    assert_eq!(out[0].interim_statuses, vec![100, 102]);
    assert_eq!(out[0].request_body, b"data");
}

/// A server that sends interim answers without end does not grow the row
/// without end: the first 32 are kept, the others counted.
#[test]
fn interim_answers_are_kept_up_to_a_bound() {
    let many = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(1000);
    let (mut f, mut b) = flow();
    f.data(CLIENT, b"GET /slow HTTP/1.1\r\n\r\n", 0, None, &mut b);
    f.data(SERVER, &many, 1, None, &mut b);
    let end = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    f.data(SERVER, end, 2, None, &mut b);
    f.finish(1000, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert_eq!(b.interim_dropped, 1000 - 32);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, Some(200));
    assert_eq!(out[0].interim_statuses, vec![102; 32]);
    assert!(out[0].incomplete.is_none());
}

#[test]
fn pipelined_requests_pair_in_order() {
    let out = run(&[
        (CLIENT, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"),
        (SERVER, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 404 NF\r\nContent-Length: 1\r\n\r\n2"),
        (SERVER, b"HTTP/1.1 500 E\r\nContent-Length: 1\r\n\r\n3"),
    ]);
    let got: Vec<_> = out
        .iter()
        .map(|e| (e.target.as_str(), e.status.unwrap()))
        .collect();
    assert_eq!(got, vec![("/1", 200), ("/2", 404), ("/3", 500)]);
}

#[test]
fn close_delimited_body_ends_with_the_stream() {
    let (mut f, mut b) = flow();
    f.data(CLIENT, b"GET / HTTP/1.0\r\n\r\n", 1, None, &mut b);
    f.data(SERVER, b"HTTP/1.0 200 OK\r\n\r\nall of ", 2, None, &mut b);
    f.data(SERVER, b"this", 3, None, &mut b);
    f.end(SERVER, 4, &mut b);
    f.finish(5, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert_eq!(out[0].response_body, b"all of this");
    assert!(out[0].incomplete.is_none());
    assert_eq!(out[0].response_end_ts, Some(4));
}

/// The same body, but the connection is reset (or the capture ends)
/// before the server closes it: what came is kept, and marked cut.
#[test]
fn close_delimited_body_not_closed_by_the_server_is_cut() {
    let (mut f, mut b) = flow();
    f.data(CLIENT, b"GET /events HTTP/1.1\r\n\r\n", 1, None, &mut b);
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    f.data(SERVER, head, 2, None, &mut b);
    f.data(SERVER, b"data: 1\n\n", 3, None, &mut b);
    f.finish(5, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_body, b"data: 1\n\n");
    assert_eq!(
        out[0].incomplete,
        Some(crate::schema::IncompleteReason::ResponseCut),
        "{:?}",
        out[0]
    );
}

/// The capture starts between a HEAD and its answer: the answer's
/// Content-Length frames no body (the method is unknown), so it must not
/// swallow the answers after it.
#[test]
fn an_answer_without_its_request_does_not_take_a_body_on_faith() {
    let (mut f, mut b) = flow();
    let orphan = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
    f.data(SERVER, orphan, 1, None, &mut b);
    for (i, path) in ["/a", "/b"].iter().enumerate() {
        let t = 2 + 2 * i as i64;
        let req = format!("GET {path} HTTP/1.1\r\n\r\n");
        f.data(CLIENT, req.as_bytes(), t, None, &mut b);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        f.data(SERVER, ok, t + 1, None, &mut b);
    }
    f.end(SERVER, 9, &mut b);
    f.finish(10, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    let answered: Vec<_> = out
        .iter()
        .map(|e| (e.target.as_str(), e.status, e.response_body.as_slice()))
        .collect();
    assert_eq!(
        answered,
        [("/a", Some(200), &b"ok"[..]), ("/b", Some(200), &b"ok"[..])],
        "{out:?}"
    );
}

#[test]
fn upgrade_ends_http_parsing() {
    let out = run(&[
        (
            CLIENT,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ),
        (
            SERVER,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        ),
        (CLIENT, b"\x81\x85garbage GET / HTTP/1.1\r\n\r\n"),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, Some(101));
    assert!(out[0].upgraded);
}

#[test]
fn unanswered_and_cut_requests_are_flagged() {
    let out = run(&[
        (
            CLIENT,
            b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        ),
        (SERVER, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].incomplete,
        Some(crate::schema::IncompleteReason::ResponseCut)
    );
    assert_eq!(out[1].status, None);
    assert_eq!(
        out[1].incomplete,
        Some(crate::schema::IncompleteReason::RequestCut)
    );
    assert_eq!(out[1].request_body, b"abc");
}

#[test]
fn gap_in_a_length_body_keeps_framing() {
    let (mut f, mut b) = flow();
    f.data(
        CLIENT,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        1,
        None,
        &mut b,
    );
    f.data(
        SERVER,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01",
        2,
        None,
        &mut b,
    );
    f.gap(SERVER, 5, 3, &mut b);
    f.data(
        SERVER,
        b"789HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n",
        4,
        None,
        &mut b,
    );
    f.finish(5, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert_eq!(out[0].status, Some(200));
    assert_eq!(out[0].response_body, b"01789");
    assert_eq!(out[0].response_body_len, 10);
    assert_eq!(
        out[0].incomplete,
        Some(crate::schema::IncompleteReason::ResponseGap)
    );
    assert_eq!(out[1].status, Some(202));
    assert!(out[1].incomplete.is_none());
}

/// A stream of chunks (an LLM's tokens) with bytes lost inside one chunk:
/// the chunk's size still frames it, and the chunks after it are kept.
#[test]
fn gap_inside_a_chunk_keeps_the_chunks_after_it() {
    let (mut f, mut b) = flow();
    f.data(
        CLIENT,
        b"POST /v1/chat HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        1,
        None,
        &mut b,
    );
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01";
    f.data(SERVER, head, 2, None, &mut b);
    f.gap(SERVER, 5, 3, &mut b);
    f.data(SERVER, b"789\r\n3\r\nabc\r\n0\r\n\r\n", 4, None, &mut b);
    f.data(
        SERVER,
        b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n",
        5,
        None,
        &mut b,
    );
    f.finish(6, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].status, Some(200));
    assert_eq!(out[0].response_body, b"01789abc");
    assert_eq!(out[0].response_body_len, 13);
    assert_eq!(
        out[0].incomplete,
        Some(crate::schema::IncompleteReason::ResponseGap)
    );
    assert_eq!(out[1].target, "/b");
    assert_eq!(out[1].status, Some(202));
    assert!(out[1].incomplete.is_none(), "{:?}", out[1].incomplete);
}

#[test]
fn lost_response_head_resynchronises_on_the_next_one() {
    let (mut f, mut b) = flow();
    f.data(
        CLIENT,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        1,
        None,
        &mut b,
    );
    // The head of the first response is lost; its body remains.
    f.gap(SERVER, 40, 2, &mut b);
    f.data(
        SERVER,
        b"body of a\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
        3,
        None,
        &mut b,
    );
    f.finish(5, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert_eq!(out[0].target, "/a");
    assert_eq!(out[0].status, None);
    assert_eq!(out[1].target, "/b");
    assert_eq!(out[1].status, Some(200));
    assert_eq!(out[1].response_body, b"b");
}

#[test]
fn malformed_request_lines_that_servers_answer_are_kept() {
    let out = run(&[
        (CLIENT, b"OPTIONS\nHost: h\n\n"),
        (
            SERVER,
            b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        ),
    ]);
    assert_eq!(out[0].method, "OPTIONS");
    assert_eq!(out[0].target, "");
    assert_eq!(out[0].status, Some(400));
    let out = run(&[(CLIENT, b"GET /a b HTTP/1.1\r\n\r\n")]);
    assert_eq!(out[0].target, "/a b");
}

#[test]
fn non_http_is_detected_at_once() {
    let (mut f, mut b) = flow();
    f.data(
        CLIENT,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        1,
        None,
        &mut b,
    );
    assert!(f.is_non_http());
}

#[test]
fn start_line_checks() {
    assert_eq!(
        looks_like_request_line(b"GET / HTTP/1.1\r\n", false),
        Looks::Yes
    );
    assert_eq!(
        looks_like_request_line(b"GET / HTT", false),
        Looks::NeedMore
    );
    assert_eq!(looks_like_request_line(b"GET /\r\n", false), Looks::No);
    assert_eq!(looks_like_request_line(b"GET /\r\n", true), Looks::Yes);
    assert_eq!(looks_like_request_line(b"get /\r\n", true), Looks::No);
    assert_eq!(looks_like_request_line(b"\x16\x03", true), Looks::No);
    assert_eq!(looks_like_status_line(b"HTTP/1.1 200 OK"), Looks::Yes);
    assert_eq!(looks_like_status_line(b"HTTP/1"), Looks::NeedMore);
    assert_eq!(looks_like_status_line(b"SSH-2.0"), Looks::No);
}

fn conversation() -> (Vec<u8>, Vec<u8>) {
    let client = b"POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world\
GET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n\
HEAD /h HTTP/1.1\r\n\r\n"
        .to_vec();
    let server = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\nT: 1\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        .to_vec();
    (client, server)
}

type Summary = (String, Option<u16>, Vec<u8>, Vec<u8>);

fn summary(out: &[Exchange]) -> Vec<Summary> {
    out.iter()
        .map(|e| {
            (
                e.target.clone(),
                e.status,
                e.request_body.clone(),
                e.response_body.clone(),
            )
        })
        .collect()
}

/// Heads, chunked bodies and trailers that come a byte at a time (the
/// search for a head's end resumes where it stopped) read as when whole.
#[test]
fn heads_and_trailers_fed_a_byte_at_a_time_read_as_whole() {
    let (mut client, mut server) = conversation();
    // Many header lines: a long head, the case the resumed search is for.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    client.splice(18..18, many.bytes());
    server.splice(42..42, many.bytes());
    let whole = run(&[(CLIENT, &client), (SERVER, &server)]);
    let mut pieces: Vec<(usize, &[u8])> = client.chunks(1).map(|b| (CLIENT, b)).collect();
    pieces.extend(server.chunks(1).map(|b| (SERVER, b)));
    let bytes = run(&pieces);
    let heads = |out: &[Exchange]| -> Vec<String> {
        out.iter()
            .map(|e| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    e.request_headers, e.response_headers, e.response_trailers, e.incomplete
                )
            })
            .collect()
    };
    assert_eq!(whole.len(), 3);
    assert_eq!(
        whole[0].request_headers.len(),
        201,
        "{:?}",
        whole[0].request_headers
    );
    assert_eq!(summary(&bytes), summary(&whole));
    assert_eq!(heads(&bytes), heads(&whole));
}

proptest! {
    /// However TCP splits the two streams, the exchanges are the same.
    #[test]
    fn framing_does_not_depend_on_segmentation(
        cuts_c in proptest::collection::vec(1usize..40, 1..20),
        cuts_s in proptest::collection::vec(1usize..40, 1..20),
    ) {
        let (client, server) = conversation();
        let whole = run(&[(CLIENT, &client), (SERVER, &server)]);
        prop_assert_eq!(whole.len(), 3);
        let split = |data: &[u8], cuts: &[usize]| {
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= data.len() { break; }
                let end = (at + c).min(data.len());
                parts.push(data[at..end].to_vec());
                at = end;
            }
            parts
        };
        let (cp, sp) = (split(&client, &cuts_c), split(&server, &cuts_s));
        // All client pieces first, then server pieces: requests are known
        // before responses, as in a capture.
        let mut pieces: Vec<(usize, &[u8])> = cp.iter().map(|p| (CLIENT, p.as_slice())).collect();
        pieces.extend(sp.iter().map(|p| (SERVER, p.as_slice())));
        let parts = run(&pieces);
        prop_assert_eq!(summary(&parts), summary(&whole));
    }

    /// Arbitrary bytes in either direction never panic and never invent
    /// responses without requests.
    #[test]
    fn garbage_never_panics(c in proptest::collection::vec(any::<u8>(), 0..300),
                            s in proptest::collection::vec(any::<u8>(), 0..300),
                            gap in 0u64..50) {
        let (mut f, mut b) = flow();
        f.data(CLIENT, &c, 1, None, &mut b);
        f.gap(SERVER, gap, 2, &mut b);
        f.data(SERVER, &s, 3, None, &mut b);
        f.gap(CLIENT, gap, 4, &mut b);
        f.finish(5, &mut b);
        let mut out = Vec::new();
        f.take_done(&mut out);
        for e in &out {
            prop_assert!(!e.method.is_empty());
        }
    }
}

/// One request and its response through a flow; the single row.
fn one(request: &[u8], response: &[u8]) -> Exchange {
    let out = run(&[(CLIENT, request), (SERVER, response)]);
    assert!(
        !out.is_empty(),
        "no row for {:?}",
        String::from_utf8_lossy(request)
    );
    out[0].clone()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn flagged(e: &Exchange, reason: crate::schema::IncompleteReason, detail: &str) {
    assert_eq!(
        e.incomplete,
        Some(reason),
        "{} {} {:?}",
        e.method,
        e.target,
        e.malformed_detail
    );
    let got = e.malformed_detail.as_deref().unwrap_or("");
    assert!(got.contains(detail), "detail {got:?} lacks {detail:?}");
}

use crate::schema::IncompleteReason::{RequestMalformed, ResponseMalformed};

#[test]
fn invalid_header_lines_are_kept_and_flagged() {
    let e = one(b"GET / HTTP/1.1\r\nFo@: Failure\r\nHost: h\r\n\r\n", OK);
    flagged(&e, RequestMalformed, "not a token");
    assert_eq!(e.request_headers.get("fo@"), Some(&b"Failure"[..]));
    assert_eq!(e.status, Some(200), "the answer still pairs");
    // The body of a Content-Length with a space before the colon is kept.
    let e = one(b"POST / HTTP/1.1\r\nContent-Length : 4\r\n\r\nbody", OK);
    flagged(&e, RequestMalformed, "whitespace before the colon");
    assert_eq!(e.request_body, b"body");
    let e = one(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nen-US Content-Type: text/xml\r\nContent-Length: 2\r\n\r\nok",
    );
    flagged(&e, ResponseMalformed, "not a token");
    assert!(e.response_headers.get("en-us content-type").is_some());
}

#[test]
fn folded_lines_are_unfolded_alike_in_both_directions_and_flagged() {
    let e = one(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n  abc\r\n\r\n3\r\nxyz\r\n0\r\n\r\n",
        OK,
    );
    flagged(&e, RequestMalformed, "folding");
    assert_eq!(
        e.request_headers.get("transfer-encoding"),
        Some(&b"chunked abc"[..])
    );
    // Not framed as chunked (a server that unfolds does not): the bytes stay.
    assert_eq!(e.request_body, b"3\r\nxyz\r\n0\r\n\r\n");
    let e = one(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok",
    );
    flagged(&e, ResponseMalformed, "folding");
    assert_eq!(e.response_headers.get("x-a"), Some(&b"one two"[..]));
}

#[test]
fn bare_cr_is_flagged_never_read_as_a_line_end() {
    let e = one(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\rContent-Length: 4\r\n\r\nbody",
    );
    flagged(&e, ResponseMalformed, "bare CR");
    let e = one(
        b"POST / HTTP/1.1\r\nx:\rTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        OK,
    );
    flagged(&e, RequestMalformed, "bare CR");
    assert_eq!(e.request_body, b"5\r\nhello\r\n0\r\n\r\n", "nothing lost");
    let e = one(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n",
    );
    flagged(&e, ResponseMalformed, "chunk-size");
    assert!(
        e.response_body.ends_with(b"0\r\n\r\n"),
        "{:?}",
        e.response_body
    );
}

#[test]
fn invalid_framing_headers_are_flagged_and_the_body_kept() {
    for cl in ["4 2", "13 37", "", "-1", "99999999999999999999", "3, 10"] {
        let req = format!("POST /x HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nbody");
        let e = one(req.as_bytes(), OK);
        flagged(&e, RequestMalformed, "Content-Length");
        assert_eq!(e.request_body, b"body", "{cl:?}");
    }
    let two = one(
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nbody",
        OK,
    );
    flagged(&two, RequestMalformed, "Content-Length");
    for te in [
        "Transfer-Encoding: identity\r\nContent-Length: 4",
        "Transfer-Encoding: chunkedchunked",
        "Transfer-Encoding: chunked, deflate",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ] {
        let req = format!("POST /x HTTP/1.1\r\n{te}\r\n\r\n4\r\nbody\r\n0\r\n\r\n");
        let out = run(&[(CLIENT, req.as_bytes()), (SERVER, OK)]);
        assert_eq!(
            out.len(),
            1,
            "{te:?}: the body is no second request: {out:?}"
        );
        flagged(&out[0], RequestMalformed, "");
        assert!(
            out[0].request_body.windows(4).any(|w| w == b"body"),
            "{te:?}"
        );
    }
}

#[test]
fn a_space_in_the_target_keeps_the_version_and_is_flagged() {
    let e = one(b"GET /foo bar/ HTTP/1.1\r\nHost: h\r\n\r\n", OK);
    flagged(&e, RequestMalformed, "space inside the request-target");
    assert_eq!(e.target, "/foo bar/");
    assert_eq!(e.http_version, "HTTP/1.1");
    let e = one(b"DESCRIBE rtsp://cam/1 RTSP/1.0\r\nCSeq: 1\r\n\r\n", OK);
    flagged(&e, RequestMalformed, "not an HTTP/1 version");
}

#[test]
fn trailers_with_bare_lf_are_kept() {
    let e = one(
        b"POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\nX-Sum: 9\nY: 2\n\n",
        OK,
    );
    assert_eq!(e.request_body, b"abc");
    assert_eq!(e.request_trailers.get("x-sum"), Some(&b"9"[..]));
    assert_eq!(e.request_trailers.get("y"), Some(&b"2"[..]));
    assert!(e.incomplete.is_none(), "{e:?}");
}

#[test]
fn connect_has_no_content_and_bad_status_lines_are_malformed_not_lost() {
    let out = run(&[
        (
            CLIENT,
            b"CONNECT h:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        ),
        (SERVER, b"HTTP/1.1 200 Connection established\r\n\r\n"),
    ]);
    assert_eq!(out[0].status, Some(200));
    assert!(out[0].upgraded, "the tunnel opened: {out:?}");
    let e = one(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTPER/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    flagged(&e, ResponseMalformed, "invalid status line");
}

#[test]
fn a_head_over_the_limit_is_a_flagged_row_not_a_gap() {
    let mut req = b"POST /big HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 1 << 20));
    req.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nhi");
    let (mut f, mut b) = flow();
    f.data(CLIENT, &req, 1, None, &mut b);
    f.data(SERVER, OK, 2, None, &mut b);
    f.finish(3, &mut b);
    let mut out = Vec::new();
    f.take_done(&mut out);
    assert!(!f.is_non_http());
    assert_eq!(out[0].target, "/big");
    flagged(&out[0], RequestMalformed, "head larger than");
    assert_eq!(out[0].status, Some(200));
}

/// Mutations of a valid request or response never give a row marked
/// complete whose head differs from what a strict parser reads.
/// Lower-cased header names with their values.
type Fields = Vec<(String, Vec<u8>)>;

fn strict_request(bytes: &[u8]) -> Option<(String, String, Fields)> {
    let mut h = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut h);
    match r.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Some((
            r.method?.to_string(),
            r.path?.to_string(),
            r.headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        )),
        _ => None,
    }
}

fn mutate(base: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut m = base.to_vec();
    for &(at, what) in edits {
        let at = at % (m.len() + 1);
        match what % 7 {
            0 => m.insert(at, b'\r'),
            1 => m.insert(at, b'\n'),
            2 => m.insert(at, 0),
            3 => m.insert(at, b' '),
            4 => m.insert(at, b':'),
            // Duplicate a framing header line.
            5 => {
                let line = b"Content-Length: 3\r\n";
                m.splice(at..at, line.iter().copied());
            }
            _ => {
                let line = b"Transfer-Encoding: chunked\r\n";
                m.splice(at..at, line.iter().copied());
            }
        }
    }
    m
}

proptest! {
    #[test]
    fn mutated_requests_are_never_clean_rows_with_another_head(
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..4),
    ) {
        let base = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let m = mutate(base, &edits);
        let out = run(&[(CLIENT, &m), (SERVER, OK)]);
        for e in out.iter().filter(|e| e.incomplete.is_none()) {
            // A later row starts where its request line does: a strict
            // parser must read the same head from there.
            let line = format!("{} {}", e.method, e.target);
            let from = if e.seq_in_flow == 0 {
                0
            } else {
                memchr::memmem::rfind(&m, line.as_bytes()).unwrap_or(0)
            };
            let strict = strict_request(&m[from..]);
            prop_assert!(strict.is_some(), "clean row from a head strict parsing rejects: {:?} -> {e:?}", String::from_utf8_lossy(&m));
            let (method, target, headers) = strict.unwrap();
            prop_assert_eq!(&e.method, &method);
            prop_assert_eq!(&e.target, &target);
            let ours: Vec<(String, Vec<u8>)> = e.request_headers.iter().map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec())).collect();
            prop_assert_eq!(ours, headers);
        }
    }

    #[test]
    fn mutated_responses_are_never_clean_rows_with_another_head(
        edits in proptest::collection::vec((0usize..120, any::<u8>()), 1..4),
    ) {
        let base = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let m = mutate(base, &edits);
        let out = run(&[(CLIENT, b"GET / HTTP/1.1\r\n\r\n"), (SERVER, &m)]);
        for e in out.iter().filter(|e| e.incomplete.is_none() && e.status.is_some()) {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            let strict = matches!(r.parse(&m), Ok(httparse::Status::Complete(_)));
            prop_assert!(strict, "clean row from a response strict parsing rejects: {:?} -> {e:?}", String::from_utf8_lossy(&m));
            prop_assert_eq!(e.status, r.code);
            let ours: Vec<(String, Vec<u8>)> = e.response_headers.iter().map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec())).collect();
            let theirs: Vec<(String, Vec<u8>)> = r.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
            prop_assert_eq!(ours, theirs);
        }
    }
}

#[test]
fn details_of_a_broken_head_never_quote_a_value_or_a_query() {
    for head in [
        &b"GET / HTTP/1.1\r\nAuthorization : Bearer s3cret\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nCookie: sid=s3cret\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nAuthorization: Bearer\r\n s3cret\r\n\r\n",
        b"GET /cb?access_token=s3cret&q=a b HTTP/1.1\r\n\r\n",
        b"GET /cb?access_token=s3cret\x01 HTTP/1.1\r\n\r\n",
    ] {
        let detail = super::strict::head_problem(Role::Request, head).expect("a problem");
        assert!(!detail.contains("s3cret"), "{detail}");
    }
    // The name and the path still say where.
    let d = super::strict::head_problem(
        Role::Request,
        b"GET / HTTP/1.1\r\nAuthorization : x\r\n\r\n",
    );
    assert!(d.unwrap().contains("Authorization"));
    let d = super::strict::head_problem(Role::Request, b"GET /cb?t=1 2 HTTP/1.1\r\n\r\n");
    assert!(d.unwrap().contains("/cb"));
}
