//! The binary's settings read and checked: from the environment over the config file, each
//! left unset taking its default from [`SETTINGS`].

use std::error::Error;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image_gateway::auth::Cidr;
use image_gateway::fetch::FetchConfig;
use image_gateway::gateway::JobLimits;
use image_gateway::jobs::WebhookConfig;
use image_gateway::ratelimit::RateLimitLayer;
use image_gateway::store::{Quota, S3Config};

use super::file::{key_of, FileSettings};
pub use super::table::SETTINGS;

/// The settings, read and checked.
pub struct Config {
    pub addr: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub redis: Option<(String, String)>,
    pub s3: Option<S3Config>,
    pub api_keys: Option<String>,
    pub price_per_image: u64,
    pub demo_balance: u64,
    pub admin_key: Option<String>,
    pub hold_ttl: Duration,
    pub latency: Duration,
    pub max_renders: u64,
    pub decode_budget: u64,
    pub max_output_pixels: u64,
    pub quota: Quota,
    pub upload_max_file: u64,
    pub min_free_bytes: u64,
    pub cors_origins: Vec<String>,
    pub upstream: Option<Upstream>,
    pub moderation: Option<ModerationSettings>,
    pub url_fetch: Option<FetchConfig>,
    pub stream_keepalive: Duration,
    pub shutdown_delay: Duration,
    pub idle_timeout: Duration,
    pub min_body_rate: u64,
    pub trusted_proxies: Vec<Cidr>,
    pub job_limits: JobLimits,
    pub webhooks: Option<WebhookConfig>,
    pub metrics_addr: Option<String>,
    pub metrics_user_labels: bool,
    pub rate_limit: RateLimitLayer,
    pub log_filter: String,
}

/// How prompts are checked before the hold.
pub enum ModerationSettings {
    Words(Vec<String>, bool),
    OpenAi {
        url: String,
        key: Option<String>,
        model: String,
        images: bool,
        fail_open: bool,
    },
}

/// Where edits go when a model API is configured.
pub struct Upstream {
    pub url: String,
    pub key: Option<String>,
    pub model: String,
}

