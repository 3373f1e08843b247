//! A decoded batch of a results file, read in place.
//!
//! `diff` compares most exchanges straight from these columns and builds an
//! owned [`ReplayResult`] only for the rows that need the full comparison:
//! copying every row out of Arrow (about ten allocations a row) was most of
//! its time.

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, ListArray, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt16Array, UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{TimestampNanosecondType, UInt16Type, UInt32Type, UInt64Type};

use super::exchange::offsets_at;
use super::results::{results_schema, ErrorKind, ReplayResult, TargetRole};
use super::HeaderList;

/// One `list<struct<name, value>>` column, by its offsets.
struct HeaderColumn {
    offsets: OffsetBuffer<i32>,
    names: StringArray,
    values: StringArray,
}

impl HeaderColumn {
    fn of(b: &RecordBatch, name: &str) -> Self {
        match b.column_by_name(name) {
            Some(col) => {
                let list = col.as_list::<i32>();
                let st = list.values().as_struct();
                Self {
                    offsets: list.offsets().clone(),
                    names: st.column(0).as_string::<i32>().clone(),
                    values: st.column(1).as_string::<i32>().clone(),
                }
            }
            // Left out on purpose, or absent from older files: every row
            // gets an empty list.
            None => Self {
                offsets: OffsetBuffer::new_zeroed(b.num_rows()),
                names: StringArray::from(Vec::<&str>::new()),
                values: StringArray::from(Vec::<&str>::new()),
            },
        }
    }

    fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }

    fn list(&self, i: usize) -> HeaderList {
        let mut h = HeaderList::new();
        for j in self.range(i) {
            h.push(
                &crate::text::latin1_bytes(self.names.value(j)),
                &crate::text::latin1_bytes(self.values.value(j)),
            );
        }
        h
    }

    /// The same fields in the same order, text for text. Equal text is
    /// equal bytes; the converse need not hold for text no writer of ours
    /// makes, so `false` only means "not known equal".
    fn same(&self, i: usize, other: &Self, j: usize) -> bool {
        let (a, b) = (self.range(i), other.range(j));
        a.len() == b.len()
            && same_run(&self.names, a.clone(), &other.names, b.clone())
            && same_run(&self.values, a, &other.values, b)
    }

    /// First value of field `name` (ASCII case-insensitive).
    fn get(&self, i: usize, name: &str) -> Option<&str> {
        self.range(i)
            .find(|&x| self.names.value(x).eq_ignore_ascii_case(name))
            .map(|x| self.values.value(x))
    }
}

/// Whether entries `a` of `x` and `b` of `y` (runs of equal length) hold the
/// same strings. A run's strings lie end to end in the values buffer, so
/// two comparisons of bytes and one of lengths replace one call a field
/// (comparing field by field was the comparing thread's largest item).
fn same_run(
    x: &StringArray,
    a: std::ops::Range<usize>,
    y: &StringArray,
    b: std::ops::Range<usize>,
) -> bool {
    if a.is_empty() {
        return true;
    }
    let (xo, yo) = (x.value_offsets(), y.value_offsets());
    fn bytes<'a>(arr: &'a StringArray, r: &std::ops::Range<usize>) -> &'a [u8] {
        let o = arr.value_offsets();
        &arr.value_data()[o[r.start] as usize..o[r.end] as usize]
    }
    fn lengths(o: &[i32], r: std::ops::Range<usize>) -> impl Iterator<Item = i32> + '_ {
        let base = o[r.start];
        o[r].iter().map(move |&v| v - base)
    }
    bytes(x, &a) == bytes(y, &b)
        && lengths(xo, a.start..a.end + 1).eq(lengths(yo, b.start..b.end + 1))
}

/// The columns of one results batch, typed once.
pub struct ResultColumns {
    batch: RecordBatch,
    skipped: &'static [&'static str],
    names: StringArray,
    roles: StringArray,
    methods: StringArray,
    targets: StringArray,
    endpoints: StringArray,
    errors: StringArray,
    details: StringArray,
    due: TimestampNanosecondArray,
    sent: TimestampNanosecondArray,
    first: TimestampNanosecondArray,
    done: TimestampNanosecondArray,
    status: UInt16Array,
    seq: UInt32Array,
    ids: UInt64Array,
    flows: UInt64Array,
    lens: UInt64Array,
    req_body: BinaryArray,
    resp_body: BinaryArray,
    trunc: BooleanArray,
    req_h: HeaderColumn,
    resp_h: HeaderColumn,
    resp_t: HeaderColumn,
    first_token: Option<TimestampNanosecondArray>,
    event_offsets: Option<ListArray>,
}

