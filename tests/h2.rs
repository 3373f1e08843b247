//! HTTP/2 and gRPC capture on real traffic: captures of nghttp2's nghttp,
//! h2load and nghttpd, curl, hyper-h2 and grpcio (testdata/h2, made by
//! testdata/h2/make-captures.sh), checked against tshark's http2 dissector
//! and against themselves with packets removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use shadowctl::schema::{read_exchanges, Exchange, IncompleteReason};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/h2")
        .join(name)
}

fn capture(pcap: &Path) -> Vec<Exchange> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.parquet");
    let st = Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .args(["capture", "--read"])
        .arg(pcap)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    read_exchanges(&out).unwrap().0
}

fn header(h: &shadowctl::schema::HeaderList, name: &str) -> Option<String> {
    h.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// grpc-status: in the trailers, or in the headers of a trailers-only answer.
fn grpc_status(ex: &Exchange) -> String {
    header(&ex.response_trailers, "grpc-status")
        .or_else(|| header(&ex.response_headers, "grpc-status"))
        .unwrap_or_default()
}

struct OracleRow {
    tcp_stream: usize,
    stream_id: u32,
    fields: [String; 5],
}

fn oracle(name: &str) -> Vec<OracleRow> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 7, "{l}");
            OracleRow {
                tcp_stream: c[0].parse().unwrap(),
                stream_id: c[1].parse().unwrap(),
                fields: std::array::from_fn(|i| c[2 + i].to_string()),
            }
        })
        .collect()
}

/// tshark numbers connections in order of their first packet, as capture
/// numbers flows; within one, streams carry their HTTP/2 id.
fn agreement(pcap: &str, tsv: &str) -> (usize, usize, Vec<String>) {
    let rows = capture(&fixture(pcap));
    let mut flows: Vec<u64> = rows.iter().map(|r| r.flow_id).collect();
    flows.sort_unstable();
    flows.dedup();
    let ours: HashMap<(usize, u32), &Exchange> = rows
        .iter()
        .map(|r| {
            let rank = flows.binary_search(&r.flow_id).unwrap();
            (
                (rank, r.stream_id.expect("HTTP/2 rows have a stream id")),
                r,
            )
        })
        .collect();
    let expected = oracle(tsv);
    assert_eq!(rows.len(), expected.len(), "one row per stream tshark saw");
    let (mut checked, mut agreed, mut bad) = (0, 0, Vec::new());
    for o in &expected {
        let Some(ex) = ours.get(&(o.tcp_stream, o.stream_id)) else {
            bad.push(format!("stream {}/{} missing", o.tcp_stream, o.stream_id));
            continue;
        };
        let mine = [
            ex.method.clone(),
            ex.target.clone(),
            ex.host.clone().unwrap_or_default(),
            ex.status.map(|s| s.to_string()).unwrap_or_default(),
            grpc_status(ex),
        ];
        for (i, want) in o.fields.iter().enumerate() {
            // An upgrade's first request was HTTP/1.1: tshark's http2
            // dissector has no pseudo-headers for it.
            if want.is_empty() && i < 3 {
                continue;
            }
            checked += 1;
            if mine[i] == *want {
                agreed += 1;
            } else {
                bad.push(format!(
                    "{}/{} field {i}: {:?} vs tshark {want:?}",
                    o.tcp_stream, o.stream_id, mine[i]
                ));
            }
        }
    }
    (checked, agreed, bad)
}

#[test]
fn capture_agrees_with_tshark_on_method_path_authority_status_and_grpc_status() {
    for (pcap, tsv) in [
        ("nghttp.pcap", "nghttp.tshark.tsv"),
        ("upgrade.pcap", "upgrade.tshark.tsv"),
        ("grpc.pcap", "grpc.tshark.tsv"),
    ] {
        let (checked, agreed, bad) = agreement(pcap, tsv);
        assert!(checked > 300, "{pcap}: only {checked} fields compared");
        // The bar is 99%; these captures are whole, so all agree.
        assert_eq!(agreed, checked, "{pcap}: {bad:?}");
    }
}

