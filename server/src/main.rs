//! `image-gateway`: the gateway as its own process, on embedded defaults (SQLite ledger and
//! records, local files, the model-free reference backend) or in front of an upstream model.
//!
//! ```sh
//! cargo run --release            # or: image-gateway --help
//! ```
//!
//! Every setting is an environment variable or a key of `--config gateway.toml`;
//! [`table::SETTINGS`] lists them, and `--help` prints that list. `GET /openapi.json` (no key needed) describes every endpoint.

mod file;
mod keys;
mod openapi;
mod settings;
mod stores;
mod table;

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use image_gateway::admin::Upstreams;
use image_gateway::backend::{
    Cooldown, Deployment, ImageBackend, PerModel, RedisRests, ReferenceBackend, Rests,
    RoutedBackend, UpstreamBackend, DEFAULT_AZURE_API_VERSION,
};
use image_gateway::catalog::ModelSpec;
use image_gateway::console::ConsoleLayer;
use image_gateway::fetch::UrlFetcher;
use image_gateway::gateway::DEFAULT_MODEL;
use image_gateway::metrics::{Metrics, MetricsService};
use image_gateway::moderation::{OpenAiModeration, WordList};
use image_gateway::ratelimit::RedisLimits;
use image_gateway::server::{serve, ServeOptions};
use image_gateway::Gateway;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use file::FileSettings;
use settings::Config;
use stores::Stores;

/// mimalloc rather than the system allocator: with 25 MB uploads freed on whichever thread
/// finished them, glibc's per-thread arenas keep those pages, and the process's memory
/// creeps up over hours of uploads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest `n` the binary's model accepts.
const MAX_IMAGES: u32 = 10;

fn main() {
    let mut config_path = None;
    let mut print_config = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{}", settings::help());
                return;
            }
            "--version" | "-V" => {
                println!("image-gateway {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            "--print-config" => print_config = true,
            "--config" => match args.next() {
                Some(path) => config_path = Some(path),
                None => {
                    eprintln!("image-gateway: --config needs a file (try --help)");
                    std::process::exit(2);
                }
            },
            other => match other.strip_prefix("--config=") {
                Some(path) => config_path = Some(path.to_owned()),
                None => {
                    eprintln!("image-gateway: unknown argument `{other}` (try --help)");
                    std::process::exit(2);
                }
            },
        }
    }
    // One readable line with the cause, not a `Debug` dump, and a failing exit status.
    let fail = |error: Box<dyn Error>| -> ! {
        eprintln!("image-gateway: {error}");
        std::process::exit(1);
    };
    let (config, file) =
        settings::load(config_path.as_deref().map(Path::new)).unwrap_or_else(|e| fail(e));
    if print_config {
        print!("{}", settings::print(&file));
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(format!("cannot start the runtime: {e}").into()),
    };
    if let Err(error) = runtime.block_on(run(config, file)) {
        fail(error);
    }
}