impl Config {
    /// Reads every setting from `lookup` (the environment, in the binary).
    pub fn read(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Box<dyn Error>> {
        let text = |name: &str| -> Option<String> {
            lookup(name)
                .filter(|v| !v.is_empty())
                .or_else(|| Some(default_of(name).to_owned()).filter(|d| !d.is_empty()))
        };
        let integer = |name: &str| -> Result<u64, Box<dyn Error>> {
            text(name)
                .unwrap_or_default()
                .parse()
                .map_err(|_| format!("{name} must be a non-negative integer").into())
        };
        let mut rate_limit = RateLimitLayer::new();
        if let Some(rpm) = NonZeroU32::new(
            integer("GATEWAY_RATE_LIMIT")?
                .try_into()
                .map_err(|_| "GATEWAY_RATE_LIMIT is too large")?,
        ) {
            rate_limit = rate_limit.per_minute(rpm);
        }
        match integer("GATEWAY_MAX_IN_FLIGHT")? {
            0 => {}
            max => {
                let max = max
                    .try_into()
                    .map_err(|_| "GATEWAY_MAX_IN_FLIGHT is too large")?;
                rate_limit = rate_limit.max_in_flight(max);
            }
        }
        Ok(Config {
            addr: text("GATEWAY_ADDR").unwrap_or_default(),
            data_dir: text("GATEWAY_DATA_DIR").unwrap_or_default().into(),
            database_url: text("GATEWAY_DATABASE_URL"),
            s3: text("GATEWAY_S3_BUCKET").map(|bucket| {
                let mut s3 = S3Config::new(bucket, text("GATEWAY_S3_REGION").unwrap_or_default());
                s3.endpoint = text("GATEWAY_S3_ENDPOINT");
                s3.access_key_id = text("GATEWAY_S3_ACCESS_KEY_ID");
                s3.secret_access_key = text("GATEWAY_S3_SECRET_ACCESS_KEY");
                s3
            }),
            redis: text("GATEWAY_REDIS_URL")
                .map(|url| (url, text("GATEWAY_REDIS_PREFIX").unwrap_or_default())),
            api_keys: text("GATEWAY_API_KEYS"),
            price_per_image: integer("GATEWAY_PRICE_PER_IMAGE")?,
            demo_balance: integer("GATEWAY_DEMO_BALANCE")?,
            admin_key: text("GATEWAY_ADMIN_KEY"),
            hold_ttl: Duration::from_secs(integer("GATEWAY_HOLD_TTL_SECS")?),
            latency: Duration::from_millis(integer("GATEWAY_REFERENCE_LATENCY_MS")?),
            max_renders: integer("GATEWAY_MAX_RENDERS")?,
            decode_budget: integer("GATEWAY_DECODE_BUDGET_BYTES")?,
            max_output_pixels: integer("GATEWAY_MAX_OUTPUT_PIXELS")?,
            quota: Quota::new(
                integer("GATEWAY_QUOTA_BYTES")?,
                integer("GATEWAY_QUOTA_FILES")?,
            ),
            upload_max_file: integer("GATEWAY_UPLOAD_MAX_FILE_BYTES")?,
            min_free_bytes: integer("GATEWAY_MIN_FREE_BYTES")?,
            cors_origins: text("GATEWAY_CORS_ORIGINS")
                .map(|list| cors_origins(&list))
                .transpose()?
                .unwrap_or_default(),
            upstream: text("GATEWAY_UPSTREAM_URL").map(|url| Upstream {
                url,
                key: text("GATEWAY_UPSTREAM_KEY"),
                model: text("GATEWAY_UPSTREAM_MODEL").unwrap_or_default(),
            }),
            moderation: {
                let fail_open = switch("GATEWAY_MODERATION_FAIL_OPEN", text)?;
                match text("GATEWAY_MODERATION").as_deref() {
                    None | Some("none") => None,
                    Some("words") => {
                        let words = text("GATEWAY_MODERATION_WORDS").unwrap_or_default();
                        let words: Vec<String> = words
                            .split(',')
                            .map(|w| w.trim().to_owned())
                            .filter(|w| !w.is_empty())
                            .collect();
                        if words.is_empty() {
                            return Err(
                                "GATEWAY_MODERATION=words needs GATEWAY_MODERATION_WORDS".into()
                            );
                        }
                        Some(ModerationSettings::Words(words, fail_open))
                    }
                    Some("openai") => Some(ModerationSettings::OpenAi {
                        url: text("GATEWAY_MODERATION_URL")
                            .ok_or("GATEWAY_MODERATION=openai needs GATEWAY_MODERATION_URL")?,
                        key: text("GATEWAY_MODERATION_KEY"),
                        model: text("GATEWAY_MODERATION_MODEL").unwrap_or_default(),
                        images: switch("GATEWAY_MODERATION_IMAGES", text)?,
                        fail_open,
                    }),
                    Some(other) => {
                        return Err(format!(
                            "GATEWAY_MODERATION must be none, words or openai, not {other}"
                        )
                        .into())
                    }
                }
            },
            url_fetch: url_fetch(
                switch("GATEWAY_URL_FETCH", text)?,
                text("GATEWAY_URL_FETCH_TEST_CA"),
            )?,
            stream_keepalive: Duration::from_secs(integer("GATEWAY_STREAM_KEEPALIVE_SECS")?.max(1)),
            shutdown_delay: Duration::from_secs(integer("GATEWAY_SHUTDOWN_DELAY_SECS")?),
            idle_timeout: Duration::from_secs(integer("GATEWAY_IDLE_TIMEOUT_SECS")?.max(1)),
            min_body_rate: integer("GATEWAY_MIN_BODY_RATE")?,
            trusted_proxies: text("GATEWAY_TRUSTED_PROXIES")
                .map(|list| {
                    list.split(',')
                        .map(|net| {
                            Cidr::parse(net.trim()).ok_or_else(|| {
                                format!("GATEWAY_TRUSTED_PROXIES: `{}` is not a CIDR", net.trim())
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
            webhooks: match text("GATEWAY_WEBHOOK_SECRET") {
                None => None,
                Some(secret) => {
                    let loopback = match text("GATEWAY_WEBHOOK_ALLOW_HTTP_LOOPBACK").as_deref() {
                        Some("on" | "true") => true,
                        Some("off" | "false") | None => false,
                        Some(_) => {
                            return Err(
                                "GATEWAY_WEBHOOK_ALLOW_HTTP_LOOPBACK must be on or off".into()
                            )
                        }
                    };
                    let base = integer("GATEWAY_WEBHOOK_RETRY_BASE_MS")?;
                    Some(
                        WebhookConfig::new(&secret)
                            .map_err(|e| format!("GATEWAY_WEBHOOK_SECRET: {e}"))?
                            .allow_http_loopback(loopback)
                            .base_delay(Duration::from_millis(base)),
                    )
                }
            },
            job_limits: {
                let mut limits = JobLimits::default();
                limits.max_queued = integer("GATEWAY_MAX_QUEUED_JOBS")?;
                limits.max_running = match integer("GATEWAY_MAX_RUNNING_JOBS")? {
                    0 => None,
                    n => Some(
                        usize::try_from(n).map_err(|_| "GATEWAY_MAX_RUNNING_JOBS is too large")?,
                    ),
                };
                limits.timeout = Some(Duration::from_secs(
                    integer("GATEWAY_JOB_TIMEOUT_SECS")?.max(1),
                ));
                limits.retention = Duration::from_secs(integer("GATEWAY_JOB_RETENTION_SECS")?);
                limits.lease = Duration::from_secs(integer("GATEWAY_JOB_LEASE_SECS")?.max(1));
                limits
            },
            metrics_addr: text("GATEWAY_METRICS_ADDR"),
            metrics_user_labels: switch("GATEWAY_METRICS_USER_LABELS", text)?,
            rate_limit,
            log_filter: text("RUST_LOG").unwrap_or_default(),
        })
    }
}

/// An `on`/`off` setting.
fn switch(name: &str, text: impl Fn(&str) -> Option<String>) -> Result<bool, Box<dyn Error>> {
    match text(name).as_deref() {
        Some("on") => Ok(true),
        Some("off") | None => Ok(false),
        Some(_) => Err(format!("{name} must be on or off").into()),
    }
}

/// The URL fetcher's settings: `None` when fetching is off.
fn url_fetch(on: bool, test_ca: Option<String>) -> Result<Option<FetchConfig>, Box<dyn Error>> {
    if !on {
        return Ok(None);
    }
    let mut config = FetchConfig::default();
    if let Some(path) = test_ca {
        let pem = std::fs::read(&path)
            .map_err(|e| format!("GATEWAY_URL_FETCH_TEST_CA: cannot read {path}: {e}"))?;
        config.extra_root = Some(pem);
        config.allow_loopback = true;
    }
    Ok(Some(config))
}

fn default_of(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .map_or("", |s| s.default)
}

/// `scheme://host[:port]` origins, exactly as browsers send them in `Origin`. A `*` or a
/// path is refused: the allow-list is explicit, and an origin never has a path.
fn cors_origins(list: &str) -> Result<Vec<String>, Box<dyn Error>> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', '*', ' ']) => {
                    Ok(origin.to_owned())
                }
                _ => Err(format!(
                    "GATEWAY_CORS_ORIGINS: `{origin}` is not an origin (scheme://host[:port])"
                )
                .into()),
            }
        })
        .collect()
}

/// The settings from the environment over the config file at `path` (if any), checked. A
/// bad value the file gave is reported at its line.
pub fn load(path: Option<&Path>) -> Result<(Config, FileSettings), Box<dyn Error>> {
    let file = match path {
        Some(path) => FileSettings::load(path)?,
        None => FileSettings::default(),
    };
    let config = Config::read(|name| env(name).or_else(|| file.get(name))).map_err(|error| {
        let message = error.to_string();
        let from_file = SETTINGS
            .iter()
            .filter(|s| message.starts_with(s.name) && env(s.name).is_none())
            .find_map(|s| Some((file.location(s.name)?, key_of(s.name))));
        match from_file {
            Some((location, key)) => format!("{location}: `{key}`: {message}").into(),
            None => error,
        }
    })?;
    Ok((config, file))
}

/// A setting from the environment; an empty variable is unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `--print-config`: the effective settings, secrets masked, each with its source.
pub fn print(file: &FileSettings) -> String {
    let lookup = |name: &str| match env(name) {
        Some(value) => Some((value, "environment".to_owned())),
        None => Some((file.get(name)?, file.location(name)?)),
    };
    super::file::print(lookup, file)
}

/// The `--help` text: usage, then every setting with its default.
pub fn help() -> String {
    let mut out = format!(
        "image-gateway {}\n\
         A paid, OpenAI-compatible image API on embedded defaults (SQLite, local files).\n\n\
         Usage: image-gateway [--config gateway.toml] [--print-config] [--help | --version]\n\n\
         Settings (environment variables, all optional; in the config file each is the name in\n\
         lower case without GATEWAY_, RUST_LOG is `log`, and the environment wins):\n",
        env!("CARGO_PKG_VERSION")
    );
    for setting in SETTINGS {
        let default = match setting.default {
            "" => "unset".to_owned(),
            value => value.to_owned(),
        };
        out.push_str(&format!(
            "  {:<30} default: {default}\n      {}\n",
            setting.name, setting.meaning
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_settings_take_the_declared_defaults() {
        let config = Config::read(|_| None).unwrap();
        assert_eq!(config.addr, "127.0.0.1:8080");
        assert_eq!(config.hold_ttl, Duration::from_secs(600));
        assert_eq!(config.min_free_bytes, 64 << 20);
        assert!(config.api_keys.is_none() && config.cors_origins.is_empty());
        assert!(config.upstream.is_none());
    }

    #[test]
    fn origins_are_checked() {
        let list = cors_origins("https://a.example, http://localhost:3000").unwrap();
        assert_eq!(list, ["https://a.example", "http://localhost:3000"]);
        for bad in ["*", "a.example", "https://a.example/app", "https://"] {
            assert!(cors_origins(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn help_names_every_setting() {
        let help = help();
        assert!(SETTINGS.iter().all(|s| help.contains(s.name)));
    }
}