#[test]
fn h2c_upgrade_keeps_the_first_request_and_evicted_hpack_entries_decode_right() {
    let rows = capture(&fixture("upgrade.pcap"));
    // curl's connection (2 streams) and nghttp's (120).
    assert_eq!(rows.len(), 122);
    for ex in &rows {
        assert_eq!(ex.status, Some(200), "{ex:?}");
        assert!(ex.incomplete.is_none(), "{ex:?}");
        let body: serde_json::Value = serde_json::from_slice(&ex.response_body).unwrap();
        assert_eq!(body["path"], ex.target.as_str());
        assert_eq!(body["stream"], ex.stream_id.unwrap());
        // The server adds every answer's id to its HPACK table: 120 entries
        // of 109 bytes through a 4 KiB table, so most were evicted by the
        // time later answers referred to the name. A wrong entry shows here.
        let served = header(&ex.response_headers, "x-served-id").expect("x-served-id");
        assert_eq!(body["served_id"], served.as_str());
        assert_eq!(ex.response_version.as_deref(), Some("HTTP/2"));
        if ex.stream_id == Some(1) {
            assert_eq!(ex.http_version, "HTTP/1.1", "the upgrading request");
            assert!(ex.upgraded);
            assert_eq!(
                header(&ex.request_headers, "upgrade").as_deref(),
                Some("h2c")
            );
        } else {
            assert_eq!(ex.http_version, "HTTP/2");
            assert_eq!(
                header(&ex.request_headers, ":method").as_deref(),
                Some("GET"),
                "pseudo-headers kept"
            );
        }
    }
    let nghttp: Vec<_> = rows
        .iter()
        .filter(|r| r.target.starts_with("/item/"))
        .collect();
    assert_eq!(nghttp.len(), 120);
}

#[test]
fn continuation_and_padded_frames_are_joined_and_unpadded() {
    let rows = capture(&fixture("nghttp.pcap"));
    let mut flows: Vec<u64> = rows.iter().map(|r| r.flow_id).collect();
    flows.sort_unstable();
    flows.dedup();
    let in_flow = |rank: usize| -> Vec<&Exchange> {
        let mut v: Vec<_> = rows.iter().filter(|r| r.flow_id == flows[rank]).collect();
        v.sort_by_key(|r| r.stream_id);
        v
    };
    // nghttp's third connection sent a 30 KB header: more than one 16 KiB
    // frame, so HEADERS and CONTINUATION.
    let big = in_flow(2);
    assert_eq!(big.len(), 1);
    assert_eq!(
        header(&big[0].request_headers, "x-big").map(|v| v.len()),
        Some(30_000)
    );
    // The fourth ran with --padding 17: every frame padded. Its answers are
    // the same bytes as the first connection's, unpadded.
    let padded = in_flow(3);
    let plain = in_flow(0);
    assert_eq!(padded.len(), 2);
    for p in padded {
        let twin = plain
            .iter()
            .find(|r| r.target == p.target)
            .expect("the same file fetched unpadded");
        assert!(!p.response_body.is_empty());
        assert_eq!(p.response_body, twin.response_body, "{}", p.target);
        assert_eq!(p.status, Some(200));
    }
}

