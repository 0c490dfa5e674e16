//! Tower layers that host a paid, OpenAI-compatible image-edit API on any hyper server.
//!
//! `image-gateway` serves `POST /v1/images/edits` as the official OpenAI SDKs, curl and
//! the clients built on them (LobeChat, Cherry Studio) call it: JSON with an `image_key` or
//! `generation_id`, or multipart with `image` / `image[]` files. Each concern is a Tower
//! layer you can take alone, and [`Gateway::builder`] stacks them all:
//!
//! | module | guarantee |
//! |---|---|
//! | [`auth`] | no request passes without a known API key (`401 invalid_api_key`) |
//! | [`limit`] | no more than the body limit is ever read (`413`) |
//! | [`request`] | any bytes in give a validated [`EditRequest`](request::EditRequest) or a spec error out, never a panic |
//! | [`source`] | keys and generation ids are checked before any storage is touched |
//! | [`backend`] | the [`ImageBackend`](backend::ImageBackend) seam and a model-free reference backend |
//! | [`store`] | [`FileKey`](store::FileKey): a key that cannot leave its owner's folder |
//! | [`error`] | every failure is one [`GatewayError`] rendered in the OpenAI envelope |
//! | [`gateway`] | the assembled stack as one `tower::Service` |
//!
//! # Cargo features
//! - `reference-backend` (default): [`backend::ReferenceBackend`], which decodes, resizes
//!   and re-encodes the source without a model, so everything runs on a fresh machine.
//! - `server` (default): [`server::serve`], an HTTP/1 + HTTP/2 accept loop over hyper-util.
//!
//! # Panics
//! No code path reachable from a request panics; parsers are property-tested and fuzzed.

#![deny(unreachable_pub)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod auth;
pub mod backend;
pub mod billing;
mod body;
pub mod catalog;
pub mod clock;
pub mod error;
pub mod files;
mod future;
pub mod gateway;
pub mod id;
pub mod idempotency;
pub mod lease;
pub mod ledger;
pub mod limit;
pub mod media;
mod page;
pub mod ratelimit;
pub mod request;
mod response;
#[cfg(feature = "server")]
pub mod server;
pub mod source;
pub mod store;

pub use error::{ClientAborted, ErrorCode, GatewayError};

/// The attribute that implements the crate's async traits ([`backend::ImageBackend`],
/// [`ledger::Ledger`], [`store::FileStore`], ...), re-exported so an implementation needs no
/// dependency of its own.
pub use async_trait::async_trait;
pub use future::ResponseFuture;
pub use gateway::Gateway;

/// A boxed error, as bodies and stores report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use body::ResponseBody;
