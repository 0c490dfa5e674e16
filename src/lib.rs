//! Tower layers that host a paid, OpenAI-compatible image API on any hyper server.
//!
//! `image-gateway` serves `POST /v1/images/edits`, `/v1/images/generations` and
//! `/v1/images/compose` (answered as JSON, or streamed as OpenAI's image events) and
//! `GET /v1/models`, as the official OpenAI SDKs, curl and the clients built on them
//! (LobeChat, Cherry Studio) call them: an edit as JSON with an `image_key`, a
//! `generation_id` or OpenAI's `images` references, or multipart with `image` / `image[]`
//! and `mask` files. Each concern is a Tower layer you can take alone, and
//! [`Gateway::builder`] stacks them all:
//!
//! The stack, outermost first, each layer in a folder of its own:
//!
//! | module | what it guarantees |
//! |---|---|
//! | [`auth`] | `Authorization: Bearer` or `x-api-key`; an unknown or missing key is `401 invalid_api_key`; [`StaticKeys`](auth::StaticKeys) keeps SHA-256 digests only and compares in constant time |
//! | [`ratelimit`] | per-key request rate (GCRA) and in-flight bound, `429` with `Retry-After`; in this process, or in Redis across replicas (feature `redis`, `503` while Redis is unreachable) |
//! | [`limit`] | no more than the body limit (26 MiB) is ever read; over it is `413`, announced or while streaming |
//! | [`request`] | JSON or multipart in, one validated [`EditRequest`](job::EditRequest) of the endpoint's operation or a spec error out, never a panic; part order free; type by magic bytes; each image cut off at 25 MiB; `stream: true` answered as server-sent events once the hold is taken |
//! | [`idempotency`] | a retried `Idempotency-Key` request is answered with its first result and charged once |
//! | [`source`] | keys, generation ids and URLs resolved to source bytes (and a mask), owner checked; `409 generation_not_ready` while outputs are stored; inline images stored as uploads once the hold is taken, while the backend runs |
//! | [`billing`] | hold `n x price` before the backend, settle what came back before any of it is reachable, release on any failure; balance and usage endpoints |
//! | [`admin`] | the admin API, every route of it, behind its own key (compared by digest in constant time): deposits, any user's usage, managed keys, routed deployments' state |
//! | [`backend`] | the [`ImageBackend`](backend::ImageBackend) seam, the innermost [`EditService`](backend::EditService), the model-free reference backend (renders bounded in number and memory) and the upstream backend |
//! | [`files`] | upload (up to 5 files, bad ones refused alone and listed), the files list (newest first, stable paging), download and delete |
//!
//! Beside the stack:
//!
//! | module | what it holds |
//! |---|---|
//! | [`jobs`] | jobs that outlive their connections: records ([`JobRecords`](jobs::JobRecords): memory, SQLite), `Prefer: respond-async`, the job API (`/v1/images/jobs`), event logs for reattaching |
//! | [`job`] | one job's types, from [`EditRequest`](job::EditRequest) to [`EditOutcome`](job::EditOutcome); every layer imports them and they import no layer |
//! | `answer` | how an [`EditOutcome`](job::EditOutcome) is answered: OpenAI's JSON, each image base64-encoded as it is sent, for the synchronous answer and the job API alike |
//! | [`ledger`] | the [`Ledger`](ledger::Ledger) contract (atomic holds, settle or release exactly once, expiry, conservation), in memory, SQLite and PostgreSQL (`PgLedger`, feature `postgres`) |
//! | [`moderation`] | prompts checked before the hold ([`moderation::WordList`], an OpenAI-compatible `/v1/moderations`, your own), and source images once read, still before the hold: `400 content_policy_violation`, or `503` when the check fails (fail closed) |
//! | [`metrics`] | Prometheus counters and histograms of requests, money, backends, jobs and connections, served at `GET /metrics` |
//! | [`multipart`] | the streaming `multipart/form-data` reader behind edits and uploads: bounded parts, headers and fields, never a panic |
//! | `console` | the browser console at `/console/`: static files built in (feature `console`) |
//! | [`store`] | [`FileKey`](store::FileKey) (a key that cannot leave its owner's folder), [`FileStore`](store::FileStore) (local dir with atomic, durable writes batched through one writer thread, and an index; S3 with an index in PostgreSQL; memory), quotas |
//! | [`generations`] | the record of each produced image ([`Generations`](generations::Generations): memory, SQLite, PostgreSQL): pending until its bytes are stored, the hold it was charged under |
//! | [`lease`] | what a request's work keeps taken (its in-flight slot) for as long as the work runs, not as long as the socket |
//! | [`catalog`] | models, their maximum `n` and price; `GET /v1/models` |
//! | [`fetch`] | image URLs from requests: `data:` URIs decoded within a cap; `https://` URLs whose every address is public, checked after one resolution and on each redirect (the fetcher: feature `fetch`) |
//! | [`error`] | [`GatewayError`]: every row of the spec's table, declared once, rendered in the OpenAI envelope |
//! | `sqlite` | group commit for the SQLite stores: one writer thread per database commits every write waiting for it in one transaction, each in a savepoint, answering after the commit; reads on a read-only connection beside it (feature `sqlite`) |
//! | `postgres` | one database for every replica: the ledger, generation and idempotency records and the key store in PostgreSQL, migrated on connect; what every edit writes goes through one group commit per process (feature `postgres`) |
//! | [`id`], [`media`], [`clock`], [`address`] | request, generation and job ids, image types by magic number (and sizes from headers), Unix seconds, which IP addresses are public |
//! | [`gateway`] | [`Gateway::builder`]: assembles the stack as one `tower::Service` |
//! | [`health`] | `GET /healthz` and `GET /readyz` (ledger and store answer a read; `503` while draining), before any key check |
//! | `server` | `serve`: an HTTP/1 + HTTP/2 accept loop with connection caps, deadlines and graceful shutdown (feature `server`) |
//!
//! # Cargo features
//! The defaults are light: the layers, the in-memory stores and the reference backend. Each
//! heavy concern is a feature of its own; the server binary (the workspace's `server/`
//! crate) turns them all on.
//! - `reference-backend` (default): `backend::ReferenceBackend`, which decodes, resizes and
//!   re-encodes the source without a model, so everything runs on a fresh machine.
//! - `console`: `console::ConsoleLayer`, the browser console at `/console/`.
//! - `server`: `server::serve`, an HTTP/1 + HTTP/2 accept loop over hyper-util.
//! - `sqlite`: the SQLite ledger, generation records and idempotency records.
//! - `upstream`: `backend::UpstreamBackend`, for an OpenAI-compatible images API.
//! - `fetch`: `fetch::UrlFetcher`, which fetches `https://` image references.
//! - `postgres`: `PgLedger`, `PgGenerations`, `PgIdempotency`, `PgKeys` over one
//!   `postgres::Postgres` pool.
//! - `s3`: `store::S3FileStore`, files in an S3-compatible bucket indexed in PostgreSQL.
//! - `redis`: `ratelimit::RedisLimits`, the per-key limits shared by replicas.
//!
//! # Panics
//! No code path reachable from a request panics; parsers are property-tested and fuzzed.