/// Capture with packets removed never gives a row data that the whole
/// capture does not have: fields it could not decode are absent and the
/// row says why, never replaced by another stream's.
fn never_wrong(partial: &str, whole: &str) -> HashMap<Option<IncompleteReason>, usize> {
    let full = capture(&fixture(whole));
    let by_stream: HashMap<_, &Exchange> =
        full.iter().map(|r| ((r.client, r.stream_id), r)).collect();
    let mut reasons = HashMap::new();
    for ex in capture(&fixture(partial)) {
        *reasons.entry(ex.incomplete).or_insert(0) += 1;
        let f = by_stream
            .get(&(ex.client, ex.stream_id))
            .unwrap_or_else(|| panic!("{partial}: a stream the whole capture lacks: {ex:?}"));
        let subset = |part: &shadowctl::schema::HeaderList, all: &shadowctl::schema::HeaderList| {
            part.iter()
                .all(|(n, v)| all.iter().any(|(n2, v2)| n == n2 && v == v2))
        };
        assert!(
            subset(&ex.request_headers, &f.request_headers),
            "{ex:?}\nvs {f:?}"
        );
        assert!(
            subset(&ex.response_headers, &f.response_headers),
            "{ex:?}\nvs {f:?}"
        );
        assert!(
            subset(&ex.response_trailers, &f.response_trailers),
            "{ex:?}\nvs {f:?}"
        );
        if !ex.method.is_empty() {
            assert_eq!(ex.method, f.method);
        }
        if !ex.target.is_empty() {
            assert_eq!(ex.target, f.target);
        }
        if ex.status.is_some() {
            assert_eq!(ex.status, f.status);
        }
        assert!(f.response_body.starts_with(&ex.response_body) || ex.incomplete.is_some());
        if ex.incomplete.is_none() {
            assert_eq!(ex.request_headers, f.request_headers);
            assert_eq!(ex.response_headers, f.response_headers);
            assert_eq!(ex.request_body, f.request_body);
            assert_eq!(ex.response_body, f.response_body);
        }
    }
    reasons
}

#[test]
fn a_capture_started_mid_connection_decodes_what_it_can_and_marks_the_rest() {
    let reasons = never_wrong("grpc-midway.pcap", "grpc.pcap");
    // grpcio indexes :path, content-type and the rest once per connection:
    // the cut-off connection's requests refer to entries never seen.
    assert!(
        reasons
            .get(&Some(IncompleteReason::HpackUnknown))
            .copied()
            .unwrap_or(0)
            >= 50,
        "{reasons:?}"
    );
    // The second connection began inside the capture: all of it is whole.
    assert!(
        reasons.get(&None).copied().unwrap_or(0) >= 70,
        "{reasons:?}"
    );
    let reasons = never_wrong("upgrade-midway.pcap", "upgrade.pcap");
    assert!(reasons.values().sum::<usize>() >= 100, "{reasons:?}");
}

/// Picked up inside a DATA frame on both sides: the first segments hold
/// no frame boundary, the later ones do (testdata/h2/make-midframe.py).
#[test]
fn a_connection_picked_up_mid_frame_on_both_sides_is_read_from_its_next_frame() {
    let rows = capture(&fixture("midframe-both.pcap"));
    let got: Vec<_> = rows
        .iter()
        .map(|e| {
            (
                e.stream_id,
                e.method.as_str(),
                e.target.as_str(),
                e.status,
                e.response_body.as_slice(),
                e.incomplete,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(Some(3), "POST", "/three", Some(200), &b"three"[..], None)]
    );
}

#[test]
fn lost_packets_mark_streams_and_forget_the_hpack_table_but_never_mix_streams() {
    let reasons = never_wrong("grpc-lossy.pcap", "grpc.pcap");
    assert!(
        reasons
            .get(&Some(IncompleteReason::HpackUnknown))
            .copied()
            .unwrap_or(0)
            >= 10,
        "{reasons:?}"
    );
    assert!(
        reasons.get(&None).copied().unwrap_or(0) >= 90,
        "{reasons:?}"
    );
}

mod common;

struct Child(std::process::Child, u16);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts connections on `port`.
fn wait_listening(port: u16) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A fixture server (`testdata/h2/SCRIPT PORT ARGS...`) on a free port,
/// once it accepts connections.
fn fixture_server(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> Child {
    let port = free_port();
    let child = Command::new(python)
        .arg(fixture(script))
        .arg(port.to_string())
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port);
    Child(child, port)
}

/// The hyper-h2 server of the fixtures: it echoes each request's fields.
fn echo_server(python: &Path) -> Child {
    fixture_server(python, "h2c_upgrade_server.py", &[])
}

fn replay(capture: &Path, args: &[&str]) -> Vec<shadowctl::schema::ReplayResult> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let st = Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .arg("replay")
        .arg(capture)
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    shadowctl::schema::read_results(&out).unwrap()
}