async fn run(config: Config, file: FileSettings) -> Result<(), Box<dyn Error>> {
    let log_filter: tracing_subscriber::filter::Targets = config
        .log_filter
        .parse()
        .map_err(|e| format!("RUST_LOG: {e}"))?;
    tracing_subscriber::fmt()
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_max_level(tracing::Level::TRACE)
        .finish()
        .with(log_filter)
        .init();

    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data dir {}: {e}",
            config.data_dir.display()
        )
    })?;
    let keys = keys::keys(config.api_keys.as_deref(), &config.data_dir)?;
    let stores = Stores::open(&config, &keys).await?;
    if config.demo_balance > 0 {
        // The reference makes the credit idempotent: a restart does not top it up again.
        let amount = i64::try_from(config.demo_balance)?;
        for user in keys.users() {
            stores
                .ledger
                .deposit(user, amount, "opening-balance")
                .await?;
        }
    }
    let mut rate_limit = config.rate_limit.clone();
    if let Some((url, prefix)) = &config.redis {
        let shared = RedisLimits::connect(url, prefix)
            .await
            .map_err(|e| format!("cannot use Redis (GATEWAY_REDIS_URL): {e}"))?;
        rate_limit = rate_limit.redis(shared);
    }
    // With Redis, a deployment resting on one replica rests on all.
    let rests: Option<Arc<dyn Rests>> = match &config.redis {
        Some((url, prefix)) => {
            Some(Arc::new(RedisRests::connect(url, prefix).await.map_err(
                |e| format!("cannot use Redis (GATEWAY_REDIS_URL): {e}"),
            )?))
        }
        None => None,
    };
    let metrics = if config.metrics_user_labels {
        Metrics::with_user_labels()
    } else {
        Metrics::new()
    };
    let (routed, upstreams) = backend(&config, &file, rests, &metrics)?;
    let mut builder = Gateway::builder();
    builder = match stores.registry {
        Some(registry) => builder.managed_keys(registry),
        None => builder.keys(stores.keys),
    };
    builder = builder
        .backend(routed)
        .upstreams(upstreams)
        .store(stores.files)
        .generations(stores.generations)
        .idempotency(stores.idempotency)
        .ledger(stores.ledger)
        .hold_ttl(config.hold_ttl)
        .quota(config.quota)
        .stream_keepalive(config.stream_keepalive)
        .jobs(stores.jobs)
        .job_limits(config.job_limits)
        .upload_max_file(config.upload_max_file)
        .rate_limit(rate_limit);
    if let Some(fetch) = &config.url_fetch {
        let fetcher = UrlFetcher::new(fetch.clone())
            .map_err(|e| format!("cannot fetch image URLs (GATEWAY_URL_FETCH): {e}"))?;
        builder = builder.fetcher(fetcher);
    }
    if let Some(admin_key) = &config.admin_key {
        builder = builder.admin_key(admin_key.clone());
    }
    builder = builder.metrics(metrics.clone());
    for (name, spec, _) in models(&config, &file) {
        builder = builder.model(name, spec);
    }
    if let Some(webhooks) = &config.webhooks {
        builder = builder.webhooks(webhooks.clone());
    }
    match &config.moderation {
        None => {}
        Some(settings::ModerationSettings::Words(words, fail_open)) => {
            println!("moderation: a word list of {}", words.len());
            builder = builder.moderation(WordList::new(words), *fail_open);
        }
        Some(settings::ModerationSettings::OpenAi {
            url,
            key,
            model,
            images,
            fail_open,
        }) => {
            let mut moderation = OpenAiModeration::new(url)?
                .model(model.clone())
                .images(*images);
            if let Some(key) = key {
                moderation = moderation.api_key(key.clone());
            }
            println!(
                "moderation: an OpenAI-compatible /v1/moderations (source images {})",
                if *images { "too" } else { "not checked" }
            );
            builder = builder.moderation(moderation, *fail_open);
        }
    }
    let gateway = builder.build();
    if let Some(deliverer) = gateway.webhook_deliverer() {
        tokio::spawn(deliverer.run());
    }
    // The one sweep of this ledger: releases the holds of a run that was killed.
    tokio::spawn(gateway.expiry_sweep().run());
    if let Some(bucket) = stores.bucket.clone() {
        // Writes to the bucket cut midway (a replica killed, a writer dropped) are ended:
        // their objects deleted, their pending rows with them. A write takes seconds; one
        // pending for 15 minutes was cut.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
            loop {
                every.tick().await;
                match bucket
                    .sweep_pending(std::time::Duration::from_secs(900))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(ended = n, "writes to the bucket cut midway ended"),
                    Err(error) => tracing::warn!(%error, "sweeping cut writes failed"),
                }
            }
        });
    }
    let jobs = gateway.jobs();
    let runner = gateway.job_runner();
    if stores.sole_runner {
        // Nobody else runs these records' jobs: an earlier run's open ones are taken now.
        let taken = runner.take_all().await?;
        if taken > 0 {
            println!("jobs: {taken} left open by an earlier run taken over");
        }
    }
    tokio::spawn(runner.run());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            every.tick().await;
            if let Err(error) = jobs.sweep().await {
                tracing::warn!(%error, "sweeping ended job records failed");
            }
        }
    });
    let readiness = gateway.readiness();
    let service = ServiceBuilder::new()
        .option_layer(cors(&config.cors_origins)?)
        .layer(ConsoleLayer)
        .service(openapi::WithOpenApi {
            gateway,
            document: openapi::document()?,
        });

    let listener = TcpListener::bind(&config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener.local_addr()?;
    println!("image-gateway listening on http://{addr}");
    println!("data dir: {}", config.data_dir.display());
    println!("ledger and records: {}", stores.described);
    if config.redis.is_some() {
        println!("rate limits: Redis (GATEWAY_REDIS_URL)");
    }
    if config.admin_key.is_some() {
        println!("admin API enabled: POST /admin/v1/accounts/{{user_id}}/deposits");
        println!("  keys: POST|GET /admin/v1/users/{{user_id}}/keys, GET|PATCH|DELETE /admin/v1/keys/{{id}}, POST /admin/v1/keys/{{id}}/rotate");
    }
    let mut options = ServeOptions::default();
    options.metrics = Some(metrics.clone());
    options.idle_timeout = config.idle_timeout;
    options.min_body_rate = config.min_body_rate;
    options.trusted_proxies = config.trusted_proxies.clone();
    let scrape = match &config.metrics_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (GATEWAY_METRICS_ADDR): {e}"))?;
            println!(
                "metrics: GET http://{}/metrics (no key)",
                listener.local_addr()?
            );
            Some(listener)
        }
        None => {
            if config.admin_key.is_some() {
                println!("metrics: GET /metrics with the admin key");
            }
            None
        }
    };
    println!("health: GET /healthz, GET /readyz (no key)");
    println!("console: http://{addr}/console/");
    if !config.cors_origins.is_empty() {
        println!("CORS allowed for: {}", config.cors_origins.join(", "));
    }
    if let Some(demo) = &keys.demo {
        let made = if demo.new {
            "new, kept in the data dir"
        } else {
            "reused from the data dir"
        };
        println!("demo API key (user `demo`, {made}): {}", demo.key);
        println!(
            "try: curl http://{addr}/v1/images/edits -H \"Authorization: Bearer {}\" \
             -F image=@photo.png -F model={DEFAULT_MODEL} -F prompt=\"make it blue\" -F n=1",
            demo.key
        );
    }
    // On SIGTERM or ctrl-c: answer /readyz 503 for the shutdown delay, then stop accepting,
    // let in-flight edits finish (their holds are settled or released as they end), and exit.
    let delay = config.shutdown_delay;
    let shutdown = async move {
        shutdown_signal().await;
        readiness.drain();
        if !delay.is_zero() {
            println!("draining: /readyz answers 503 for {}s", delay.as_secs());
            tokio::time::sleep(delay).await;
        }
    };
    // The scrape listener stops with the main one.
    let (stop, mut stopped) = tokio::sync::watch::channel(());
    if let Some(listener) = scrape {
        tokio::spawn(serve(
            listener,
            MetricsService::new(metrics),
            ServeOptions::default(),
            async move {
                let _ = stopped.changed().await;
            },
        ));
    }
    serve(listener, service, options, shutdown).await?;
    drop(stop);
    println!("stopped");
    Ok(())
}

