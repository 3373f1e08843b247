use super::*;

/// A frame as bytes (test helper; the recorder never writes frames).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum Seen {
    Data(u32, Vec<u8>, bool),
    Headers(u32, Vec<u8>, bool),
    Push(u32, u32, Vec<u8>),
    Rst(u32, u32),
    GoAway(u32, u32),
    TableSize(u32),
    Other,
}

fn read_in_pieces(bytes: &[u8], cuts: &[usize], preface: bool) -> (Vec<Seen>, Result<(), String>) {
    let mut r = FrameReader::new(preface);
    let mut seen = Vec::new();
    let mut result = Ok(());
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    bounds.push(bytes.len());
    bounds.sort_unstable();
    for end in bounds {
        if end < at {
            continue;
        }
        result = r.feed(&bytes[at..end], &mut |f| {
            seen.push(match f {
                Frame::Data {
                    stream,
                    data,
                    end_stream,
                } => Seen::Data(stream, data.to_vec(), end_stream),
                Frame::Headers {
                    stream,
                    block,
                    end_stream,
                } => Seen::Headers(stream, block.to_vec(), end_stream),
                Frame::PushPromise {
                    stream,
                    promised,
                    block,
                } => Seen::Push(stream, promised, block.to_vec()),
                Frame::RstStream { stream, code } => Seen::Rst(stream, code),
                Frame::GoAway { last_stream, code } => Seen::GoAway(last_stream, code),
                Frame::HeaderTableSize(n) => Seen::TableSize(n),
                Frame::SettingsAck => Seen::Other,
                Frame::Other => Seen::Other,
            })
        });
        if result.is_err() {
            break;
        }
        at = end;
    }
    (seen, result)
}

/// DATA split into parts is joined per stream, in order, for comparison.
fn joined(seen: Vec<Seen>) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    for s in seen {
        if let (Some(Seen::Data(ps, pd, false)), Seen::Data(s2, d, e)) = (out.last_mut(), &s) {
            if *ps == *s2 {
                pd.extend_from_slice(d);
                if *e {
                    let last = out.last_mut().unwrap();
                    if let Seen::Data(_, _, end) = last {
                        *end = true;
                    }
                }
                continue;
            }
        }
        out.push(s);
    }
    out
}

fn sample_connection() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    // SETTINGS with a header table size of 8192 and max streams 100.
    b.extend(frame(
        kind::SETTINGS,
        0,
        0,
        &[0, 1, 0, 0, 0x20, 0, 0, 3, 0, 0, 0, 100],
    ));
    b.extend(frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
    // HEADERS with padding and priority, continued in two CONTINUATIONs.
    let mut h = vec![3u8];
    h.extend_from_slice(&[0x80, 0, 0, 0, 16]);
    h.extend_from_slice(b"abc");
    h.extend_from_slice(&[0, 0, 0]);
    b.extend(frame(kind::HEADERS, PADDED | PRIORITY_FLAG, 1, &h));
    b.extend(frame(kind::CONTINUATION, 0, 1, b"def"));
    b.extend(frame(kind::CONTINUATION, END_HEADERS, 1, b"gh"));
    b.extend(frame(kind::PRIORITY, 0, 3, &[0, 0, 0, 1, 7]));
    // Padded DATA, then an empty DATA that ends the stream.
    b.extend(frame(kind::DATA, PADDED, 1, &[2, b'x', b'y', b'z', 0, 0]));
    b.extend(frame(kind::DATA, END_STREAM, 1, &[]));
    b.extend(frame(kind::HEADERS, END_HEADERS | END_STREAM, 3, b"q"));
    b.extend(frame(
        kind::PUSH_PROMISE,
        END_HEADERS,
        1,
        &[0, 0, 0, 2, b'p'],
    ));
    b.extend(frame(kind::RST_STREAM, 0, 3, &[0, 0, 0, 8]));
    b.extend(frame(kind::PING, 0, 0, &[0; 8]));
    b.extend(frame(kind::GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0, b'd']));
    b
}

fn expected() -> Vec<Seen> {
    vec![
        Seen::TableSize(8192),
        Seen::Other,
        Seen::Headers(1, b"abcdefgh".to_vec(), false),
        Seen::Other,
        Seen::Data(1, b"xyz".to_vec(), true),
        Seen::Headers(3, b"q".to_vec(), true),
        Seen::Push(1, 2, b"p".to_vec()),
        Seen::Rst(3, 8),
        Seen::Other,
        Seen::GoAway(3, 0),
    ]
}

#[test]
fn frames_padding_priority_and_continuation() {
    let (seen, r) = read_in_pieces(&sample_connection(), &[], true);
    r.unwrap();
    assert_eq!(joined(seen), expected());
}

#[test]
fn protocol_errors_stop_the_reader() {
    let mut b = frame(kind::HEADERS, 0, 1, b"a");
    b.extend(frame(kind::DATA, 0, 1, b"x"));
    let (_, r) = read_in_pieces(&b, &[], false);
    assert!(r.unwrap_err().contains("inside a header block"));
    let (_, r) = read_in_pieces(b"GET / HTTP/1.1\r\n\r\n", &[], true);
    assert_eq!(r.unwrap_err(), "no HTTP/2 connection preface");
    let (_, r) = read_in_pieces(&frame(kind::DATA, PADDED, 1, &[9, 1]), &[], false);
    assert!(r.unwrap_err().contains("padding"));
    let big = frame(kind::HEADERS, 0, 1, &vec![0; MAX_HELD_FRAME as usize + 1]);
    let (_, r) = read_in_pieces(&big, &[], false);
    assert!(r.is_err());
}

#[test]
fn frame_boundaries_are_recognised_mid_connection() {
    let conn = sample_connection();
    assert!(starts_with_frames(&conn[24..]));
    assert!(!starts_with_frames(&conn[25..]));
    assert!(!starts_with_frames(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!starts_with_frames(&conn[..24]));
}

proptest::proptest! {
    /// However TCP cuts the bytes, the same frames come out.
    #[test]
    fn any_split_gives_the_same_frames(cuts in proptest::collection::vec(0usize..400, 0..12)) {
        let (seen, r) = read_in_pieces(&sample_connection(), &cuts, true);
        proptest::prop_assert!(r.is_ok());
        proptest::prop_assert_eq!(joined(seen), expected());
    }

    /// Garbage never panics, and the reader holds at most one frame.
    #[test]
    fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let mut r = FrameReader::new(false);
        let _ = r.feed(&bytes, &mut |_| {});
        proptest::prop_assert!(r.buffered() <= MAX_HELD_FRAME as usize + MAX_BLOCK);
    }
}

/// One large frame does not leave its buffer behind: an idle connection
/// holds little, whatever it once carried.
#[test]
fn a_large_frame_does_not_leave_its_buffer_behind() {
    let mut r = FrameReader::new(false);
    // An unknown frame type of 512 KiB, fed in segment-sized pieces.
    let big = frame(0xfa, 0, 0, &vec![7u8; 512 << 10]);
    let mut frames = 0;
    for piece in big.chunks(1448) {
        r.feed(piece, &mut |_| frames += 1).unwrap();
    }
    assert_eq!(frames, 1);
    assert!(r.buf.capacity() <= KEEP_BUF, "{}", r.buf.capacity());
    // A small frame afterwards still reads.
    r.feed(&frame(0xfa, 0, 0, b"x"), &mut |_| frames += 1)
        .unwrap();
    assert_eq!(frames, 2);
}