fn captured(pcap: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{pcap}.parquet"));
    let st = Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .args(["capture", "--read"])
        .arg(fixture(pcap))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success());
    out
}

#[test]
fn h2_replay_sends_the_captured_fields_with_authority_rewritten_and_the_marker_on_shadows() {
    let Some(python) = common::python_with(&["h2"]) else {
        return;
    };
    let (primary, shadow) = (echo_server(&python), echo_server(&python));
    let dir = tempfile::tempdir().unwrap();
    let capture = captured("upgrade.pcap", dir.path());
    let by_id: HashMap<u64, Exchange> = read_exchanges(&capture)
        .unwrap()
        .0
        .into_iter()
        .map(|e| (e.exchange_id, e))
        .collect();
    let rows = replay(
        &capture,
        &[
            "--primary",
            &format!("http://127.0.0.1:{}", primary.1),
            "--shadow",
            &format!("http://127.0.0.1:{}", shadow.1),
        ],
    );
    let live: Vec<_> = rows
        .iter()
        .filter(|r| r.target_name != "recorded")
        .collect();
    assert_eq!(live.len(), 244, "122 streams to two targets");
    for r in live {
        assert!(r.error_kind.is_none(), "{r:?}");
        assert_eq!(r.status, Some(200));
        assert_eq!(
            header(&r.response_headers, ":status").as_deref(),
            Some("200")
        );
        let body: serde_json::Value = serde_json::from_slice(&r.response_body).unwrap();
        let sent: Vec<(String, String)> = body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f[0].as_str().unwrap().into(), f[1].as_str().unwrap().into()))
            .collect();
        let ex = &by_id[&r.exchange_id];
        let port = if r.target_name == "shadow" {
            shadow.1
        } else {
            primary.1
        };
        let mut want = vec![
            (":method".to_string(), ex.method.clone()),
            (":scheme".into(), "http".into()),
            (":authority".into(), format!("127.0.0.1:{port}")),
            (":path".into(), ex.target.clone()),
        ];
        // The captured fields in order, lower case, without pseudo-headers
        // and what HTTP/2 forbids (the upgrading request's Upgrade,
        // Connection, HTTP2-Settings, and Host, which :authority carries).
        for (n, v) in ex.request_headers.iter() {
            let n = String::from_utf8_lossy(n).to_ascii_lowercase();
            if n.starts_with(':')
                || ["host", "upgrade", "connection", "http2-settings"].contains(&n.as_str())
            {
                continue;
            }
            want.push((n, String::from_utf8_lossy(v).into_owned()));
        }
        if r.target_name == "shadow" {
            want.push(("x-shadow-replay".into(), "1".into()));
        }
        let mut pseudo_first = sent.clone();
        pseudo_first.sort_by_key(|(n, _)| !n.starts_with(':'));
        let (sent_pseudo, sent_rest) = pseudo_first.split_at(4);
        let mut got_pseudo = sent_pseudo.to_vec();
        got_pseudo.sort();
        let mut want_pseudo = want[..4].to_vec();
        want_pseudo.sort();
        assert_eq!(got_pseudo, want_pseudo, "{}", r.target);
        assert_eq!(sent_rest, &want[4..], "{}", r.target);
    }
}

/// nghttpd serving a few files from a fresh directory, on 127.0.0.1: in
/// cleartext, or over TLS with `(key, cert)`; None when nghttpd is missing.
fn nghttpd(tls: Option<(&Path, &Path)>) -> Option<(Child, tempfile::TempDir)> {
    if Command::new("nghttpd").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("SHADOWCTL_REQUIRE_PYTHON").is_none(),
            "nghttpd missing (./bootstrap installs nghttp2-server)"
        );
        eprintln!("skipped: nghttpd missing");
        return None;
    }
    let www = tempfile::tempdir().unwrap();
    std::fs::write(
        www.path().join("a.json"),
        "{\"model\":\"resnet\",\"ok\":true}\n",
    )
    .unwrap();
    std::fs::write(www.path().join("index.html"), "hello\n").unwrap();
    std::fs::write(www.path().join("big.txt"), "x".repeat(27_000)).unwrap();
    let port = free_port();
    let mut cmd = Command::new("nghttpd");
    cmd.args(["--address", "127.0.0.1", "-d"])
        .arg(www.path())
        .arg(port.to_string());
    match tls {
        Some((key, cert)) => cmd.arg(key).arg(cert),
        None => cmd.arg("--no-tls"),
    };
    let server = Child(
        cmd.stdout(std::process::Stdio::null()).spawn().unwrap(),
        port,
    );
    wait_listening(server.1);
    Some((server, www))
}

