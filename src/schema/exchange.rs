//! The capture schema: one row per HTTP exchange (a request and its response).

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, ListArray, RecordBatch, StringBuilder, StructArray,
    TimestampNanosecondBuilder, UInt16Array, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use super::HeaderList;

/// Why an exchange is flagged incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IncompleteReason {
    /// Bytes of the request were never captured (a TCP gap).
    RequestGap,
    /// Bytes of the response were never captured (a TCP gap).
    ResponseGap,
    /// The request could not be parsed past some point.
    RequestMalformed,
    /// The response could not be parsed past some point.
    ResponseMalformed,
    /// The capture ended (or the connection was evicted) mid-request.
    RequestCut,
    /// The capture ended (or the connection was evicted) mid-response.
    ResponseCut,
    /// Packets were lost and the evidence (TCP acknowledgements, message
    /// order) does not prove which request this response answers, or
    /// whether this request's response is the one lost.
    PairingUncertain,
    /// HTTP/2: a header block refers to HPACK table entries the capture
    /// never saw (it began mid-connection, or lost a block); the fields that
    /// could be decoded are kept.
    HpackUnknown,
    /// HTTP/2: the stream was reset (`RST_STREAM`; the code is in
    /// `malformed_detail`).
    StreamReset,
    /// HTTP/2: a `GOAWAY` said the stream was not (or not fully) processed.
    GoAway,
}

impl IncompleteReason {
    pub fn parse(s: &str) -> Option<Self> {
        use IncompleteReason::*;
        [
            RequestGap,
            ResponseGap,
            RequestMalformed,
            ResponseMalformed,
            RequestCut,
            ResponseCut,
            PairingUncertain,
            HpackUnknown,
            StreamReset,
            GoAway,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestGap => "request_gap",
            Self::ResponseGap => "response_gap",
            Self::RequestMalformed => "request_malformed",
            Self::ResponseMalformed => "response_malformed",
            Self::RequestCut => "request_cut",
            Self::ResponseCut => "response_cut",
            Self::PairingUncertain => "pairing_uncertain",
            Self::HpackUnknown => "hpack_unknown",
            Self::StreamReset => "stream_reset",
            Self::GoAway => "goaway",
        }
    }
}

/// One request with its response, as captured.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    pub exchange_id: u64,
    pub flow_id: u64,
    /// 0-based position of the request within its TCP connection.
    pub seq_in_flow: u32,
    /// HTTP/2 stream identifier; None for HTTP/1.
    pub stream_id: Option<u32>,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    /// Capture time of the first and last byte of the request (ns since epoch).
    pub request_ts: i64,
    pub request_end_ts: i64,
    /// Capture time of the first and last byte of the final response.
    pub response_ts: Option<i64>,
    pub response_end_ts: Option<i64>,
    pub method: String,
    pub target: String,
    pub http_version: String,
    pub host: Option<String>,
    pub request_headers: HeaderList,
    pub request_trailers: HeaderList,
    pub request_body: Vec<u8>,
    /// De-chunked length of the whole request body, stored or not.
    pub request_body_len: u64,
    pub request_body_truncated: bool,
    /// Final status; `None` when no response was seen.
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub response_version: Option<String>,
    /// Interim 1xx statuses (other than 101) that came before the final one.
    pub interim_statuses: Vec<u16>,
    pub response_headers: HeaderList,
    pub response_trailers: HeaderList,
    pub response_body: Vec<u8>,
    pub response_body_len: u64,
    pub response_body_truncated: bool,
    pub incomplete: Option<IncompleteReason>,
    /// With `request_malformed` / `response_malformed`: what was wrong.
    pub malformed_detail: Option<String>,
    /// The connection switched protocols (101) or became a CONNECT tunnel.
    pub upgraded: bool,
    /// Event streams (SSE, NDJSON): when each event of the stored body
    /// arrived, in ns after `response_ts`. None for other bodies.
    pub response_event_offsets_ns: Option<Vec<i64>>,
    /// Capture's bookkeeping, not a column: (stored response body length,
    /// packet time) as the body arrived, turned into event offsets when the
    /// response ends.
    pub response_arrivals: Vec<(u64, i64)>,
    /// Capture's bookkeeping, not a column: bytes of `response_arrivals`
    /// charged to `--max-buffer-bytes`, given back when the exchange leaves
    /// the connection (the times become event offsets in between, of about
    /// the same size).
    pub arrivals_charged: usize,
    /// Capture's bookkeeping, not a column: the request's and the
    /// response's body were cut (memory cap, `--max-body`), so nothing more
    /// is stored for them.
    pub bodies_cut: [bool; 2],
}

impl Exchange {
    /// What the exchange holds in memory, near enough to bound the queues
    /// and buffers that hold many: bodies, header lists, the target.
    pub fn held_bytes(&self) -> usize {
        self.request_body.len()
            + self.response_body.len()
            + self.request_headers.byte_len()
            + self.response_headers.byte_len()
            + self.target.len()
            + std::mem::size_of::<Exchange>()
    }
}

