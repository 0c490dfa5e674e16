//! The gateway as its own process, on embedded defaults.
//!
//! ```sh
//! cargo run --release --example gateway
//! ```
//!
//! Environment (all optional):
//! - `GATEWAY_ADDR`: where to listen (default `127.0.0.1:8080`).
//! - `GATEWAY_DATA_DIR`: where stored data lives (default `./gateway-data`): uploaded and
//!   generated images under `files/`, generation records in `generations.db`.
//! - `GATEWAY_API_KEYS`: `user:key,user:key`. When unset, one demo user `demo` gets a freshly
//!   generated `pk_live_...` key, printed on start.
//! - `GATEWAY_PRICE_PER_IMAGE`: price of one returned image, an integer (default 0).
//! - `GATEWAY_DEMO_BALANCE`: opening balance of each configured user, an integer, credited
//!   on the first start only (default 0).
//! - `GATEWAY_ADMIN_KEY`: enables `POST /admin/v1/accounts/{user_id}/deposits` for this key.
//! - `GATEWAY_HOLD_TTL_SECS`: how long a hold outlives a crashed process (default 600).
//! - `GATEWAY_REFERENCE_LATENCY_MS`: simulated model latency of the reference backend
//!   (default 0).
//! - `GATEWAY_MAX_RENDERS`: reference renders at once, process-wide (default: one per core).
//! - `GATEWAY_DECODE_BUDGET_BYTES`: the most a decoded source may take (default 32 MiB).
//! - `GATEWAY_MAX_OUTPUT_PIXELS`: the largest output (default 3840 x 2160 = 8,294,400).
//! - `GATEWAY_QUOTA_BYTES`, `GATEWAY_QUOTA_FILES`: what each user may keep stored
//!   (default 200,000,000 bytes in 10,000 files; `0` is unlimited).
//! - `GATEWAY_MIN_FREE_BYTES`: free space the file volume keeps; writes that would go under
//!   it are refused with `507` (default 64 MiB), so the ledger always has room.
//! - `GATEWAY_UPSTREAM_URL`: forward edits to this OpenAI-compatible API (e.g.
//!   `https://api.openai.com`) instead of the reference backend.
//! - `GATEWAY_UPSTREAM_KEY`: the upstream's API key.
//! - `GATEWAY_UPSTREAM_MODEL`: the upstream model that serves `gpt-image-2` (default: the
//!   same name).
//! - `GATEWAY_RATE_LIMIT`: requests per minute per API key (default: unlimited).
//! - `GATEWAY_MAX_IN_FLIGHT`: requests in flight per API key (default: unlimited).
//! - `RUST_LOG`: log filter (default `info`).
//!
//! `GET /openapi.json` (no key needed) describes every endpoint; its source is `openapi.yaml`.

use std::convert::Infallible;
use std::error::Error;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use image_gateway::ResponseBody;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use image_gateway::auth::StaticKeys;
use image_gateway::backend::{
    ImageBackend, ReferenceBackend, UpstreamBackend, DEFAULT_DECODE_BUDGET,
    DEFAULT_MAX_OUTPUT_PIXELS,
};
use image_gateway::catalog::ModelSpec;
use image_gateway::gateway::DEFAULT_MODEL;
use image_gateway::idempotency::SqliteIdempotency;
use image_gateway::ledger::{Durability, Ledger, SqliteLedger};
use image_gateway::ratelimit::RateLimitLayer;
use image_gateway::server::{serve, ServeOptions};
use image_gateway::store::{LocalFileStore, Quota, SqliteGenerations};
use image_gateway::Gateway;
use rand::distributions::{Alphanumeric, DistString};
use tokio::net::TcpListener;

/// mimalloc rather than the system allocator: with 25 MB uploads freed on whichever thread
/// finished them, glibc's per-thread arenas keep those pages, and the process's memory
/// creeps up over hours of uploads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest `n` the example's model accepts.
const MAX_IMAGES: u32 = 10;

struct Config {
    addr: String,
    data_dir: PathBuf,
    api_keys: Option<String>,
    price_per_image: u64,
    demo_balance: u64,
    admin_key: Option<String>,
    hold_ttl: Duration,
    latency: Duration,
    max_renders: u64,
    decode_budget: u64,
    max_output_pixels: u64,
    quota: Quota,
    min_free_bytes: u64,
    upstream: Option<(String, Option<String>, Option<String>)>,
    rate_limit: RateLimitLayer,
}