/// Every live answer of a replay of nghttp.pcap has the recorded status.
fn assert_recorded_statuses(rows: &[shadowctl::schema::ReplayResult], case: &str) {
    let recorded: HashMap<u64, Option<u16>> = rows
        .iter()
        .filter(|r| r.target_name == "recorded")
        .map(|r| (r.exchange_id, r.status))
        .collect();
    let live: Vec<_> = rows.iter().filter(|r| r.target_name == "primary").collect();
    assert_eq!(live.len(), 108, "{case}");
    for r in live {
        assert!(r.error_kind.is_none(), "{case} {r:?}");
        assert_eq!(r.status, recorded[&r.exchange_id], "{case} {}", r.target);
    }
}

#[test]
fn nghttp2_capture_replays_to_nghttpd_with_the_recorded_statuses() {
    let Some((server, _www)) = nghttpd(None) else {
        return;
    };
    let port = server.1;
    let dir = tempfile::tempdir().unwrap();
    let capture = captured("nghttp.pcap", dir.path());
    for extra in [&[][..], &["--preserve-order"][..], &["--rate", "500"][..]] {
        let mut args = vec!["--primary".to_string(), format!("http://127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_recorded_statuses(&replay(&capture, &args), &format!("{extra:?}"));
    }
}

/// A fresh self-signed certificate for `localhost`: (key, cert) PEM files.
fn localhost_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (k, c) = (dir.join("key.pem"), dir.join("cert.pem"));
    std::fs::write(&k, key.signing_key.serialize_pem()).unwrap();
    std::fs::write(&c, key.cert.pem()).unwrap();
    (k, c)
}

#[test]
fn https_targets_get_http2_through_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = localhost_cert(dir.path());
    // nghttpd over TLS speaks only h2, and only to a client that asks for
    // it in ALPN: every answer coming back shows the negotiation worked.
    let Some((server, _www)) = nghttpd(Some((&key, &cert))) else {
        return;
    };
    let capture = captured("nghttp.pcap", dir.path());
    let url = format!("https://localhost:{}", server.1);
    let cert = cert.to_str().unwrap();
    let rows = replay(&capture, &["--primary", &url, "--ca-cert", cert]);
    assert_recorded_statuses(&rows, "https");
    // An HTTP/1 capture forced onto HTTP/2 over TLS, likewise.
    let demo = dir.path().join("demo.parquet");
    let st = Command::new(env!("CARGO_BIN_EXE_shadowctl"))
        .args(["capture", "-q", "--read"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo.pcap"))
        .arg("--out")
        .arg(&demo)
        .output()
        .unwrap();
    assert!(st.status.success());
    let rows = replay(
        &demo,
        &["--primary", &url, "--ca-cert", cert, "--http2", "--max"],
    );
    let live: Vec<_> = rows.iter().filter(|r| r.target_name == "primary").collect();
    assert!(!live.is_empty());
    for r in live {
        // nghttpd 1.52 sends its 404 page's DATA after HEADERS even to a
        // HEAD request, which `h2` (like nghttp itself) refuses as a
        // protocol error: recorded as malformed, never as an answer.
        if r.method == "HEAD" && r.error_kind.is_some() {
            assert_eq!(
                r.error_kind,
                Some(shadowctl::schema::ErrorKind::MalformedResponse),
                "{r:?}"
            );
            continue;
        }
        assert!(r.error_kind.is_none(), "{r:?}");
        // nghttpd has none of the demo's paths: a 404 or 405 from it,
        // spoken over h2, is the answer.
        assert!(matches!(r.status, Some(404 | 405)), "{r:?}");
        assert!(r.response_headers.get(":status").is_some(), "{r:?}");
    }
}

/// An https server that offers only `http/1.1` in ALPN: replay over HTTP/2
/// records a TLS error that says what to do, for every request.
#[test]
fn an_https_target_without_h2_is_a_tls_error_that_names_http1() {
    use std::io::{Read, Write};
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, key.cert.pem()).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(1000) {
            let (Ok(mut conn), Ok(mut tls)) = (conn, rustls::ServerConnection::new(config.clone()))
            else {
                continue;
            };
            std::thread::spawn(move || {
                while tls.is_handshaking() {
                    if tls.complete_io(&mut conn).is_err() {
                        return;
                    }
                }
                // Whatever comes (an h2 preface should not), answer once.
                let mut s = rustls::Stream::new(&mut tls, &mut conn);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            });
        }
    });
    let capture = captured("nghttp.pcap", dir.path());
    let url = format!("https://localhost:{port}");
    let rows = replay(
        &capture,
        &["--primary", &url, "--ca-cert", cert.to_str().unwrap()],
    );
    let live: Vec<_> = rows.iter().filter(|r| r.target_name == "primary").collect();
    assert_eq!(live.len(), 108);
    for r in live {
        assert_eq!(
            r.error_kind,
            Some(shadowctl::schema::ErrorKind::Tls),
            "{r:?}"
        );
        let detail = r.error_detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains("did not agree to HTTP/2") && detail.contains("--http1"),
            "{detail}"
        );
        assert_eq!(r.status, None);
    }
}