pub(super) fn header_list_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        false,
    )))
}

pub(super) fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ])
}

pub(super) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The Arrow schema of a capture file. Order and names are public.
pub fn exchange_schema() -> SchemaRef {
    use DataType::*;
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    Arc::new(Schema::new(vec![
        f("exchange_id", UInt64, false),
        f("flow_id", UInt64, false),
        f("seq_in_flow", UInt32, false),
        f("request_ts", ts_type(), false),
        f("request_end_ts", ts_type(), false),
        f("response_ts", ts_type(), true),
        f("response_end_ts", ts_type(), true),
        f("client", Utf8, true),
        f("server", Utf8, true),
        f("method", Utf8, false),
        f("target", Utf8, false),
        f("endpoint", Utf8, false),
        f("host", Utf8, true),
        f("http_version", Utf8, false),
        f("request_headers", header_list_type(), false),
        f("request_trailers", header_list_type(), false),
        f("request_body", Binary, false),
        f("request_body_len", UInt64, false),
        f("request_body_truncated", Boolean, false),
        f("status", UInt16, true),
        f("reason", Utf8, true),
        f("response_version", Utf8, true),
        f(
            "interim_statuses",
            List(Arc::new(Field::new("item", UInt16, false))),
            false,
        ),
        f("response_headers", header_list_type(), false),
        f("response_trailers", header_list_type(), false),
        f("response_body", Binary, true),
        f("response_body_len", UInt64, true),
        f("response_body_truncated", Boolean, false),
        f("incomplete", Boolean, false),
        f("incomplete_reason", Utf8, true),
        f("missing_response", Boolean, false),
        f("upgraded", Boolean, false),
        f("malformed_detail", Utf8, true),
        f("response_event_offsets_ns", offsets_type(), true),
        f("stream_id", UInt32, true),
    ]))
}

/// `list<int64>`: event offsets in ns.
pub(super) fn offsets_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int64, false)))
}

/// A nullable `list<int64>` column, one optional list per row.
pub(super) fn offsets_column<'a>(lists: impl Iterator<Item = Option<&'a [i64]>>) -> ArrayRef {
    let mut offsets = vec![0i32];
    let mut values = Vec::new();
    let mut valid = Vec::new();
    for l in lists {
        valid.push(l.is_some());
        values.extend_from_slice(l.unwrap_or_default());
        offsets.push(values.len() as i32);
    }
    let field = Arc::new(Field::new("item", DataType::Int64, false));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        Arc::new(arrow::array::Int64Array::from(values)),
        Some(NullBuffer::from(valid)),
    ))
}

/// Row `i` of a column made by [`offsets_column`] (None when absent: files
/// written before the column existed).
pub(super) fn offsets_at(list: Option<&ListArray>, i: usize) -> Option<Vec<i64>> {
    use arrow::array::{Array, AsArray};
    let list = list?;
    if list.is_null(i) {
        return None;
    }
    let (start, end) = (
        list.value_offsets()[i] as usize,
        list.value_offsets()[i + 1] as usize,
    );
    let values = list.values().as_primitive::<arrow::datatypes::Int64Type>();
    Some(values.values()[start..end].to_vec())
}

/// Build a list<struct<name, value>> column from one header list per row.
pub(super) fn header_column<'a>(
    lists: impl Iterator<Item = &'a HeaderList>,
    rows: usize,
) -> ArrayRef {
    // Sized once: growing the builders field by field showed in the
    // replay writer's profile.
    let lists: Vec<&HeaderList> = lists.collect();
    let (fields, bytes) = lists
        .iter()
        .fold((0, 0), |(f, b), l| (f + l.len(), b + l.byte_len()));
    let mut names = StringBuilder::with_capacity(fields, bytes);
    let mut values = StringBuilder::with_capacity(fields, bytes);
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0i32);
    let mut n = 0i32;
    for list in lists {
        for (name, value) in list.iter_text() {
            names.append_value(name);
            values.append_value(value);
            n += 1;
        }
        offsets.push(n);
    }
    pairs_list(names, values, offsets)
}

/// A list<struct<name, value>> column from its names, values and row
/// offsets (header lists, metric labels).
pub(super) fn pairs_list(
    mut names: StringBuilder,
    mut values: StringBuilder,
    offsets: Vec<i32>,
) -> ArrayRef {
    let entries = StructArray::new(
        header_fields(),
        vec![Arc::new(names.finish()), Arc::new(values.finish())],
        None,
    );
    let field = Arc::new(Field::new("item", DataType::Struct(header_fields()), false));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        Arc::new(entries),
        None,
    ))
}

