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

use std::fmt;
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
    /// 502 `upstream_error`: the image backend failed. The message is generic on purpose.
    Upstream,
    /// 404 `not_found`: no such route.
    RouteNotFound,
    /// 404 `account_not_found`: an admin deposit names a user that holds no key.
    AccountNotFound,
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
    /// 500 `internal_error`: a fault of the gateway itself (storage, ledger).
    Internal,
}

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

    /// The HTTP status the spec's table gives this error.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidRequest { .. }
            | BodyCutOff
            | InvalidImageKey
            | InvalidGenerationId
            | ImageTypeUnsupported { .. }
            | ImageTooLarge { .. }
            | ContentPolicyViolation { .. } => StatusCode::BAD_REQUEST,
            InvalidApiKey => StatusCode::UNAUTHORIZED,
            InsufficientBalance { .. } | OutstandingDebt => StatusCode::PAYMENT_REQUIRED,
            ModelNotFound { .. }
            | GenerationNotFound
            | ImageNotFound
            | RouteNotFound
            | AccountNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GenerationNotReady { .. } | IdempotencyKeyInUse { .. } | IdempotencyKeyReused => {
                StatusCode::CONFLICT
            }
            PayloadTooLarge | StorageQuotaExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            RateLimitExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Upstream => StatusCode::BAD_GATEWAY,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `code` field of the envelope, exactly as the spec's table spells it.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidRequest { .. } | BodyCutOff => "invalid_request",
            InvalidImageKey => "invalid_image_key",
            InvalidGenerationId => "invalid_generation_id",
            ImageTypeUnsupported { .. } => "IMAGE_TYPE_UNSUPPORTED",
            ImageTooLarge { .. } => "IMAGE_TOO_LARGE",
            ContentPolicyViolation { .. } => "content_policy_violation",
            InvalidApiKey => "invalid_api_key",
            InsufficientBalance { .. } => "insufficient_balance",
            OutstandingDebt => "OUTSTANDING_DEBT",
            ModelNotFound { .. } => "model_not_found",
            GenerationNotFound => "generation_not_found",
            ImageNotFound => "IMAGE_NOT_FOUND",
            GenerationNotReady { .. } => "generation_not_ready",
            IdempotencyKeyInUse { .. } => "idempotency_key_in_use",
            IdempotencyKeyReused => "idempotency_key_reused",
            PayloadTooLarge => "request_too_large",
            RequestTimeout => "request_timeout",
            RateLimitExceeded { .. } => "rate_limit_exceeded",
            Upstream => "upstream_error",
            RouteNotFound => "not_found",
            AccountNotFound => "account_not_found",
            MethodNotAllowed => "method_not_allowed",
            StorageQuotaExceeded { .. } => "storage_quota_exceeded",
            InsufficientStorage => "insufficient_storage",
            Internal => "internal_error",
        }
    }

    /// The OpenAI error `type`, which groups codes the way the OpenAI API does.
    pub fn error_type(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidApiKey => "authentication_error",
            InsufficientBalance { .. } | OutstandingDebt => "billing_error",
            RateLimitExceeded { .. } => "rate_limit_error",
            Upstream | Internal | InsufficientStorage => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The request field the error blames, if any.
    pub fn param(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            InvalidRequest { param, .. } => *param,
            InvalidImageKey => Some("image_key"),
            InvalidGenerationId | GenerationNotFound | GenerationNotReady { .. } => {
                Some("generation_id")
            }
            ImageTypeUnsupported { param } | ImageTooLarge { param, .. } => Some(param),
            ImageNotFound => Some("image_key"),
            ModelNotFound { .. } => Some("model"),
            AccountNotFound => Some("user_id"),
            ContentPolicyViolation { .. } => Some("prompt"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::GenerationNotReady { retry_after }
            | GatewayError::IdempotencyKeyInUse { retry_after }
            | GatewayError::RateLimitExceeded { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(body.to_string())
    }

    /// Renders the error as a complete HTTP response: status, envelope, and `Retry-After`
    /// where the error has one.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut response = crate::response::json(self.status(), self.to_json());
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up so a client never retries too early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, GatewayError::BodyCutOff) {
            response.extensions_mut().insert(ClientAborted);
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        tracing::debug!(status = %self.status(), code = self.code(), "request rejected");
        response
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GatewayError::*;
        match self {
            InvalidRequest { message, .. } => f.write_str(message),
            BodyCutOff => f.write_str("the request body could not be read"),
            InvalidImageKey => f.write_str(
                "image_key is malformed or does not belong to the caller; \
                 use a key returned by the upload endpoint",
            ),
            InvalidGenerationId => f.write_str("generation_id is not a valid UUID"),
            ImageTypeUnsupported { .. } => {
                f.write_str("source image type is not supported; send JPEG, PNG, GIF or WebP")
            }
            ImageTooLarge { limit, .. } => {
                write!(f, "source image exceeds the limit of {limit} bytes")
            }
            ContentPolicyViolation { message } => {
                write!(
                    f,
                    "the prompt was rejected by content moderation: {message}"
                )
            }
            InvalidApiKey => f.write_str(
                "invalid API key; send it as `Authorization: Bearer <key>` or `x-api-key: <key>`",
            ),
            InsufficientBalance { needed, available } => write!(
                f,
                "insufficient balance for this request: it needs {needed} (n x the price per \
                 image), {available} is available"
            ),
            OutstandingDebt => f.write_str("the account has outstanding unpaid charges"),
            ModelNotFound { model } => write!(f, "the model `{model}` does not exist"),
            GenerationNotFound => f.write_str("generation not found"),
            ImageNotFound => f.write_str("the file behind image_key no longer exists"),
            GenerationNotReady { .. } => {
                f.write_str("the generation is still being stored; retry shortly")
            }
            PayloadTooLarge => f.write_str("the request body exceeds the size limit"),
            RequestTimeout => f.write_str("the request took too long; nothing was charged"),
            IdempotencyKeyInUse { .. } => {
                f.write_str("a request with this Idempotency-Key is still running; retry shortly")
            }
            IdempotencyKeyReused => f.write_str(
                "this Idempotency-Key was already used for a different request; \
                 use a new key for a new request",
            ),
            RateLimitExceeded { .. } => f.write_str("rate limit exceeded; retry later"),
            Upstream => f.write_str("the image service failed; the hold was released"),
            RouteNotFound => f.write_str("no such endpoint"),
            AccountNotFound => f.write_str("no user with this id holds an API key"),
            MethodNotAllowed => f.write_str("method not allowed on this endpoint"),
            StorageQuotaExceeded { message } => f.write_str(message),
            InsufficientStorage => {
                f.write_str("the gateway's file storage is full; nothing was stored or charged")
            }
            Internal => f.write_str("internal error; nothing was charged"),
        }
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
}
