//! The integration suite, one test binary: every module drives the real stack (the binary
//! or a hyper server on 127.0.0.1, real stores and services). One binary links the crate
//! once instead of once per file. The two log tests (`tests/logs.rs`, `tests/abuse_logs.rs`)
//! stay binaries of their own: each installs the process's global log subscriber and reads
//! every line it gets, which other tests running beside it would write into.

#[path = "../common/mod.rs"]
mod common;

mod billing;
mod binary;
mod bombs;
mod config;
mod connections;
mod console;
mod crash;
mod edits;
mod files;
mod gemini;
mod health;
mod hostile;
mod house;
mod image_api;
mod jobs;
mod keys;
mod late_bytes;
mod ledger_props;
mod limits;
mod metrics;
mod moderation;
mod mounts;
mod openai_sdk;
mod parse_props;
mod postgres;
mod replicas;
mod sdk_image_api;
mod slow_clients;
mod startup;
mod storage;
mod upstream;
mod url_fetch;
