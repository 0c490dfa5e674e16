//! Every setting of the binary, declared once: `--help` prints this table, the config file
//! takes its names, and a value left unset is read from its `default` here, so neither can
//! disagree with the code.

/// One environment variable: its name, its default as text (empty: unset) and what it means.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

macro_rules! settings {
    ($($name:literal, $default:literal, $meaning:literal;)+) => {
        /// The binary's settings, in the order `--help` prints them.
        pub const SETTINGS: &[Setting] = &[
            $(Setting { name: $name, default: $default, meaning: $meaning },)+
        ];
    };
}

settings! {
    "GATEWAY_ADDR", "127.0.0.1:8080",
        "listen address, host:port (a name such as localhost:8080 is resolved)";
    "GATEWAY_DATA_DIR", "./gateway-data",
        "files under files/, generations.db (with the job records), ledger.db, keys.db, the demo key";
    "GATEWAY_DATABASE_URL", "",
        "postgres://user:password@host:port/database: ledger, records and keys in PostgreSQL, shared by replicas; unset: SQLite in the data dir";
    "GATEWAY_API_KEYS", "",
        "user:key,user:key; unset: one `demo` user whose key is kept in the data dir";
    "GATEWAY_PRICE_PER_IMAGE", "0",
        "integer price of one returned image (gpt-image-2, at most 10 per call)";
    "GATEWAY_DEMO_BALANCE", "0",
        "opening balance of every configured user, credited on the first start only";
    "GATEWAY_ADMIN_KEY", "",
        "enables the admin API for this key: deposits, keys (create, list, limit, rotate, revoke), /metrics";
    "GATEWAY_HOLD_TTL_SECS", "600",
        "how long money held by a crashed process stays held";
    "GATEWAY_REFERENCE_LATENCY_MS", "0",
        "simulated model latency of the reference backend";
    "GATEWAY_RATE_LIMIT", "0",
        "requests per minute per API key; 0 is unlimited";
    "GATEWAY_MAX_IN_FLIGHT", "0",
        "requests in flight per API key; 0 is unlimited";
    "GATEWAY_MAX_RENDERS", "0",
        "reference-backend renders at once, process-wide; 0 is one per core";
    "GATEWAY_DECODE_BUDGET_BYTES", "33554432",
        "the most a decoded source may take (32 MiB)";
    "GATEWAY_MAX_OUTPUT_PIXELS", "8294400",
        "the largest output (3840 x 2160)";
    "GATEWAY_UPLOAD_MAX_FILE_BYTES", "10485760",
        "the most one file of POST /api/v1/upload may have (10 MiB); edit sources sent inline keep 25 MiB";
    "GATEWAY_QUOTA_BYTES", "200000000",
        "bytes each user may keep stored; 0 is unlimited";
    "GATEWAY_QUOTA_FILES", "10000",
        "files each user may keep stored; 0 is unlimited";
    "GATEWAY_MIN_FREE_BYTES", "67108864",
        "free space the file volume keeps; writes that would go under it are 507 (64 MiB)";
    "GATEWAY_S3_BUCKET", "",
        "files in this S3 bucket, indexed in GATEWAY_DATABASE_URL (required with it), shared by replicas; unset: files in the data dir";
    "GATEWAY_S3_ENDPOINT", "",
        "the S3-compatible service's URL (http://127.0.0.1:9000); unset: AWS by region";
    "GATEWAY_S3_REGION", "us-east-1",
        "the bucket's region";
    "GATEWAY_S3_ACCESS_KEY_ID", "",
        "the access key id; unset: AWS_ACCESS_KEY_ID";
    "GATEWAY_S3_SECRET_ACCESS_KEY", "",
        "the secret access key; unset: AWS_SECRET_ACCESS_KEY";
    "GATEWAY_REDIS_URL", "",
        "redis://host:port: rate and in-flight limits counted in Redis, shared by replicas (503 while unreachable); unset: in this process";
    "GATEWAY_REDIS_PREFIX", "image-gateway",
        "the prefix of this gateway's keys in Redis";
    "GATEWAY_CORS_ORIGINS", "",
        "browser origins allowed to call the API (https://a.example,https://b.example); unset: CORS off";
    "GATEWAY_UPSTREAM_URL", "",
        "forward edits to this OpenAI-compatible API (https://api.openai.com, with or without /v1)";
    "GATEWAY_UPSTREAM_KEY", "",
        "that API's key";
    "GATEWAY_UPSTREAM_MODEL", "gpt-image-2",
        "the upstream model that serves gpt-image-2";
    "GATEWAY_URL_FETCH", "on",
        "on: compose's image_urls and OpenAI's image_url may be https:// URLs, fetched under SSRF rules (public addresses only); off: refused";
    "GATEWAY_URL_FETCH_TEST_CA", "",
        "tests only: a PEM root certificate to trust for fetched URLs, which also lets them reach loopback addresses by name";
    "GATEWAY_STREAM_KEEPALIVE_SECS", "15",
        "a streamed answer (stream: true) silent this long sends a keep-alive comment";
    "GATEWAY_MAX_QUEUED_JOBS", "100",
        "unfinished async jobs (Prefer: respond-async) per user; past it 429 too_many_queued_jobs";
    "GATEWAY_MAX_RUNNING_JOBS", "0",
        "jobs given to the backend at once, process-wide; the others wait queued (cancellable); 0 is no bound beyond the backend's";
    "GATEWAY_JOB_TIMEOUT_SECS", "900",
        "a job whose backend has not answered by then fails 502 upstream_error and is refunded";
    "GATEWAY_JOB_RETENTION_SECS", "86400",
        "how long an ended job's record stays readable (its images are files and follow the files' rules)";
    "GATEWAY_WEBHOOK_SECRET", "",
        "whsec_<base64 of 24-64 bytes>: async jobs may name a Webhook-Url, called signed (Standard Webhooks) when they end; unset: Webhook-Url is refused";
    "GATEWAY_WEBHOOK_ALLOW_HTTP_LOOPBACK", "off",
        "development and tests only: on (or true) also admits http://127.0.0.1:PORT/... webhook URLs";
    "GATEWAY_WEBHOOK_RETRY_BASE_MS", "5000",
        "the unit of the webhook retry schedule (5 s: retries after 5 s, 30 s, 2 min, ... for about 33 hours)";
    "GATEWAY_IDLE_TIMEOUT_SECS", "60",
        "a connection with no request in flight this long is closed (a stream or an answer being sent is in flight)";
    "GATEWAY_MIN_BODY_RATE", "1024",
        "bytes per second a request body must average once its first 10 s of waiting are over (408 below it); 0: no minimum";
    "GATEWAY_TRUSTED_PROXIES", "",
        "CIDRs of reverse proxies (10.0.0.0/8,192.0.2.7) whose X-Forwarded-For / Forwarded is believed for the client address (keys' IP allow-lists) and which have no per-address connection share; unset: none, forwarded headers are ignored";
    "GATEWAY_SHUTDOWN_DELAY_SECS", "0",
        "on SIGTERM, /readyz answers 503 draining for this long before the listener closes (a balancer's time to notice)";
    "GATEWAY_METRICS_ADDR", "",
        "host:port of a listener that serves GET /metrics with no key (for the scraper's network only); unset: /metrics on GATEWAY_ADDR for the admin key only";
    "GATEWAY_METRICS_USER_LABELS", "off",
        "on: also count requests per user id (image_gateway_user_requests_total{user}); one series per user";
    "RUST_LOG", "info",
        "log filter: a level, or target=level pairs (image_gateway=debug,warn)";
}