/// Columns a results batch may lack: left out on purpose (`skipped`), or
/// added to the schema after files were written.
fn may_lack(name: &str, skipped: &[&str]) -> bool {
    skipped.contains(&name)
        || name.ends_with("_ns")
        || name == "first_token_ts"
        || name == "response_trailers"
}

/// A primitive column; one left out on purpose (checked by the caller:
/// only those may be missing) reads as nulls, whose values are zeros.
fn or_nulls<T: arrow::datatypes::ArrowPrimitiveType>(
    b: &RecordBatch,
    name: &str,
) -> arrow::array::PrimitiveArray<T> {
    b.column_by_name(name).map_or_else(
        || arrow::array::PrimitiveArray::new_null(b.num_rows()),
        |c| c.as_primitive::<T>().clone(),
    )
}

fn opt_ts(a: &TimestampNanosecondArray, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

impl ResultColumns {
    pub fn new(b: &RecordBatch, skipped: &'static [&'static str]) -> Result<Self, String> {
        if let Some(missing) = results_schema()
            .fields()
            .iter()
            .find(|f| b.column_by_name(f.name()).is_none() && !may_lack(f.name(), skipped))
        {
            return Err(format!("column {} is missing", missing.name()));
        }
        let c = |n: &str| b.column_by_name(n).expect("results column");
        let s = |n: &str| c(n).as_string::<i32>().clone();
        let ts = |n: &str| or_nulls::<TimestampNanosecondType>(b, n);
        let u64c = |n: &str| or_nulls::<UInt64Type>(b, n);
        Ok(Self {
            batch: b.clone(),
            skipped,
            names: s("target_name"),
            roles: s("role"),
            methods: s("method"),
            targets: s("target"),
            endpoints: s("endpoint"),
            errors: s("error_kind"),
            details: s("error_detail"),
            due: ts("due_ts"),
            sent: ts("sent_ts"),
            first: ts("first_byte_ts"),
            done: ts("done_ts"),
            status: c("status").as_primitive::<UInt16Type>().clone(),
            seq: or_nulls::<UInt32Type>(b, "seq_in_flow"),
            ids: u64c("exchange_id"),
            flows: u64c("flow_id"),
            lens: u64c("response_body_len"),
            req_body: c("request_body").as_binary::<i32>().clone(),
            resp_body: c("response_body").as_binary::<i32>().clone(),
            trunc: c("response_body_truncated").as_boolean().clone(),
            req_h: HeaderColumn::of(b, "request_headers"),
            resp_h: HeaderColumn::of(b, "response_headers"),
            resp_t: HeaderColumn::of(b, "response_trailers"),
            first_token: b
                .column_by_name("first_token_ts")
                .map(|c| c.as_primitive::<TimestampNanosecondType>().clone()),
            event_offsets: b
                .column_by_name("event_offsets_ns")
                .map(|c| c.as_list::<i32>().clone()),
        })
    }

    /// Rows `rows` alone, copied in one go (row `rows[k]` becomes row
    /// `k`): holding them no longer holds the whole batch.
    pub fn detach(&self, rows: &[usize]) -> Result<Self, String> {
        let indices: arrow::array::UInt32Array = rows.iter().map(|&i| i as u32).collect();
        let some =
            arrow::compute::take_record_batch(&self.batch, &indices).map_err(|e| e.to_string())?;
        Self::new(&some, self.skipped)
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` as an owned result.
    pub fn row(&self, i: usize) -> ReplayResult {
        ReplayResult {
            exchange_id: self.ids.value(i),
            flow_id: self.flows.value(i),
            seq_in_flow: self.seq.value(i),
            target_name: self.names.value(i).to_string(),
            role: self.role(i),
            method: self.methods.value(i).to_string(),
            target: self.targets.value(i).to_string(),
            endpoint: self.endpoints.value(i).to_string(),
            request_headers: self.req_h.list(i),
            request_body: self.req_body.value(i).to_vec(),
            due_ts: self.due.value(i),
            sent_ts: opt_ts(&self.sent, i),
            first_byte_ts: opt_ts(&self.first, i),
            done_ts: opt_ts(&self.done, i),
            status: self.status(i),
            response_headers: self.resp_h.list(i),
            response_trailers: self.resp_t.list(i),
            response_body: self.resp_body.value(i).to_vec(),
            response_body_len: self.lens.value(i),
            response_body_truncated: self.trunc.value(i),
            error_kind: self.error_kind(i),
            error_detail: self
                .details
                .is_valid(i)
                .then(|| self.details.value(i).to_string()),
            first_token_ts: self.first_token.as_ref().and_then(|a| opt_ts(a, i)),
            event_offsets_ns: offsets_at(self.event_offsets.as_ref(), i),
        }
    }

    /// When the row's answer ended, or (no answer) when it was due: rows
    /// are written in about this order.
    pub fn done_or_due(&self, i: usize) -> i64 {
        opt_ts(&self.done, i).unwrap_or_else(|| self.due.value(i))
    }

    pub fn due_ts(&self, i: usize) -> i64 {
        self.due.value(i)
    }

    pub fn exchange_id(&self, i: usize) -> u64 {
        self.ids.value(i)
    }

    pub fn target_name(&self, i: usize) -> &str {
        self.names.value(i)
    }

    pub fn role(&self, i: usize) -> Option<TargetRole> {
        TargetRole::parse(self.roles.value(i))
    }

    pub fn method(&self, i: usize) -> &str {
        self.methods.value(i)
    }

    pub fn target(&self, i: usize) -> &str {
        self.targets.value(i)
    }

    pub fn endpoint(&self, i: usize) -> &str {
        self.endpoints.value(i)
    }

    pub fn status(&self, i: usize) -> Option<u16> {
        self.status.is_valid(i).then(|| self.status.value(i))
    }

    /// The error kind; an unknown name reads as none, as in [`Self::row`].
    pub fn error_kind(&self, i: usize) -> Option<ErrorKind> {
        self.errors
            .is_valid(i)
            .then(|| ErrorKind::parse(self.errors.value(i)))
            .flatten()
    }

    /// Whether the row names an error kind, known or not.
    pub fn has_error_text(&self, i: usize) -> bool {
        self.errors.is_valid(i)
    }

    pub fn request_body_len(&self, i: usize) -> usize {
        self.req_body.value_length(i) as usize
    }

    /// From the actual send to the last byte, as [`ReplayResult::latency_ns`].
    pub fn latency_ns(&self, i: usize) -> Option<i64> {
        Some(opt_ts(&self.done, i)? - opt_ts(&self.sent, i)?)
    }

    /// The first value of a response header or trailer (trailers first, as
    /// gRPC's status is read).
    pub fn trailer_or_header(&self, i: usize, name: &str) -> Option<&str> {
        self.resp_t
            .get(i, name)
            .or_else(|| self.resp_h.get(i, name))
    }

    /// Same status, response headers, trailers and body as row `j` of
    /// `other`, known byte for byte.
    pub fn same_answer(&self, i: usize, other: &Self, j: usize) -> bool {
        self.status(i) == other.status(j)
            && self.lens.value(i) == other.lens.value(j)
            && self.resp_body.value(i) == other.resp_body.value(j)
            && self.resp_h.same(i, &other.resp_h, j)
            && self.resp_t.same(i, &other.resp_t, j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::results_to_batch;

    fn sample(i: u64) -> ReplayResult {
        let mut h = HeaderList::new();
        h.push(b"Content-Type", b"application/json");
        h.push(b"x-note", "caf\u{e9}".as_bytes());
        let mut t = HeaderList::new();
        if i.is_multiple_of(2) {
            t.push(b"grpc-status", b"14");
        }
        ReplayResult {
            exchange_id: i,
            flow_id: i * 7,
            seq_in_flow: i as u32,
            target_name: format!("t{i}"),
            role: Some(TargetRole::Shadow),
            method: "POST".into(),
            target: "/x?q=1".into(),
            endpoint: "POST /x".into(),
            request_headers: h.clone(),
            request_body: vec![b'r'; i as usize],
            due_ts: 10,
            sent_ts: Some(11),
            first_byte_ts: (!i.is_multiple_of(3)).then_some(12),
            done_ts: Some(20 + i as i64),
            status: (i % 4 != 1).then_some(200),
            response_headers: h,
            response_trailers: t,
            response_body: format!("{{\"n\":{i}}}").into_bytes(),
            response_body_len: 7,
            response_body_truncated: i.is_multiple_of(5),
            error_kind: (i % 4 == 1).then_some(ErrorKind::Reset),
            error_detail: (i % 4 == 1).then(|| "reset by peer".into()),
            event_offsets_ns: (i % 3 == 2).then(|| vec![1, 2, 3]),
            first_token_ts: (i % 3 == 2).then_some(13),
        }
    }

    #[test]
    fn rows_read_back_as_written_and_accessors_agree() {
        let rows: Vec<ReplayResult> = (0..12).map(sample).collect();
        let batch = results_to_batch(&rows).unwrap();
        let cols = ResultColumns::new(&batch, &[]).unwrap();
        assert_eq!(cols.len(), rows.len());
        for (i, r) in rows.iter().enumerate() {
            let back = cols.row(i);
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
            assert_eq!(cols.latency_ns(i), r.latency_ns());
            assert_eq!(cols.error_kind(i), r.error_kind);
            assert_eq!(cols.request_body_len(i), r.request_body.len());
            assert_eq!(
                cols.trailer_or_header(i, "GRPC-STATUS").map(str::as_bytes),
                r.response_trailers.get("grpc-status")
            );
        }
        // Rows 0 and 4 have different bodies.
        assert!(!cols.same_answer(0, &cols, 4));
        assert!(cols.same_answer(3, &cols, 3));
        let mut twin = sample(3);
        twin.exchange_id = 99;
        twin.target_name = "other".into();
        let b2 = results_to_batch(&[twin.clone()]).unwrap();
        let c2 = ResultColumns::new(&b2, &[]).unwrap();
        assert!(cols.same_answer(3, &c2, 0));
        twin.response_headers.push(b"x-extra", b"1");
        let b3 = results_to_batch(&[twin]).unwrap();
        assert!(!cols.same_answer(3, &ResultColumns::new(&b3, &[]).unwrap(), 0));
        let some = cols.detach(&[5, 2]).unwrap();
        assert_eq!(some.len(), 2);
        assert_eq!(format!("{:?}", some.row(0)), format!("{:?}", rows[5]));
        assert_eq!(format!("{:?}", some.row(1)), format!("{:?}", rows[2]));
    }

    #[test]
    fn a_batch_from_before_trailers_were_written_reads_with_none() {
        let rows: Vec<ReplayResult> = (0..3).map(sample).collect();
        let batch = results_to_batch(&rows).unwrap();
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|&k| batch.schema().field(k).name() != "response_trailers")
            .collect();
        let old = batch.project(&keep).unwrap();
        let cols = ResultColumns::new(&old, &[]).unwrap();
        assert!(cols.row(0).response_trailers.is_empty());
        assert_eq!(cols.row(1).response_body, rows[1].response_body);
        let fewer = old.project(&[0, 1]).unwrap();
        let err = ResultColumns::new(&fewer, &[]).err().unwrap();
        assert!(err.contains("is missing"), "{err}");
    }

    fn with_headers(fields: &[(String, String)]) -> ReplayResult {
        let mut r = sample(1);
        r.response_headers = HeaderList::new();
        for (n, v) in fields {
            r.response_headers.push(n.as_bytes(), v.as_bytes());
        }
        r
    }

    proptest::proptest! {
        /// Runs compared at once agree with comparing field by field, also
        /// when the boundaries between fields move ("ab","c" / "a","bc").
        #[test]
        fn header_runs_compare_like_fields(
            a in proptest::collection::vec(("[ab]{0,2}", "[ab]{0,2}"), 0..4),
            b in proptest::collection::vec(("[ab]{0,2}", "[ab]{0,2}"), 0..4),
            pad in 0usize..3,
        ) {
            let mut rows: Vec<ReplayResult> = (0..pad as u64).map(sample).collect();
            rows.push(with_headers(&a));
            rows.push(with_headers(&b));
            let batch = results_to_batch(&rows).unwrap();
            let cols = ResultColumns::new(&batch, &[]).unwrap();
            let (x, y) = (cols.resp_h.list(pad), cols.resp_h.list(pad + 1));
            proptest::prop_assert_eq!(cols.resp_h.same(pad, &cols.resp_h, pad + 1), x == y);
            proptest::prop_assert!(cols.resp_h.same(pad, &cols.resp_h, pad));
        }
    }
}
