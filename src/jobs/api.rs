use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tower_service::Service;

use super::board::JobBoard;
use super::events::{event_stream, EventId};
use super::record::{JobRecord, JobStatus};
use crate::auth::Principal;
use crate::future::ResponseFuture;
use crate::id::JobId;
use crate::page::PageQuery;
use crate::{GatewayError, ResponseBody};

/// The path of the job list; a job is `{JOBS_PATH}/{id}`, its events `{JOBS_PATH}/{id}/events`.
pub const JOBS_PATH: &str = "/v1/images/jobs";

/// `GET /v1/images/jobs`, `GET` and `DELETE /v1/images/jobs/{id}`,
/// `GET /v1/images/jobs/{id}/events`: the caller's jobs only (another caller's is
/// `404 job_not_found`, as an unknown one is).
///
/// Expects a [`Principal`] in the request extensions, as the other endpoints do.
#[derive(Clone, Debug)]
pub struct JobApi {
    board: JobBoard,
}

impl JobApi {
    /// The job endpoints over `board`.
    pub fn new(board: JobBoard) -> Self {
        JobApi { board }
    }

    /// Whether `path` is one of the job endpoints.
    pub fn serves(path: &str) -> bool {
        path == JOBS_PATH
            || path
                .strip_prefix(JOBS_PATH)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl<B: Send + 'static> Service<Request<B>> for JobApi {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let board = self.board.clone();
        ResponseFuture::answer(async move {
            let principal = Principal::of_request(req.extensions())?;
            let owner = principal.user_id().clone();
            let path = req.uri().path();
            let rest = path.strip_prefix(JOBS_PATH).unwrap_or_default();
            let (id, events) = match rest.strip_prefix('/') {
                None => (None, false),
                Some(tail) => match tail.strip_suffix("/events") {
                    Some(id) => (Some(JobId::parse(id)?), true),
                    None => (Some(JobId::parse(tail)?), false),
                },
            };
            match (id, events, req.method()) {
                (None, _, &Method::GET) => {
                    let page = PageQuery::parse(req.uri().query())?;
                    list(&board, &owner, page).await
                }
                (Some(id), false, &Method::GET) => {
                    let record = board.get(&owner, id).await?;
                    let result = match (&record.output, record.status) {
                        (Some(output), JobStatus::Succeeded) => {
                            Some(board.result(output, &record.echo).await?)
                        }
                        _ => None,
                    };
                    Ok(json(
                        StatusCode::OK,
                        job_json(&record, result.as_deref(), false),
                    ))
                }
                (Some(id), false, &Method::DELETE) => {
                    let record = board.cancel(&owner, id).await?;
                    Ok(json(StatusCode::OK, job_json(&record, None, false)))
                }
                (Some(id), true, &Method::GET) => {
                    let record = board.get(&owner, id).await?;
                    let after = req
                        .headers()
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok())
                        .and_then(EventId::parse);
                    let (frames, body) = tokio::sync::mpsc::channel(2);
                    tokio::spawn(async move { board.follow(record, after, frames).await });
                    Ok(event_stream(ResponseBody::stream(body)))
                }
                _ => Err(GatewayError::MethodNotAllowed),
            }
        })
    }
}

async fn list(
    board: &JobBoard,
    owner: &crate::auth::UserId,
    page: PageQuery,
) -> Result<Response<ResponseBody>, GatewayError> {
    let after =
        match &page.after {
            Some(after) => Some(JobId::parse(after).map_err(|_| {
                GatewayError::invalid_request("after is not a job id", Some("after"))
            })?),
            None => None,
        };
    let mut records = board.list(owner, after, page.limit + 1).await?;
    let has_more = records.len() > page.limit;
    records.truncate(page.limit);
    let next_after = if has_more {
        records.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let data: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::from_slice(&job_json(r, None, true)).unwrap_or_default())
        .collect();
    let body = serde_json::json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_after": next_after,
    });
    Ok(json(StatusCode::OK, Bytes::from(body.to_string())))
}

fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    crate::body::json(status, body)
}

/// A job as the API shows it: `id`, `object`, `status`, `created_at`, `model`, `n`, the
/// times known, a failed job's `error` (the envelope's object), and either a succeeded
/// job's `result` (`result`: the synchronous answer's body) or, in a list, its generation
/// ids alone.
pub(crate) fn job_json(record: &JobRecord, result: Option<&[u8]>, listed: bool) -> Bytes {
    let mut job = serde_json::json!({
        "id": record.id.to_string(),
        "object": "image.job",
        "status": record.status.as_str(),
        "created_at": record.created_at,
        "model": record.model,
        "n": record.n,
    });
    let fields = job.as_object_mut();
    if let Some(fields) = fields {
        if let Some(at) = record.started_at {
            fields.insert("started_at".into(), at.into());
        }
        if let Some(at) = record.finished_at {
            fields.insert("finished_at".into(), at.into());
        }
        if let Some(error) = record.error_object() {
            fields.insert("error".into(), error);
        }
        if let (Some(output), true) = (&record.output, listed) {
            fields.insert("picklyone_generation_ids".into(), output.ids().into());
        }
    }
    let mut text = job.to_string();
    if let Some(result) = result {
        // The result is the synchronous answer's bytes, spliced in as they are (its images
        // are megabytes of base64 that a JSON value would copy twice).
        text.pop();
        let mut out = Vec::with_capacity(text.len() + result.len() + 12);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b",\"result\":");
        out.extend_from_slice(result);
        out.push(b'}');
        return Bytes::from(out);
    }
    Bytes::from(text)
}
