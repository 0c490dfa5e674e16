//! The one way the gateway's own answers are built: a status and a JSON body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// A response with `status` and the JSON `body`.
pub(crate) fn json<B: From<Bytes>>(status: StatusCode, body: Bytes) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `200 OK` with `body` as JSON.
pub(crate) fn json_ok<B: From<Bytes>>(body: &serde_json::Value) -> Response<B> {
    json(StatusCode::OK, Bytes::from(body.to_string()))
}
