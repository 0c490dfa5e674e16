use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::{manage, upload, FILES_PATH, UPLOAD_PATH};
use crate::auth::Principal;
use crate::future::ResponseFuture;
use crate::multipart::MultipartLimits;
use crate::store::{FileStore, Quota};
use crate::{GatewayError, RequestBody, ResponseBody};

/// Serves the upload and file-management endpoints over a [`FileStore`].
///
/// Expects a [`Principal`] in the request extensions, as the auth layer puts it; without one
/// every request is `401`.
#[derive(Clone)]
pub struct FileApi {
    store: Arc<dyn FileStore>,
    limits: MultipartLimits,
    max_file: u64,
    quota: Quota,
}

impl FileApi {
    /// The API over `store`, with the default upload limits.
    pub fn new(store: Arc<dyn FileStore>) -> Self {
        FileApi {
            store,
            limits: MultipartLimits::default(),
            max_file: upload::DEFAULT_MAX_FILE_BYTES,
            quota: Quota::UNLIMITED,
        }
    }

    /// The quota the file list reports beside what the caller stores (enforce it with
    /// [`QuotaStore`](crate::store::QuotaStore); the gateway builder does both). Default:
    /// unlimited.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// The most bytes one uploaded file may have (default 10 MB, as the File Upload API
    /// documents it). Edit sources sent inline keep the multipart image limit.
    pub fn max_file(mut self, bytes: u64) -> Self {
        self.max_file = bytes;
        self
    }

    /// Replaces the upload limits.
    pub fn limits(mut self, limits: MultipartLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether `path` is one of this API's.
    pub fn serves(path: &str) -> bool {
        path == UPLOAD_PATH || path == FILES_PATH || path.starts_with("/api/v1/files/")
    }
}

impl std::fmt::Debug for FileApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileApi")
            .field("limits", &self.limits)
            .field("max_file", &self.max_file)
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for FileApi
where
    B: RequestBody,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (store, limits, max_file) = (self.store.clone(), self.limits, self.max_file);
        let quota = self.quota;
        ResponseFuture::answer(async move {
            let principal = Principal::of_request(req.extensions())?;
            let path = req.uri().path().to_owned();
            let key = path.strip_prefix("/api/v1/files/");
            match (req.method().clone(), path.as_str(), key) {
                (Method::POST, UPLOAD_PATH, _) => {
                    upload::upload(req, &*store, &principal, limits, max_file).await
                }
                (Method::GET, FILES_PATH, _) => {
                    manage::list(req.uri().query(), &*store, quota, &principal).await
                }
                (Method::GET, _, Some(key)) => manage::get(key, &*store, &principal).await,
                (Method::DELETE, _, Some(key)) => manage::delete(key, &*store, &principal).await,
                (_, UPLOAD_PATH | FILES_PATH, _) | (_, _, Some(_)) => {
                    Err(GatewayError::MethodNotAllowed)
                }
                _ => Err(GatewayError::RouteNotFound),
            }
        })
    }
}
