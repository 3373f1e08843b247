//! shadowctl: capture production HTTP traffic, replay it against a primary and
//! shadow deployments, and judge whether the shadow may roll out.
//!
//! Data flows one way: `capture` -> Parquet -> `replay` -> Parquet -> `diff` -> report.
//! The Parquet layouts shared by the stages live in [`schema`].

pub mod capture;
pub mod demo;
pub mod diff;
pub mod endpoint;
pub mod llm;
pub mod outpath;
pub mod progress;
pub mod proto;
pub mod redact;
pub mod replay;
pub mod report;
pub mod schema;
pub mod text;