fn interim_column(rows: &[Exchange]) -> ArrayRef {
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    let mut values = Vec::new();
    for ex in rows {
        values.extend_from_slice(&ex.interim_statuses);
        offsets.push(values.len() as i32);
    }
    let field = Arc::new(Field::new("item", DataType::UInt16, false));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        Arc::new(UInt16Array::from(values)),
        None::<NullBuffer>,
    ))
}

/// Addresses as text, each formatted once for a run of equal ones: rows
/// come a connection at a time and mostly to one server, and formatting
/// every row's two addresses was 2% of the capture's writer thread.
fn addr_column(addrs: impl Iterator<Item = Option<SocketAddr>>, n: usize) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(n, n * 20);
    let mut last: Option<(SocketAddr, String)> = None;
    for a in addrs {
        let Some(a) = a else {
            b.append_null();
            continue;
        };
        let text = match &last {
            Some((prev, text)) if *prev == a => text,
            _ => &last.insert((a, a.to_string())).1,
        };
        b.append_value(text);
    }
    Arc::new(b.finish())
}

/// Convert exchanges into one record batch of [`exchange_schema`].
pub fn exchanges_to_batch(rows: &[Exchange]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = rows.len();
    let u64col = |f: &dyn Fn(&Exchange) -> u64| {
        let mut b = UInt64Builder::with_capacity(n);
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let ts = |f: &dyn Fn(&Exchange) -> Option<i64>| {
        let mut b = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    // Made text (addresses, endpoints): one String per row.
    let text = |f: &dyn Fn(&Exchange) -> Option<String>| {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    // Text the rows hold: borrowed, and the builder sized once (copies and
    // growth showed in the capture writer's profile).
    let text_ref = |f: &dyn Fn(&Exchange) -> Option<&str>| {
        let bytes = rows.iter().map(|r| f(r).map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let flag = |f: &dyn Fn(&Exchange) -> bool| {
        let mut b = BooleanBuilder::with_capacity(n);
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let body = |f: &dyn Fn(&Exchange) -> Option<&[u8]>| {
        let bytes: usize = rows.iter().filter_map(f).map(<[u8]>::len).sum();
        let mut b = BinaryBuilder::with_capacity(n, bytes);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let mut seq = UInt32Builder::with_capacity(n);
    rows.iter().for_each(|r| seq.append_value(r.seq_in_flow));
    let mut status = UInt16Builder::with_capacity(n);
    rows.iter().for_each(|r| status.append_option(r.status));
    let mut stream_ids = UInt32Builder::with_capacity(n);
    rows.iter()
        .for_each(|r| stream_ids.append_option(r.stream_id));
    let answered = |r: &Exchange| r.status.is_some();
    let mut resp_len = UInt64Builder::with_capacity(n);
    rows.iter()
        .for_each(|r| resp_len.append_option(answered(r).then_some(r.response_body_len)));

    let columns: Vec<ArrayRef> = vec![
        u64col(&|r| r.exchange_id),
        u64col(&|r| r.flow_id),
        Arc::new(seq.finish()),
        ts(&|r| Some(r.request_ts)),
        ts(&|r| Some(r.request_end_ts)),
        ts(&|r| r.response_ts),
        ts(&|r| r.response_end_ts),
        addr_column(rows.iter().map(|r| r.client), n),
        addr_column(rows.iter().map(|r| r.server), n),
        text_ref(&|r| Some(&r.method)),
        text_ref(&|r| Some(&r.target)),
        // Derived, for queries over capture files (group by endpoint);
        // never read back: replay and diff compute it again.
        text(&|r| {
            let ct = r.request_headers.get("content-type");
            Some(crate::endpoint::endpoint_of(&r.method, &r.target, ct))
        }),
        text_ref(&|r| r.host.as_deref()),
        text_ref(&|r| Some(&r.http_version)),
        header_column(rows.iter().map(|r| &r.request_headers), n),
        header_column(rows.iter().map(|r| &r.request_trailers), n),
        body(&|r| Some(&r.request_body)),
        u64col(&|r| r.request_body_len),
        flag(&|r| r.request_body_truncated),
        Arc::new(status.finish()),
        text_ref(&|r| r.reason.as_deref()),
        text_ref(&|r| r.response_version.as_deref()),
        interim_column(rows),
        header_column(rows.iter().map(|r| &r.response_headers), n),
        header_column(rows.iter().map(|r| &r.response_trailers), n),
        body(&|r| answered(r).then_some(r.response_body.as_slice())),
        Arc::new(resp_len.finish()),
        flag(&|r| r.response_body_truncated),
        flag(&|r| r.incomplete.is_some()),
        text_ref(&|r| r.incomplete.map(|i| i.as_str())),
        flag(&|r| r.status.is_none()),
        flag(&|r| r.upgraded),
        text_ref(&|r| r.malformed_detail.as_deref()),
        offsets_column(rows.iter().map(|r| r.response_event_offsets_ns.as_deref())),
        Arc::new(stream_ids.finish()),
    ];
    RecordBatch::try_new(exchange_schema(), columns)
}