/// A hyper-h2 server that refuses, resets and GOAWAYs streams as real
/// servers do (testdata/h2/reset_server.py, which logs what it did to each
/// request): replay records each as its own error kind, opens a new
/// connection after a GOAWAY, and every other request is answered.
#[test]
fn streams_refused_reset_or_cut_by_goaway_are_recorded_as_such() {
    let Some(python) = common::python_with(&["h2"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = fixture_server(&python, "reset_server.py", &[log.as_os_str()]);
    let port = server.1;
    let capture = captured("nghttp.pcap", dir.path());
    // One request at a time, so the server's numbering is the sending order.
    let rows = replay(
        &capture,
        &[
            "--primary",
            &format!("http://127.0.0.1:{port}"),
            "--http2",
            "--max",
            "--concurrency",
            "1",
        ],
    );
    let live: Vec<_> = rows.iter().filter(|r| r.target_name == "primary").collect();
    assert_eq!(live.len(), 108);
    let mut ours: HashMap<String, usize> = HashMap::new();
    for r in &live {
        let kind = r.error_kind.map_or("ok", |k| k.as_str()).to_string();
        let detail = r.error_detail.as_deref().unwrap_or_default();
        match kind.as_str() {
            "ok" => assert_eq!(r.status, Some(200), "{r:?}"),
            "refused_stream" => assert!(detail.contains("REFUSED_STREAM"), "{detail}"),
            "stream_reset" => assert!(detail.contains("INTERNAL_ERROR"), "{detail}"),
            "goaway" => assert!(detail.contains("GOAWAY NO_ERROR"), "{detail}"),
            other => panic!("unexpected error kind {other}: {r:?}"),
        }
        *ours.entry(kind).or_default() += 1;
    }
    let mut theirs: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let outcome = line.split_whitespace().nth(1).unwrap().to_string();
        *theirs.entry(outcome).or_default() += 1;
    }
    assert_eq!(
        ours, theirs,
        "what replay recorded against what the server did"
    );
    // 108 requests: 11 refused (3, 13, .. 103), 11 reset (6, .. 106), 10
    // cut by GOAWAY (9, .. 99), each on a new connection after the last.
    assert_eq!(theirs["refused_stream"], 11);
    assert_eq!(theirs["stream_reset"], 11);
    assert_eq!(theirs["goaway"], 10);
    assert_eq!(theirs["ok"], 108 - 32);
}

/// A server that ends each connection gracefully after 5 requests (the
/// last answered in full, then GOAWAY NO_ERROR naming it), as nginx does
/// after `keepalive_requests`: every request is answered, each after a
/// GOAWAY over a new connection, none recorded as an error.
#[test]
fn a_graceful_goaway_after_the_last_answer_costs_no_request() {
    let Some(python) = common::python_with(&["h2"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let per_connection = std::ffi::OsStr::new("5");
    let server = fixture_server(
        &python,
        "graceful_goaway_server.py",
        &[log.as_os_str(), per_connection],
    );
    let port = server.1;
    let capture = captured("nghttp.pcap", dir.path());
    let rows = replay(
        &capture,
        &[
            "--primary",
            &format!("http://127.0.0.1:{port}"),
            "--http2",
            "--max",
            "--concurrency",
            "1",
        ],
    );
    let live: Vec<_> = rows.iter().filter(|r| r.target_name == "primary").collect();
    assert_eq!(live.len(), 108);
    for r in &live {
        assert_eq!(r.error_kind, None, "{:?}", r.error_detail);
        assert_eq!(r.status, Some(200));
    }
    let answered = std::fs::read_to_string(&log).unwrap();
    let connections: std::collections::HashSet<&str> = answered
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(answered.lines().count(), 108);
    assert_eq!(connections.len(), 108usize.div_ceil(5));
}

/// An HTTP/2 request captured with trailers is replayed with them: the
/// body in DATA, then the trailers, as hyper-h2 receives them; redacted
/// ones and framing fields stay unsent.
#[test]
fn h2_replay_sends_the_request_trailers_after_the_body() {
    let Some(python) = common::python_with(&["h2"]) else {
        return;
    };
    let server = echo_server(&python);
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("trailers.parquet");
    let rows: Vec<Exchange> = (0..2u64)
        .map(|i| {
            let mut ex = Exchange {
                exchange_id: i,
                flow_id: 1,
                seq_in_flow: i as u32,
                stream_id: Some(1 + 2 * i as u32),
                method: "POST".into(),
                target: format!("/pkg.Svc/Call{i}"),
                http_version: "HTTP/2".into(),
                host: Some("prod.example".into()),
                request_ts: 1_700_000_000_000_000_000,
                request_end_ts: 1_700_000_000_000_000_000,
                status: Some(200),
                // The second has no body: HEADERS, then the trailers alone.
                request_body: if i == 0 { b"abc".to_vec() } else { Vec::new() },
                ..Default::default()
            };
            ex.request_headers
                .push(b"content-type", b"application/grpc");
            ex.request_headers.push(b"te", b"trailers");
            ex.request_trailers
                .push(b"x-checksum", format!("sum{i}").as_bytes());
            ex.request_trailers.push(b"x-token", b"[REDACTED]");
            ex.request_trailers.push(b"content-length", b"3");
            ex
        })
        .collect();
    let mut w = shadowctl::schema::ExchangeFileWriter::create(
        &capture,
        shadowctl::schema::WriterConfig::default(),
    )
    .unwrap();
    w.write(&rows).unwrap();
    w.finish(vec![]).unwrap();
    let results = replay(
        &capture,
        &["--primary", &format!("http://127.0.0.1:{}", server.1)],
    );
    let live: Vec<_> = results
        .iter()
        .filter(|r| r.target_name == "primary")
        .collect();
    assert_eq!(live.len(), 2);
    for r in live {
        assert!(r.error_kind.is_none(), "{r:?}");
        let body: serde_json::Value = serde_json::from_slice(&r.response_body).unwrap();
        let i = r.exchange_id;
        let want_body = if i == 0 {
            serde_json::json!("abc")
        } else {
            serde_json::Value::Null
        };
        assert_eq!(body["body"], want_body, "{body}");
        assert_eq!(
            body["trailers"],
            serde_json::json!([["x-checksum", format!("sum{i}")]]),
            "{body}"
        );
    }
}
