//! What the SQLite stores share: [`Writer`], group commit through one thread per database,
//! and [`Reader`], the read-only connection beside it.
//!
//! The ledger and the generation records each own a database whose every write goes
//! through its writer, so concurrent edits share a transaction and its sync instead of
//! taking turns at a mutex and paying a commit each.

mod reader;
mod writer;

pub(crate) use reader::Reader;
pub(crate) use writer::{DbFailed, Writer};