impl Config {
    fn from_env() -> Result<Config, Box<dyn Error>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let integer = |name: &str| -> Result<u64, Box<dyn Error>> {
            match var(name) {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name} must be a non-negative integer").into()),
                None => Ok(0),
            }
        };
        let integer_or = |name: &str, default: u64| match var(name) {
            Some(_) => integer(name),
            None => Ok(default),
        };
        Ok(Config {
            // A name (`localhost:8080`) is resolved when the listener binds.
            addr: var("GATEWAY_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
            data_dir: var("GATEWAY_DATA_DIR")
                .unwrap_or_else(|| "./gateway-data".into())
                .into(),
            api_keys: var("GATEWAY_API_KEYS"),
            price_per_image: integer("GATEWAY_PRICE_PER_IMAGE")?,
            demo_balance: integer("GATEWAY_DEMO_BALANCE")?,
            admin_key: var("GATEWAY_ADMIN_KEY"),
            hold_ttl: Duration::from_secs(match var("GATEWAY_HOLD_TTL_SECS") {
                Some(_) => integer("GATEWAY_HOLD_TTL_SECS")?,
                None => 600,
            }),
            latency: Duration::from_millis(integer("GATEWAY_REFERENCE_LATENCY_MS")?),
            max_renders: integer("GATEWAY_MAX_RENDERS")?,
            decode_budget: integer_or("GATEWAY_DECODE_BUDGET_BYTES", DEFAULT_DECODE_BUDGET)?,
            max_output_pixels: integer_or("GATEWAY_MAX_OUTPUT_PIXELS", DEFAULT_MAX_OUTPUT_PIXELS)?,
            quota: Quota::new(
                integer_or("GATEWAY_QUOTA_BYTES", 200_000_000)?,
                integer_or("GATEWAY_QUOTA_FILES", 10_000)?,
            ),
            min_free_bytes: integer_or("GATEWAY_MIN_FREE_BYTES", 64 << 20)?,
            rate_limit: {
                let mut limits = RateLimitLayer::new();
                if let Some(rpm) = NonZeroU32::new(integer("GATEWAY_RATE_LIMIT")?.try_into()?) {
                    limits = limits.per_minute(rpm);
                }
                match integer("GATEWAY_MAX_IN_FLIGHT")? {
                    0 => limits,
                    max => limits.max_in_flight(max.try_into()?),
                }
            },
            upstream: var("GATEWAY_UPSTREAM_URL").map(|url| {
                (
                    url,
                    var("GATEWAY_UPSTREAM_KEY"),
                    var("GATEWAY_UPSTREAM_MODEL"),
                )
            }),
        })
    }
}

/// The configured keys, or a demo user with a fresh key (returned so it can be printed).
fn keys(config: &Config) -> Result<(StaticKeys, Option<String>), Box<dyn Error>> {
    let Some(list) = &config.api_keys else {
        let key = format!(
            "pk_live_{}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
        );
        return Ok((StaticKeys::new().with_key("demo", &key)?, Some(key)));
    };
    let mut keys = StaticKeys::new();
    let mut seen = std::collections::HashSet::new();
    for entry in list.split(',') {
        let (user, key) = entry
            .trim()
            .split_once(':')
            .ok_or("GATEWAY_API_KEYS must be user:key,user:key")?;
        let (user, key) = (user.trim(), key.trim());
        if user.is_empty() || key.is_empty() {
            return Err("GATEWAY_API_KEYS has an entry with an empty user or key".into());
        }
        // Two users with one key would make the second unreachable, and the key ambiguous.
        if !seen.insert(key) {
            return Err(format!("GATEWAY_API_KEYS lists one key twice (for user `{user}`)").into());
        }
        keys = keys
            .with_key(user, key)
            .map_err(|e| format!("GATEWAY_API_KEYS: user `{user}`: {e}"))?;
    }
    Ok((keys, None))
}

/// `openapi.yaml`, as JSON.
fn openapi_json() -> Result<Bytes, Box<dyn Error>> {
    let document: serde_json::Value = serde_yaml::from_str(include_str!("../openapi.yaml"))?;
    Ok(Bytes::from(serde_json::to_vec(&document)?))
}

/// The gateway, plus `GET /openapi.json` for anyone.
#[derive(Clone)]
struct WithOpenApi {
    gateway: Gateway,
    document: Bytes,
}

