//! The one error type of the gateway and the one place it is rendered.
//!
//! Every row of the spec's error table is a [`GatewayError`] variant that knows its HTTP
//! status, its `code`, its OpenAI error `type` and the `param` it blames. Layers never hand an
//! error to hyper (that would close the connection without an answer): they render a
//! `GatewayError` into the OpenAI envelope
//!
//! ```json
//! {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}
//! ```
//!
//! so the official SDKs raise the exception class that matches the status (`BadRequestError`,
//! `AuthenticationError`, `NotFoundError`, ...). Messages are for people; only the status and
//! `code` are a contract. No message ever contains an API key or a stored file's contents.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Every failure a client can be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatewayError {
    /// 400 `invalid_request`: a field is missing, malformed or out of range.
    InvalidRequest {
        /// What is wrong, in words.
        message: String,
        /// The request field at fault, when there is one.
        param: Option<&'static str>,
    },
    /// 400 `invalid_image_key`: malformed, traversal, or not the caller's. The message is the
    /// same in every case so it never tells whether a file exists.
    InvalidImageKey,
    /// 400 `invalid_generation_id`: not a UUID.
    InvalidGenerationId,
    /// 400 `IMAGE_TYPE_UNSUPPORTED`: the bytes are not JPEG, PNG, GIF or WebP.
    ImageTypeUnsupported {
        /// The request field that carried the file.
        param: &'static str,
    },
    /// 400 `IMAGE_TOO_LARGE`: one image over the per-image limit.
    ImageTooLarge {
        /// The limit in bytes.
        limit: u64,
        /// The request field that carried the file.
        param: &'static str,
    },
    /// 400 `content_policy_violation`: the prompt hit moderation.
    ContentPolicyViolation {
        /// The reason given by the backend.
        message: String,
    },
    /// 401 `invalid_api_key`: missing, malformed or unknown key.
    InvalidApiKey,
    /// 402 `insufficient_balance`.
    InsufficientBalance {
        /// What the request holds: `n x price`.
        needed: u64,
        /// What the account has available.
        available: i64,
    },
    /// 402 `OUTSTANDING_DEBT`: the account balance is negative.
    OutstandingDebt,
    /// 403 `MODEL_ACCESS_DENIED`: the key's model allow-list does not name this model.
    ModelAccessDenied {
        /// The model asked for.
        model: String,
    },
    /// 403 `ip_not_allowed`: the key's IP allow-list does not cover the caller's address.
    IpNotAllowed,
    /// 404 `model_not_found`.
    ModelNotFound {
        /// The model the client asked for (a client-chosen name, never a secret).
        model: String,
    },
    /// 404 `generation_not_found`: unknown, or another caller's.
    GenerationNotFound,
    /// 404 `IMAGE_NOT_FOUND`: the caller's key is well formed but its file is gone.
    ImageNotFound,
    /// 409 `generation_not_ready`: the generation's bytes are still being stored.
    GenerationNotReady {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 409 `idempotency_key_in_use`: a request with this `Idempotency-Key` is still running.
    IdempotencyKeyInUse {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 409 `idempotency_key_reused`: the `Idempotency-Key` was used for a different request.
    IdempotencyKeyReused,
    /// 408 `request_timeout`: the body did not arrive, or the request did not finish, in time.
    RequestTimeout,
    /// 413 `request_too_large`: the whole body is over the limit.
    PayloadTooLarge,
    /// 429 `rate_limit_exceeded`.
    RateLimitExceeded {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 429 `daily_limit_exceeded`: the key's daily spend limit, with what its open holds and
    /// today's charges already take, leaves too little for this request's hold.
    DailyLimitExceeded {
        /// Sent as `Retry-After`: the time to the next UTC day.
        retry_after: Duration,
    },
    /// 404 `job_not_found`: no such job, or another caller's.
    JobNotFound,
    /// 409 `job_not_cancellable`: the job's backend has begun, or the job has ended.
    JobNotCancellable,
    /// 429 `too_many_queued_jobs`: the caller has as many unfinished async jobs as allowed.
    TooManyQueuedJobs {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 502 `upstream_error`: the image backend failed. The message is generic on purpose.
    Upstream,
    /// 503 `upstream_unavailable`: no deployment of the model can take a job now (each is
    /// at its bound or resting); nothing was run or charged.
    UpstreamUnavailable {
        /// When to try again.
        retry_after: Duration,
    },
    /// 404 `not_found`: no such route.
    RouteNotFound,
    /// 404 `account_not_found`: an admin deposit names a user that holds no key.
    AccountNotFound,
    /// 404 `key_not_found`: the admin API names a key that does not exist or has ended.
    KeyNotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 413 `storage_quota_exceeded`: storing this would take the caller over its storage
    /// quota (bytes or files).
    StorageQuotaExceeded {
        /// What is used, what was to be added, and the quota.
        message: String,
    },
    /// 507 `insufficient_storage`: the file volume is under its free-space floor.
    InsufficientStorage,
    /// 400 `invalid_request`: the client broke off its own request body (a reset stream, a
    /// closed connection). Hardly anyone reads it; the answer carries [`ClientAborted`] so
    /// it is logged quietly rather than once per request.
    BodyCutOff,
    /// 500 `internal_error`: a fault of the gateway itself (storage, ledger). What failed is
    /// in the [`Fault`], for the operator's log; the answer never says.
    Internal {
        /// What failed.
        fault: Fault,
    },
    /// 409 `job_taken_over`: a run of an async job found its hold ended by another run of
    /// the same job (a process that took the job over while this one still ran); that run's
    /// outcome is the job's. Never a client's answer: the run that gets it writes nothing.
    JobTakenOver,
    /// 503 `limits_unavailable`: the shared store of rate limits (Redis) cannot be reached;
    /// nothing was run or charged.
    LimitsUnavailable,
    /// 503 `moderation_unavailable`: the moderation service failed and the gateway fails
    /// closed; nothing was held or run.
    ModerationUnavailable {
        /// When to try again.
        retry_after: Duration,
    },
}

/// What failed behind a `500 internal_error`, in words for the operator's log.
///
/// Conversions into [`GatewayError`] (a ledger's or a store's failure through `?`) do not
/// log: the error may yet be handled. A fault is logged where it is rendered (an answer, a
/// job's record, a stream's last frame), and once only: its clones share one flag, so a job
/// whose failure is both recorded and streamed logs one line.
#[derive(Clone)]
pub struct Fault(Arc<FaultInner>);

struct FaultInner {
    cause: Cow<'static, str>,
    reported: AtomicBool,
}

impl Fault {
    /// A fault described by `cause`. Name what failed; the text never reaches a client.
    pub fn new(cause: impl Into<Cow<'static, str>>) -> Fault {
        Fault(Arc::new(FaultInner {
            cause: cause.into(),
            reported: AtomicBool::new(false),
        }))
    }

    /// What failed.
    pub fn cause(&self) -> &str {
        &self.0.cause
    }

    fn report(&self) {
        if !self.0.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(cause = %self.cause(), "internal error");
        }
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fault").field(&self.cause()).finish()
    }
}

impl PartialEq for Fault {
    fn eq(&self, other: &Fault) -> bool {
        self.cause() == other.cause()
    }
}

impl Eq for Fault {}

/// The `code` of an error answer, kept in the response's extensions so access logs can say
/// why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// Marks an answer to a request whose client broke off its body. Access logs count such
/// answers per connection instead of logging each one, so a client resetting thousands of
/// streams (HTTP/2 rapid reset) costs the operator one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAborted;

impl GatewayError {
    /// Shorthand for [`GatewayError::InvalidRequest`].
    pub fn invalid_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    /// Shorthand for [`GatewayError::Internal`] with a [`Fault`] of `cause`.
    pub fn internal(cause: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::Internal {
            fault: Fault::new(cause),
        }
    }

    /// Logs the fault behind an internal error, the first time any clone of it is rendered.
    /// Called directly where such an error may never be rendered (a panic in work whose
    /// client has gone).
    pub(crate) fn report(&self) {
        if let GatewayError::Internal { fault } = self {
            fault.report();
        }
    }

    /// This error's row of the table: every field of its answer, declared in one place.
    ///
    /// Read it like the spec's error table: status, `code`, OpenAI error `type`, the `param`
    /// blamed, the message. Only the status and `code` are a contract with clients.
    #[rustfmt::skip]
    fn row(&self) -> Row {
        use GatewayError::*;
        use Kind::*;
        match self {
            InvalidRequest { message, param } => Row::new(400, "invalid_request", Request, *param, message.clone()),
            BodyCutOff => Row::new(400, "invalid_request", Request, None, "the request body could not be read"),
            InvalidImageKey => Row::new(400, "invalid_image_key", Request, Some("image_key"), "image_key is malformed or does not belong to the caller; use a key returned by the upload endpoint"),
            InvalidGenerationId => Row::new(400, "invalid_generation_id", Request, Some("generation_id"), "generation_id is not a valid UUID"),
            ImageTypeUnsupported { param } => Row::new(400, "IMAGE_TYPE_UNSUPPORTED", Request, Some(param), "source image type is not supported; send JPEG, PNG, GIF or WebP"),
            ImageTooLarge { limit, param } => Row::new(400, "IMAGE_TOO_LARGE", Request, Some(param), format!("source image exceeds the limit of {limit} bytes")),
            ContentPolicyViolation { message } => Row::new(400, "content_policy_violation", Request, Some("prompt"), format!("the prompt was rejected by content moderation: {message}")),
            InvalidApiKey => Row::new(401, "invalid_api_key", Authentication, None, "invalid API key; send it as `Authorization: Bearer <key>` or `x-api-key: <key>`"),
            InsufficientBalance { needed, available } => Row::new(402, "insufficient_balance", Billing, None, format!("insufficient balance for this request: it needs {needed} (n x the price per image), {available} is available")),
            OutstandingDebt => Row::new(402, "OUTSTANDING_DEBT", Billing, None, "the account has outstanding unpaid charges"),
            ModelAccessDenied { model } => Row::new(403, "MODEL_ACCESS_DENIED", Permission, Some("model"), format!("this API key may not use the model `{model}`")),
            IpNotAllowed => Row::new(403, "ip_not_allowed", Permission, None, "this API key may not be used from this address"),
            ModelNotFound { model } => Row::new(404, "model_not_found", Request, Some("model"), format!("the model `{model}` does not exist")),
            GenerationNotFound => Row::new(404, "generation_not_found", Request, Some("generation_id"), "generation not found"),
            ImageNotFound => Row::new(404, "IMAGE_NOT_FOUND", Request, Some("image_key"), "the file behind image_key no longer exists"),
            JobNotFound => Row::new(404, "job_not_found", Request, Some("job_id"), "job not found"),
            RouteNotFound => Row::new(404, "not_found", Request, None, "no such endpoint"),
            AccountNotFound => Row::new(404, "account_not_found", Request, Some("user_id"), "no user with this id holds an API key"),
            KeyNotFound => Row::new(404, "key_not_found", Request, Some("key_id"), "no live API key has this id"),
            MethodNotAllowed => Row::new(405, "method_not_allowed", Request, None, "method not allowed on this endpoint"),
            RequestTimeout => Row::new(408, "request_timeout", Request, None, "the request took too long; nothing was charged"),
            GenerationNotReady { retry_after } => Row::new(409, "generation_not_ready", Request, Some("generation_id"), "the generation is still being stored; retry shortly").retry_after(*retry_after),
            IdempotencyKeyInUse { retry_after } => Row::new(409, "idempotency_key_in_use", Request, None, "a request with this Idempotency-Key is still running; retry shortly").retry_after(*retry_after),
            IdempotencyKeyReused => Row::new(409, "idempotency_key_reused", Request, None, "this Idempotency-Key was already used for a different request; use a new key for a new request"),
            JobTakenOver => Row::new(409, "job_taken_over", Server, Some("job_id"), "another run of this job ended it; read the job again"),
            JobNotCancellable => Row::new(409, "job_not_cancellable", Request, Some("job_id"), "the job has begun or ended; only a queued job can be cancelled"),
            PayloadTooLarge => Row::new(413, "request_too_large", Request, None, "the request body exceeds the size limit"),
            StorageQuotaExceeded { message } => Row::new(413, "storage_quota_exceeded", Request, None, message.clone()),
            RateLimitExceeded { retry_after } => Row::new(429, "rate_limit_exceeded", RateLimit, None, "rate limit exceeded; retry later").retry_after(*retry_after),
            DailyLimitExceeded { retry_after } => Row::new(429, "daily_limit_exceeded", RateLimit, None, "this API key's daily spend limit is reached (open holds count); it resets at 00:00 UTC").retry_after(*retry_after),
            TooManyQueuedJobs { retry_after } => Row::new(429, "too_many_queued_jobs", RateLimit, None, "too many unfinished async jobs; wait for one to end").retry_after(*retry_after),
            Internal { .. } => Row::new(500, "internal_error", Server, None, "internal error; nothing was charged"),
            Upstream => Row::new(502, "upstream_error", Server, None, "the image service failed; the hold was released"),
            UpstreamUnavailable { retry_after } => Row::new(503, "upstream_unavailable", Server, None, "no upstream of this model can take the job now; nothing was charged; retry shortly").retry_after(*retry_after),
            ModerationUnavailable { retry_after } => Row::new(503, "moderation_unavailable", Server, None, "the gateway cannot check prompts right now; nothing was held or run; retry shortly").retry_after(*retry_after),
            LimitsUnavailable => Row::new(503, "limits_unavailable", Server, None, "the gateway cannot check rate limits right now; nothing was run or charged; retry shortly").retry_after(Duration::from_secs(1)),
            InsufficientStorage => Row::new(507, "insufficient_storage", Server, None, "the gateway's file storage is full; nothing was stored or charged"),
        }
    }

    /// The HTTP status the spec's table gives this error.
    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    /// The `code` field of the envelope, exactly as the spec's table spells it.
    pub fn code(&self) -> &'static str {
        self.row().code
    }

    /// The OpenAI error `type`, which groups codes the way the OpenAI API does.
    pub fn error_type(&self) -> &'static str {
        self.row().kind.as_str()
    }

    /// The request field the error blames, if any.
    pub fn param(&self) -> Option<&'static str> {
        self.row().param
    }

    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Bytes {
        self.report();
        self.row().to_json()
    }

    /// Renders the error as a complete HTTP response: status, envelope, and `Retry-After`
    /// where the error has one.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        self.report();
        let row = self.row();
        let mut response = crate::body::json(row.status, row.to_json());
        let headers = response.headers_mut();
        if let Some(after) = row.retry_after {
            // Whole seconds, rounded up so a client never retries too early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, GatewayError::BodyCutOff) {
            response.extensions_mut().insert(ClientAborted);
        }
        response.extensions_mut().insert(ErrorCode(row.code));
        tracing::debug!(status = %row.status, code = row.code, "request rejected");
        response
    }
}

