//! The key routes of the admin API (served behind the admin key by [`AdminApi`](super::AdminApi)).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde::Deserialize;

use crate::auth::{Cidr, KeyId, KeyLimits, KeyRegistry, NewKey, UserId};
use crate::clock::unix_now;
use crate::{GatewayError, ResponseBody};

/// How long a rotated key keeps working when the request names no grace period.
const DEFAULT_ROTATION_GRACE_SECS: u64 = 3600;
/// The longest grace period a rotation may give the old key (30 days).
const MAX_ROTATION_GRACE_SECS: u64 = 30 * 86_400;
/// The most models or networks one key may list.
const MAX_LIST: usize = 64;

/// A key's limits as the admin API takes them (create and `PATCH`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    daily_limit: Option<u64>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    ips: Option<Vec<String>>,
}

impl KeyBody {
    fn limits(&self) -> Result<KeyLimits, GatewayError> {
        if let Some(models) = &self.models {
            let fine = models.len() <= MAX_LIST
                && models.iter().all(|m| {
                    !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_graphic())
                });
            if !fine {
                return Err(GatewayError::invalid_request(
                    "models is a list of at most 64 model names",
                    Some("models"),
                ));
            }
        }
        let ips = match &self.ips {
            None => None,
            Some(list) if list.len() <= MAX_LIST => Some(
                list.iter()
                    .map(|text| {
                        Cidr::parse(text).ok_or_else(|| {
                            GatewayError::invalid_request(
                                format!("`{text}` is not an address or address/prefix"),
                                Some("ips"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => {
                return Err(GatewayError::invalid_request(
                    "ips lists at most 64 networks",
                    Some("ips"),
                ))
            }
        };
        Ok(KeyLimits {
            daily_limit: self.daily_limit,
            models: self.models.clone(),
            ips,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid_request(format!("body: {e}"), None))
}

fn answer(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(json) => crate::body::json(status, Bytes::from(json)),
        Err(error) => GatewayError::internal(format!("an admin answer: {error}")).into_response(),
    }
}

fn store_failed(error: crate::BoxError) -> GatewayError {
    GatewayError::internal(format!("key store: {error}"))
}

/// Whether `path` is one of the key routes.
pub(crate) fn serves(path: &str) -> bool {
    path.starts_with("/admin/v1/keys/")
        || (path.starts_with("/admin/v1/users/") && path.ends_with("/keys"))
}

/// Answers one key route: `POST|GET /admin/v1/users/{user}/keys`,
/// `GET|PATCH|DELETE /admin/v1/keys/{id}`, `POST /admin/v1/keys/{id}/rotate`.
pub(crate) async fn answer_keys(
    registry: &Arc<dyn KeyRegistry>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Response<ResponseBody>, GatewayError> {
    if let Some(user) = path
        .strip_prefix("/admin/v1/users/")
        .and_then(|rest| rest.strip_suffix("/keys"))
    {
        let user = UserId::new(user)
            .map_err(|_| GatewayError::invalid_request("user id is not valid", Some("user_id")))?;
        return match *method {
            Method::POST => {
                let request: KeyBody = parse(body)?;
                let name = request.name.clone().unwrap_or_default();
                if name.chars().count() > 100 {
                    return Err(GatewayError::invalid_request(
                        "name is at most 100 characters",
                        Some("name"),
                    ));
                }
                if request.expires_at.is_some_and(|t| t <= unix_now()) {
                    return Err(GatewayError::invalid_request(
                        "expires_at is in the past",
                        Some("expires_at"),
                    ));
                }
                let new = NewKey {
                    name,
                    expires_at: request.expires_at,
                    limits: request.limits()?,
                };
                let issued = registry.create(&user, new).await.map_err(store_failed)?;
                tracing::info!(key = %issued.record.id, user = %user, "API key created");
                Ok(answer(StatusCode::CREATED, &issued))
            }
            Method::GET => {
                let keys = registry.list(&user).await.map_err(store_failed)?;
                Ok(answer(
                    StatusCode::OK,
                    &serde_json::json!({"object": "list", "data": keys}),
                ))
            }
            _ => Err(GatewayError::MethodNotAllowed),
        };
    }
    let rest = path
        .strip_prefix("/admin/v1/keys/")
        .ok_or(GatewayError::RouteNotFound)?;
    let (id, rotate) = match rest.strip_suffix("/rotate") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let id = KeyId::parse(id)
        .ok_or_else(|| GatewayError::invalid_request("key id is not a UUID", Some("key_id")))?;
    match (method, rotate) {
        (&Method::POST, true) => {
            let request: RotateBody = parse(body)?;
            let grace = request.grace_seconds.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
            if grace > MAX_ROTATION_GRACE_SECS {
                return Err(GatewayError::invalid_request(
                    "grace_seconds is at most 2592000 (30 days)",
                    Some("grace_seconds"),
                ));
            }
            let until = unix_now().saturating_add(grace);
            let issued = registry
                .rotate(id, until)
                .await
                .map_err(store_failed)?
                .ok_or(GatewayError::KeyNotFound)?;
            let old = registry.get(id).await.map_err(store_failed)?;
            tracing::info!(old = %id, new = %issued.record.id, "API key rotated");
            let mut value = serde_json::to_value(&issued)
                .map_err(|e| GatewayError::internal(format!("a rotated key: {e}")))?;
            value["replaces"] = serde_json::json!({
                "id": id,
                "expires_at": old.and_then(|o| o.expires_at),
            });
            Ok(answer(StatusCode::CREATED, &value))
        }
        (_, true) => Err(GatewayError::MethodNotAllowed),
        (&Method::GET, false) => {
            let record = registry.get(id).await.map_err(store_failed)?;
            Ok(answer(
                StatusCode::OK,
                &record.ok_or(GatewayError::KeyNotFound)?,
            ))
        }
        (&Method::PATCH, false) => {
            let request: KeyBody = parse(body)?;
            if request.name.is_some() || request.expires_at.is_some() {
                return Err(GatewayError::invalid_request(
                    "PATCH sets limits (daily_limit, models, ips); rotate or revoke for the rest",
                    None,
                ));
            }
            if !registry
                .set_limits(id, request.limits()?)
                .await
                .map_err(store_failed)?
            {
                return Err(GatewayError::KeyNotFound);
            }
            let record = registry.get(id).await.map_err(store_failed)?;
            Ok(answer(
                StatusCode::OK,
                &record.ok_or(GatewayError::KeyNotFound)?,
            ))
        }
        (&Method::DELETE, false) => {
            if !registry
                .revoke(id, unix_now())
                .await
                .map_err(store_failed)?
            {
                return Err(GatewayError::KeyNotFound);
            }
            tracing::info!(key = %id, "API key revoked");
            Ok(answer(
                StatusCode::OK,
                &serde_json::json!({"id": id, "revoked": true}),
            ))
        }
        _ => Err(GatewayError::MethodNotAllowed),
    }
}