#![deny(unreachable_pub, unsafe_code)]
// docs.rs (`--cfg docsrs`) marks each feature-gated item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

pub mod address;
pub mod admin;
mod answer;
pub mod auth;
pub mod backend;
pub mod billing;
mod body;
pub mod catalog;
pub mod clock;
#[cfg(feature = "console")]
pub mod console;
pub mod error;
pub mod fetch;
pub mod files;
mod future;
pub mod gateway;
pub mod generations;
pub mod health;
pub mod id;
pub mod idempotency;
pub mod job;
pub mod jobs;
pub mod lease;
pub mod ledger;
pub mod limit;
pub mod media;
pub mod metrics;
pub mod moderation;
pub mod multipart;
mod page;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod ratelimit;
pub mod request;
#[cfg(feature = "server")]
pub mod server;
pub mod source;
#[cfg(feature = "sqlite")]
mod sqlite;
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

/// A request body the gateway's services read: `Bytes` chunks, movable to other tasks, with
/// an error that boxes. Every `http_body::Body` of that shape is one (hyper's `Incoming`,
/// axum's `Body`, `Full<Bytes>`), so this names the bound once instead of at every service.
pub trait RequestBody:
    http_body::Body<Data = bytes::Bytes, Error = Self::ReadError> + Send + 'static
{
    /// The body's error type.
    type ReadError: Into<BoxError>;
}

impl<B> RequestBody for B
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type ReadError = B::Error;
}

pub use body::ResponseBody;