/// CORS for the listed origins, or none at all. A preflight is answered here, before the
/// gateway's key check (browsers send it without credentials); every other answer, errors
/// included, carries the allow headers so the page can read it.
fn cors(origins: &[String]) -> Result<Option<CorsLayer>, Box<dyn Error>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "GATEWAY_CORS_ORIGINS: an origin is not a valid header value")?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // The SDKs add their own headers (`x-stainless-*`, `openai-*`): an allowed
            // origin may send whichever it asks for; the key check still applies.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-source-image-keys"),
                http::header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(600)),
    ))
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

/// The models served: the config file's `[models]`, else `gpt-image-2` at
/// `GATEWAY_PRICE_PER_IMAGE`; each with its upstream name.
fn models(config: &Config, file: &FileSettings) -> Vec<(String, ModelSpec, String)> {
    let default_upstream = || {
        config
            .upstream
            .as_ref()
            .map_or(DEFAULT_MODEL.to_owned(), |u| u.model.clone())
    };
    if file.models.is_empty() {
        let spec = ModelSpec::new(MAX_IMAGES, config.price_per_image);
        return vec![(DEFAULT_MODEL.to_owned(), spec, default_upstream())];
    }
    file.models
        .iter()
        .map(|(name, model)| {
            let mut spec = ModelSpec::new(
                model.max_images.unwrap_or(MAX_IMAGES),
                model.price_per_image.unwrap_or(config.price_per_image),
            );
            if let Some(qualities) = &model.qualities {
                spec = spec.with_qualities(qualities.iter().cloned());
            }
            if let Some(fee) = model.violation_fee {
                spec = spec.with_violation_fee(fee);
            }
            for rule in &model.prices {
                spec = spec.with_price(rule.size.as_deref(), rule.quality.as_deref(), rule.price);
            }
            let upstream = match &model.upstream_model {
                Some(upstream) => upstream.clone(),
                None if name == DEFAULT_MODEL => default_upstream(),
                None => name.clone(),
            };
            (name.clone(), spec, upstream)
        })
        .collect()
}