impl<B> tower::Service<Request<B>> for WithOpenApi
where
    Gateway: tower::Service<
        Request<B>,
        Response = Response<ResponseBody>,
        Error = Infallible,
        Future = image_gateway::ResponseFuture<Response<ResponseBody>, Infallible>,
    >,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = image_gateway::ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request<B>>::poll_ready(&mut self.gateway, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.method() == Method::GET && req.uri().path() == "/openapi.json" {
            let mut answer = Response::new(ResponseBody::from(self.document.clone()));
            answer
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return image_gateway::ResponseFuture::ready(answer);
        }
        self.gateway.call(req)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    println!("shutting down: finishing in-flight requests");
}

/// The upstream model API when one is configured, else the model-free reference backend.
fn backend(config: &Config) -> Result<Arc<dyn ImageBackend>, Box<dyn Error>> {
    let Some((url, key, model)) = &config.upstream else {
        let mut reference = ReferenceBackend::new()
            .latency(config.latency)
            .decode_budget(config.decode_budget)
            .max_output_pixels(config.max_output_pixels);
        if config.max_renders > 0 {
            reference = reference.max_renders(config.max_renders.try_into()?);
        }
        return Ok(Arc::new(reference));
    };
    let mut upstream = UpstreamBackend::builder(url.clone());
    if let Some(key) = key {
        upstream = upstream.api_key(key.clone());
    }
    if let Some(model) = model {
        upstream = upstream.model(DEFAULT_MODEL, model.clone());
    }
    println!("backend: OpenAI-compatible upstream");
    Ok(Arc::new(upstream.build()?))
}

#[tokio::main]
async fn main() {
    // One readable line with the cause, not a `Debug` dump, and a failing exit status.
    if let Err(error) = run().await {
        eprintln!("image-gateway: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data dir {}: {e}",
            config.data_dir.display()
        )
    })?;
    let (keys, demo_key) = keys(&config)?;

    let store = LocalFileStore::open(&config.data_dir)?.min_free_bytes(config.min_free_bytes);
    let generations = SqliteGenerations::open(config.data_dir.join("generations.db"))?;
    // Commits survive a killed process; deposits are fsynced whatever happens (see Durability).
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open_with(
        config.data_dir.join("ledger.db"),
        Durability::ProcessCrash,
    )?);
    if config.demo_balance > 0 {
        // The reference makes the credit idempotent: a restart does not top it up again.
        for user in keys.users() {
            let amount = i64::try_from(config.demo_balance)?;
            ledger.deposit(user, amount, "opening-balance").await?;
        }
    }
    let mut builder = Gateway::builder()
        .keys(keys)
        .shared_backend(backend(&config)?)
        .store(store)
        .generations(generations)
        .idempotency(SqliteIdempotency::open(
            config.data_dir.join("generations.db"),
        )?)
        .shared_ledger(ledger)
        .hold_ttl(config.hold_ttl)
        .quota(config.quota)
        .rate_limit(config.rate_limit.clone());
    if let Some(admin_key) = &config.admin_key {
        builder = builder.admin_key(admin_key.clone());
    }
    let gateway = builder
        .model(
            DEFAULT_MODEL,
            ModelSpec::new(MAX_IMAGES, config.price_per_image),
        )
        .build();

    let listener = TcpListener::bind(&config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener.local_addr()?;
    println!("image-gateway listening on http://{addr}");
    println!("data dir: {}", config.data_dir.display());
    if config.admin_key.is_some() {
        println!("admin API enabled: POST /admin/v1/accounts/{{user_id}}/deposits");
    }
    if let Some(key) = &demo_key {
        println!("demo API key (user `demo`): {key}");
        println!(
            "try: curl http://{addr}/v1/images/edits -H \"Authorization: Bearer {key}\" \
             -F image=@photo.png -F model={DEFAULT_MODEL} -F prompt=\"make it blue\" -F n=1"
        );
    }
    // On SIGTERM or ctrl-c: stop accepting, let in-flight edits finish (their holds are
    // settled or released as they end), then exit.
    let service = WithOpenApi {
        gateway,
        document: openapi_json()?,
    };
    serve(
        listener,
        service,
        ServeOptions::default(),
        shutdown_signal(),
    )
    .await?;
    println!("stopped");
    Ok(())
}
