//! Wire formats shared by the stages: sans-I/O parsers that are fed bytes
//! with the time they arrived and report what they found, with no sockets,
//! pcap or Parquet. Meaning (what an OpenAI event says) lives in `llm`.

pub mod events;
pub mod h2;
pub mod http1;
pub mod prometheus;
