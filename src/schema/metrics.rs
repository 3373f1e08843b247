//! The metrics schema: one row per sample of a target's resource use (or
//! per failed scrape, or per metric family a Prometheus endpoint exposed),
//! written by `replay --metrics/--pid/--cgroup` beside its results and read
//! by `diff`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampNanosecondType};

use super::exchange::{header_list_type, pairs_list, ts_type};
use super::{FileKind, SchemaError};

pub const METRICS_SCHEMA_VERSION: &str = "1";

pub const METRICS: FileKind = FileKind {
    kind: "metrics",
    version: METRICS_SCHEMA_VERSION,
    bulky_columns: &[],
    unique_columns: &[],
};

/// What a metrics row records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A value of a family at `ts`.
    Sample,
    /// A scrape or read that failed or was too slow: `detail` says why.
    Error,
    /// A family the endpoint exposed (first and last scrape): `detail`
    /// holds `{"scrape": "first"|"last", "type": ..., "labels": [...]}`.
    Family,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sample => "sample",
            Self::Error => "error",
            Self::Family => "family",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sample" => Some(Self::Sample),
            "error" => Some(Self::Error),
            "family" => Some(Self::Family),
            _ => None,
        }
    }
}

/// One row of a metrics file.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    /// When the scrape or read started (ns since the epoch).
    pub ts: i64,
    /// The target's name in the replay (`primary`, a shadow's name).
    pub target: String,
    /// `prometheus`, `pid` or `cgroup`.
    pub source: String,
    pub kind: MetricKind,
    pub family: String,
    pub labels: Vec<(String, String)>,
    pub value: Option<f64>,
    pub detail: Option<String>,
    /// How long the scrape took, in ms.
    pub scrape_ms: Option<f64>,
}

pub fn metrics_schema() -> SchemaRef {
    use DataType::*;
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    Arc::new(Schema::new(vec![
        f("ts", ts_type(), false),
        f("target", Utf8, false),
        f("source", Utf8, false),
        f("kind", Utf8, false),
        f("family", Utf8, false),
        f("labels", header_list_type(), false),
        f("value", Float64, true),
        f("detail", Utf8, true),
        f("scrape_ms", Float64, true),
    ]))
}

pub fn metrics_to_batch(rows: &[MetricRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let text = |f: &dyn Fn(&MetricRow) -> Option<&str>| {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let float = |f: &dyn Fn(&MetricRow) -> Option<f64>| {
        let mut b = Float64Builder::with_capacity(rows.len());
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let mut ts = TimestampNanosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    rows.iter().for_each(|r| ts.append_value(r.ts));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        text(&|r| Some(&r.target)),
        text(&|r| Some(&r.source)),
        text(&|r| Some(r.kind.as_str())),
        text(&|r| Some(&r.family)),
        labels_column(rows),
        float(&|r| r.value),
        text(&|r| r.detail.as_deref()),
        float(&|r| r.scrape_ms),
    ];
    RecordBatch::try_new(metrics_schema(), columns)
}

fn labels_column(rows: &[MetricRow]) -> ArrayRef {
    let (mut names, mut values) = (StringBuilder::new(), StringBuilder::new());
    let mut offsets = vec![0i32];
    for r in rows {
        for (k, v) in &r.labels {
            names.append_value(k);
            values.append_value(v);
        }
        offsets.push(offsets.last().copied().unwrap_or(0) + r.labels.len() as i32);
    }
    pairs_list(names, values, offsets)
}

/// Read a whole metrics file (they are small: a row per family and target
/// per interval). Anything but a metrics file is refused, naming the file.
pub fn read_metrics(path: &std::path::Path) -> Result<Vec<MetricRow>, SchemaError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| SchemaError::Io {
        path: name.clone(),
        source,
    })?;
    let err = |e| SchemaError::Parquet {
        path: name.clone(),
        source: e,
    };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(err)?;
    let kind = super::parquet_io::kind_in(builder.metadata());
    if kind.as_deref() != Some(METRICS.kind) {
        return Err(SchemaError::WrongKind {
            path: name,
            expected: "metrics",
            detail: kind.map_or("no shadowctl metadata".into(), |k| {
                format!("its kind is `{k}`")
            }),
        });
    }
    super::parquet_io::check_version(builder.metadata(), &METRICS, &name)?;
    super::parquet_io::check_columns(&name, &metrics_schema(), builder.schema(), &[])?;
    let mut out = Vec::new();
    for batch in builder.build().map_err(err)? {
        let b = batch.map_err(|source| SchemaError::Arrow {
            path: name.clone(),
            source,
        })?;
        read_batch(&b, &mut out);
    }
    Ok(out)
}

fn read_batch(b: &RecordBatch, out: &mut Vec<MetricRow>) {
    let c = |n: &str| b.column_by_name(n).expect("checked column");
    let s = |n: &str| c(n).as_string::<i32>().clone();
    let ts = c("ts").as_primitive::<TimestampNanosecondType>().clone();
    let (target, source, kind, family, detail) = (
        s("target"),
        s("source"),
        s("kind"),
        s("family"),
        s("detail"),
    );
    let value = c("value")
        .as_primitive::<arrow::datatypes::Float64Type>()
        .clone();
    let scrape = c("scrape_ms")
        .as_primitive::<arrow::datatypes::Float64Type>()
        .clone();
    let labels = c("labels").as_list::<i32>().clone();
    let entries = labels.values().as_struct();
    let (names, values): (&StringArray, &StringArray) = (
        entries.column(0).as_string::<i32>(),
        entries.column(1).as_string::<i32>(),
    );
    let offsets = labels.value_offsets();
    let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    for i in 0..b.num_rows() {
        let Some(kind) = MetricKind::parse(kind.value(i)) else {
            continue;
        };
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        out.push(MetricRow {
            ts: ts.value(i),
            target: target.value(i).to_string(),
            source: source.value(i).to_string(),
            kind,
            family: family.value(i).to_string(),
            labels: (start..end)
                .map(|j| (names.value(j).to_string(), values.value(j).to_string()))
                .collect(),
            value: (!value.is_null(i)).then(|| value.value(i)),
            detail: opt(&detail, i),
            scrape_ms: (!scrape.is_null(i)).then(|| scrape.value(i)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ParquetFileWriter, WriterConfig};

    #[test]
    fn rows_round_trip_through_a_file() {
        let rows = vec![
            MetricRow {
                ts: 1_700_000_000_000_000_000,
                target: "primary".into(),
                source: "prometheus".into(),
                kind: MetricKind::Sample,
                family: "process_cpu_seconds_total".into(),
                labels: vec![],
                value: Some(1.5),
                detail: None,
                scrape_ms: Some(2.0),
            },
            MetricRow {
                ts: 1_700_000_001_000_000_000,
                target: "v2".into(),
                source: "prometheus".into(),
                kind: MetricKind::Error,
                family: String::new(),
                labels: vec![("gpu".into(), "0".into()), ("UUID".into(), "x".into())],
                value: None,
                detail: Some("timeout".into()),
                scrape_ms: None,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.parquet");
        let mut w =
            ParquetFileWriter::create(&path, metrics_schema(), METRICS, WriterConfig::default())
                .unwrap();
        w.write_batch(&metrics_to_batch(&rows).unwrap()).unwrap();
        w.finish(vec![]).unwrap();
        assert_eq!(read_metrics(&path).unwrap(), rows);
    }
}