/// The answer's message; an internal error's names its fault too, for the logs that show
/// it (a client is answered from the row, never from this).
impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Internal { fault } => write!(f, "internal error: {}", fault.cause()),
            other => f.write_str(&other.row().message),
        }
    }
}

/// The OpenAI error `type`s the table uses.
#[derive(Clone, Copy)]
enum Kind {
    Request,
    Authentication,
    Billing,
    Permission,
    RateLimit,
    Server,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "invalid_request_error",
            Kind::Authentication => "authentication_error",
            Kind::Billing => "billing_error",
            Kind::Permission => "permission_error",
            Kind::RateLimit => "rate_limit_error",
            Kind::Server => "server_error",
        }
    }
}

/// What an answer says about one error: a row of the table.
struct Row {
    status: StatusCode,
    code: &'static str,
    kind: Kind,
    param: Option<&'static str>,
    message: Cow<'static, str>,
    /// Sent as `Retry-After`, for the errors a client should simply retry.
    retry_after: Option<Duration>,
}

impl Row {
    fn new(
        status: u16,
        code: &'static str,
        kind: Kind,
        param: Option<&'static str>,
        message: impl Into<Cow<'static, str>>,
    ) -> Row {
        Row {
            // Every status in the table is a valid code; 500 is the answer if one were not.
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            kind,
            param,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, after: Duration) -> Row {
        self.retry_after = Some(after);
        self
    }

    fn to_json(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.as_str(),
                "param": self.param,
                "code": self.code,
            }
        });
        Bytes::from(body.to_string())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn envelope_has_the_four_fields() {
        let err = GatewayError::invalid_request("prompt must not be empty", Some("prompt"));
        let value: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(value["error"]["code"], "invalid_request");
        assert_eq!(value["error"]["param"], "prompt");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert_eq!(value["error"]["message"], "prompt must not be empty");
    }

    #[test]
    fn retry_after_is_rounded_up() {
        let err = GatewayError::GenerationNotReady {
            retry_after: Duration::from_millis(1500),
        };
        let response: Response<Full<Bytes>> = err.into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    /// A log sink for one test: what the subscriber writes, kept.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_fault_is_logged_once_where_it_is_rendered_and_never_answered() {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let err = GatewayError::internal("ledger: disk I/O error at /var/secret");
            let copy = err.clone();
            assert!(lines.0.lock().unwrap().is_empty(), "made, not yet rendered");
            let json = err.to_json();
            let response: Response<Full<Bytes>> = copy.into_response();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let body: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(body["error"]["code"], "internal_error");
            assert!(
                !json.windows(6).any(|w| w == b"secret"),
                "the cause is not answered"
            );
            assert_eq!(
                err.to_string(),
                "internal error: ledger: disk I/O error at /var/secret"
            );
        });
        let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logged.matches("internal error").count(), 1, "{logged}");
        assert!(logged.contains("disk I/O error"), "{logged}");
    }
}