/// The backend: each model with `upstreams` in the config file routed over them, the
/// others served by [`default_backend`].
fn backend(
    config: &Config,
    file: &FileSettings,
    rests: Option<Arc<dyn Rests>>,
    metrics: &Metrics,
) -> Result<(Arc<dyn ImageBackend>, Upstreams), Box<dyn Error>> {
    let otherwise = default_backend(config, file)?;
    if file.models.values().all(|m| m.upstreams.is_empty()) {
        return Ok((otherwise, Upstreams::default()));
    }
    let mut backends = PerModel::new(otherwise);
    let mut shown: Vec<(String, Arc<dyn Fn() -> serde_json::Value + Send + Sync>)> = Vec::new();
    for (name, model) in &file.models {
        if model.upstreams.is_empty() {
            continue;
        }
        let upstream_name = model.upstream_model.clone().unwrap_or_else(|| name.clone());
        let mut deployments = Vec::new();
        for (i, upstream) in model.upstreams.iter().enumerate() {
            let mut builder = UpstreamBackend::builder(upstream.url.clone()).model(
                name.clone(),
                upstream
                    .model
                    .clone()
                    .unwrap_or_else(|| upstream_name.clone()),
            );
            let key = match (&upstream.key, &upstream.key_env) {
                (Some(key), _) => Some(key.clone()),
                (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                    format!("models.{name}.upstreams[{i}]: the environment variable {var} (key_env) is not set")
                })?),
                (None, None) => None,
            };
            if let Some(key) = key {
                builder = builder.api_key(key);
            }
            if let Some(secs) = upstream.timeout_secs {
                builder = builder.timeout(Duration::from_secs(secs.max(1)));
            }
            match upstream.provider.as_deref() {
                Some("azure") => {
                    let version = upstream.api_version.as_deref();
                    builder = builder.azure(version.unwrap_or(DEFAULT_AZURE_API_VERSION));
                }
                Some("gemini") => builder = builder.gemini(),
                _ => {}
            }
            builder = builder.drop_fields(upstream.drop_fields.iter().cloned());
            let backend = builder
                .build()
                .map_err(|e| format!("models.{name}.upstreams[{i}]: {e}"))?;
            let mut deployment = Deployment::new(format!("{name}#{i}"), backend)
                .weight(upstream.weight.unwrap_or(1))
                .priority(upstream.priority.unwrap_or(0))
                .cost_per_image(upstream.cost_per_image.unwrap_or(0));
            if let Some(bound) = upstream.max_in_flight {
                deployment = deployment.max_in_flight(bound);
            }
            deployments.push(deployment);
        }
        let mut cooldown = Cooldown::default();
        cooldown.failures = model.cooldown_failures.unwrap_or(cooldown.failures).max(1);
        if let Some(secs) = model.cooldown_window_secs {
            cooldown.window = Duration::from_secs(secs);
        }
        if let Some(secs) = model.cooldown_secs {
            cooldown.rest = Duration::from_secs(secs);
        }
        let mut routed = RoutedBackend::new(deployments)
            .attempts(model.attempts.unwrap_or(3))
            .retry_after_timeout(model.retry_after_timeout.unwrap_or(false))
            .cooldown(cooldown)
            .metrics(metrics.clone());
        if let Some(rests) = &rests {
            routed = routed.shared_rests(rests.clone());
        }
        println!(
            "backend: {name} routed over {} upstream deployment(s)",
            model.upstreams.len()
        );
        let routed = Arc::new(routed);
        let states = routed.clone();
        shown.push((name.clone(), Arc::new(move || states.states())));
        backends = backends.model(name.clone(), routed);
    }
    Ok((Arc::new(backends), Arc::new(shown)))
}

/// The upstream model API when one is configured, else the model-free reference backend.
fn default_backend(
    config: &Config,
    file: &FileSettings,
) -> Result<Arc<dyn ImageBackend>, Box<dyn Error>> {
    let Some(upstream) = &config.upstream else {
        let mut reference = ReferenceBackend::new()
            .latency(config.latency)
            .decode_budget(config.decode_budget)
            .max_output_pixels(config.max_output_pixels);
        if config.max_renders > 0 {
            reference = reference.max_renders(config.max_renders.try_into()?);
        }
        return Ok(Arc::new(reference));
    };
    let mut builder = UpstreamBackend::builder(upstream.url.clone());
    for (name, _, upstream_name) in models(config, file) {
        builder = builder.model(name, upstream_name);
    }
    if let Some(key) = &upstream.key {
        builder = builder.api_key(key.clone());
    }
    println!("backend: OpenAI-compatible upstream");
    Ok(Arc::new(builder.build()?))
}
