//! Every setting of the binary, declared once: `--help` prints this table, the config file
//! takes its names, and a value left unset is read from its `default` here, so neither can
//! disagree with the code.

/// One environment variable: its name, the kind of value it takes, its default as text
/// (empty: unset) and what it means.
pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// What a setting takes, declared with it: a config file's value is checked against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A non-negative integer.
    Integer,
    /// `on` or `off` (a file may write `true` or `false`).
    Switch,
    /// Text, or in a file a list of strings joined with commas.
    Text,
}

macro_rules! settings {
    ($($name:literal, $kind:ident, $default:literal, $meaning:literal;)+) => {
        /// The binary's settings, in the order `--help` prints them.
        pub const SETTINGS: &[Setting] = &[
            $(Setting { name: $name, kind: Kind::$kind, default: $default, meaning: $meaning },)+
        ];
    };
}

settings! {
    "GATEWAY_ADDR", Text, "127.0.0.1:8080",
        "listen address, host:port (a name such as localhost:8080 is resolved)";
    "GATEWAY_DATA_DIR", Text, "./gateway-data",
        "files under files/, generations.db (with the job records), ledger.db, keys.db, the demo key";
    "GATEWAY_DATABASE_URL", Text, "",
        "postgres://user:password@host:port/database: ledger, records and keys in PostgreSQL, shared by replicas; unset: SQLite in the data dir";
    "GATEWAY_API_KEYS", Text, "",
        "user:key,user:key; unset: one `demo` user whose key is kept in the data dir";
    "GATEWAY_PRICE_PER_IMAGE", Integer, "0",
        "integer price of one returned image (gpt-image-2, at most 10 per call)";
    "GATEWAY_DEMO_BALANCE", Integer, "0",
        "opening balance of every configured user, credited on the first start only";
    "GATEWAY_ADMIN_KEY", Text, "",
        "enables the admin API for this key: deposits, keys (create, list, limit, rotate, revoke), /metrics";
    "GATEWAY_HOLD_TTL_SECS", Integer, "600",
        "how long money held by a crashed process stays held";
    "GATEWAY_REFERENCE_LATENCY_MS", Integer, "0",
        "simulated model latency of the reference backend";
    "GATEWAY_RATE_LIMIT", Integer, "0",
        "requests per minute per API key; 0 is unlimited";
    "GATEWAY_MAX_IN_FLIGHT", Integer, "0",
        "requests in flight per API key; 0 is unlimited";
    "GATEWAY_MAX_RENDERS", Integer, "0",
        "reference-backend renders at once, process-wide; 0 is one per core";
    "GATEWAY_DECODE_BUDGET_BYTES", Integer, "33554432",
        "the most a decoded source may take (32 MiB)";
    "GATEWAY_MAX_OUTPUT_PIXELS", Integer, "8294400",
        "the largest output (3840 x 2160)";
    "GATEWAY_UPLOAD_MAX_FILE_BYTES", Integer, "10485760",
        "the most one file of POST /api/v1/upload may have (10 MiB); edit sources sent inline keep 25 MiB";
    "GATEWAY_QUOTA_BYTES", Integer, "200000000",
        "bytes each user may keep stored; 0 is unlimited";
    "GATEWAY_QUOTA_FILES", Integer, "10000",
        "files each user may keep stored; 0 is unlimited";
    "GATEWAY_MIN_FREE_BYTES", Integer, "67108864",
        "free space the file volume keeps; writes that would go under it are 507 (64 MiB)";
    "GATEWAY_S3_BUCKET", Text, "",
        "files in this S3 bucket, indexed in GATEWAY_DATABASE_URL (required with it), shared by replicas; unset: files in the data dir";
    "GATEWAY_S3_ENDPOINT", Text, "",
        "the S3-compatible service's URL (http://127.0.0.1:9000); unset: AWS by region";
    "GATEWAY_S3_REGION", Text, "us-east-1",
        "the bucket's region";
    "GATEWAY_S3_ACCESS_KEY_ID", Text, "",
        "the access key id; unset: AWS_ACCESS_KEY_ID";
    "GATEWAY_S3_SECRET_ACCESS_KEY", Text, "",
        "the secret access key; unset: AWS_SECRET_ACCESS_KEY";
    "GATEWAY_REDIS_URL", Text, "",
        "redis://host:port: rate and in-flight limits counted in Redis, shared by replicas (503 while unreachable); unset: in this process";
    "GATEWAY_REDIS_PREFIX", Text, "image-gateway",
        "the prefix of this gateway's keys in Redis";
    "GATEWAY_CORS_ORIGINS", Text, "",
        "browser origins allowed to call the API (https://a.example,https://b.example); unset: CORS off";
    "GATEWAY_UPSTREAM_URL", Text, "",
        "forward edits to this OpenAI-compatible API (https://api.openai.com, with or without /v1)";
    "GATEWAY_UPSTREAM_KEY", Text, "",
        "that API's key";
    "GATEWAY_UPSTREAM_MODEL", Text, "gpt-image-2",
        "the upstream model that serves gpt-image-2";
    "GATEWAY_MODERATION", Text, "",
        "prompts checked before the hold: words (GATEWAY_MODERATION_WORDS) or openai (an OpenAI-compatible /v1/moderations at GATEWAY_MODERATION_URL); unset: none";
    "GATEWAY_MODERATION_WORDS", Text, "",
        "words and phrases a prompt may not hold (comma-separated; whole words, any case)";
    "GATEWAY_MODERATION_URL", Text, "",
        "the moderation API's base URL (https://api.openai.com, with or without /v1)";
    "GATEWAY_MODERATION_KEY", Text, "",
        "that API's key";
    "GATEWAY_MODERATION_MODEL", Text, "omni-moderation-latest",
        "the moderation model asked for";
    "GATEWAY_MODERATION_IMAGES", Switch, "off",
        "on (with openai): each request's source images are checked too, after they are read and before the hold (sent as data: URLs)";
    "GATEWAY_MODERATION_FAIL_OPEN", Switch, "off",
        "on: a moderation service that fails lets requests through (logged); off: 503 moderation_unavailable";
    "GATEWAY_URL_FETCH", Switch, "on",
        "on: compose's image_urls and OpenAI's image_url may be https:// URLs, fetched under SSRF rules (public addresses only); off: refused";
    "GATEWAY_URL_FETCH_TEST_CA", Text, "",
        "tests only: a PEM root certificate to trust for fetched URLs, which also lets them reach loopback addresses by name";
    "GATEWAY_STREAM_KEEPALIVE_SECS", Integer, "15",
        "a streamed answer (stream: true) silent this long sends a keep-alive comment";
    "GATEWAY_MAX_QUEUED_JOBS", Integer, "100",
        "unfinished async jobs (Prefer: respond-async) per user; past it 429 too_many_queued_jobs";
    "GATEWAY_MAX_RUNNING_JOBS", Integer, "0",
        "jobs given to the backend at once, process-wide; the others wait queued (cancellable); 0 is no bound beyond the backend's";
    "GATEWAY_JOB_TIMEOUT_SECS", Integer, "900",
        "a job whose backend has not answered by then fails 502 upstream_error and is refunded";
    "GATEWAY_JOB_RETENTION_SECS", Integer, "86400",
        "how long an ended job's record stays readable (its images are files and follow the files' rules)";
    "GATEWAY_JOB_LEASE_SECS", Integer, "30",
        "an async job is its process's while the process renews this lease; past it (the process died) another process, or this one restarted, runs the job again under the same hold";
    "GATEWAY_WEBHOOK_SECRET", Text, "",
        "whsec_<base64 of 24-64 bytes>: async jobs may name a Webhook-Url, called signed (Standard Webhooks) when they end; unset: Webhook-Url is refused";
    "GATEWAY_WEBHOOK_ALLOW_HTTP_LOOPBACK", Switch, "off",
        "development and tests only: on (or true) also admits http://127.0.0.1:PORT/... webhook URLs";
    "GATEWAY_WEBHOOK_RETRY_BASE_MS", Integer, "5000",
        "the unit of the webhook retry schedule (5 s: retries after 5 s, 30 s, 2 min, ... for about 33 hours)";
    "GATEWAY_IDLE_TIMEOUT_SECS", Integer, "60",
        "a connection with no request in flight this long is closed (a stream or an answer being sent is in flight)";
    "GATEWAY_MIN_BODY_RATE", Integer, "1024",
        "bytes per second a request body must average once its first 10 s of waiting are over (408 below it); 0: no minimum";
    "GATEWAY_TRUSTED_PROXIES", Text, "",
        "CIDRs of reverse proxies (10.0.0.0/8,192.0.2.7) whose X-Forwarded-For / Forwarded is believed for the client address (keys' IP allow-lists) and which have no per-address connection share; unset: none, forwarded headers are ignored";
    "GATEWAY_SHUTDOWN_DELAY_SECS", Integer, "0",
        "on SIGTERM, /readyz answers 503 draining for this long before the listener closes (a balancer's time to notice)";
    "GATEWAY_METRICS_ADDR", Text, "",
        "host:port of a listener that serves GET /metrics with no key (for the scraper's network only); unset: /metrics on GATEWAY_ADDR for the admin key only";
    "GATEWAY_METRICS_USER_LABELS", Switch, "off",
        "on: also count requests per user id (image_gateway_user_requests_total{user}); one series per user";
    "RUST_LOG", Text, "info",
        "log filter: a level, or target=level pairs (image_gateway=debug,warn)";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_of(name: &str) -> &'static str {
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is a setting"))
            .default
    }

    /// The binary's defaults are the library's: where the library has a default of its own,
    /// the table says the same, so neither can drift from the other.
    #[test]
    fn the_defaults_are_the_librarys() {
        use image_gateway::backend::{DEFAULT_DECODE_BUDGET, DEFAULT_MAX_OUTPUT_PIXELS};
        use image_gateway::server::ServeOptions;
        use image_gateway::store::Quota;
        let serve = ServeOptions::default();
        let quota = Quota::default();
        let expected: [(&str, String); 13] = [
            (
                "GATEWAY_HOLD_TTL_SECS",
                image_gateway::billing::DEFAULT_HOLD_TTL
                    .as_secs()
                    .to_string(),
            ),
            (
                "GATEWAY_MAX_QUEUED_JOBS",
                image_gateway::jobs::DEFAULT_MAX_QUEUED_JOBS.to_string(),
            ),
            (
                "GATEWAY_JOB_RETENTION_SECS",
                image_gateway::jobs::DEFAULT_JOB_RETENTION
                    .as_secs()
                    .to_string(),
            ),
            (
                "GATEWAY_JOB_LEASE_SECS",
                image_gateway::jobs::DEFAULT_JOB_LEASE.as_secs().to_string(),
            ),
            (
                "GATEWAY_STREAM_KEEPALIVE_SECS",
                image_gateway::jobs::DEFAULT_KEEPALIVE.as_secs().to_string(),
            ),
            ("GATEWAY_QUOTA_BYTES", quota.bytes.unwrap_or(0).to_string()),
            ("GATEWAY_QUOTA_FILES", quota.files.unwrap_or(0).to_string()),
            (
                "GATEWAY_IDLE_TIMEOUT_SECS",
                serve.idle_timeout.as_secs().to_string(),
            ),
            ("GATEWAY_MIN_BODY_RATE", serve.min_body_rate.to_string()),
            (
                "GATEWAY_DECODE_BUDGET_BYTES",
                DEFAULT_DECODE_BUDGET.to_string(),
            ),
            (
                "GATEWAY_MAX_OUTPUT_PIXELS",
                DEFAULT_MAX_OUTPUT_PIXELS.to_string(),
            ),
            (
                "GATEWAY_UPLOAD_MAX_FILE_BYTES",
                image_gateway::files::DEFAULT_MAX_FILE_BYTES.to_string(),
            ),
            (
                "GATEWAY_UPSTREAM_MODEL",
                image_gateway::gateway::DEFAULT_MODEL.to_owned(),
            ),
        ];
        for (name, library) in expected {
            assert_eq!(default_of(name), library, "{name}");
        }
    }

    #[test]
    fn each_default_is_of_its_declared_kind() {
        for setting in SETTINGS {
            let fits = match setting.kind {
                Kind::Integer => setting.default.bytes().all(|b| b.is_ascii_digit()),
                Kind::Switch => matches!(setting.default, "on" | "off"),
                Kind::Text => true,
            };
            assert!(
                fits && (setting.kind == Kind::Text || !setting.default.is_empty()),
                "{}",
                setting.name
            );
        }
    }
}
