use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use crate::backend::EditService;
use crate::billing::{AccountApi, Billing};
use crate::catalog::Catalog;
use crate::files::FileApi;
use crate::future::ResponseFuture;
use crate::idempotency::Idempotency;
use crate::jobs::JobApi;
use crate::moderation::Moderated;
use crate::request::Normalize;
use crate::source::ResolveSource;
use crate::{GatewayError, RequestBody, ResponseBody};

/// Path of the edits endpoint.
pub const EDITS_PATH: &str = "/v1/images/edits";
/// Path of the generations endpoint.
pub const GENERATIONS_PATH: &str = "/v1/images/generations";
/// Path of the compose endpoint.
pub const COMPOSE_PATH: &str = "/v1/images/compose";
/// Path of the model list.
pub const MODELS_PATH: &str = "/v1/models";

/// The image endpoints' shared stack, below each one's normalization.
pub(crate) type Pipeline = Idempotency<Moderated<ResolveSource<Moderated<Billing<EditService>>>>>;

/// Dispatches by path to the endpoint stacks; anything else is answered 404 or 405.
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    pub(crate) edits: Normalize<Pipeline>,
    pub(crate) generations: Normalize<Pipeline>,
    pub(crate) compose: Normalize<Pipeline>,
    pub(crate) catalog: Catalog,
    pub(crate) files: FileApi,
    pub(crate) account: AccountApi,
    pub(crate) jobs: JobApi,
}

impl<B> Service<Request<B>> for Routes
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
        let path = req.uri().path();
        let rejection = match (path, req.method()) {
            (EDITS_PATH, &Method::POST) => return self.edits.call(req),
            (GENERATIONS_PATH, &Method::POST) => return self.generations.call(req),
            (COMPOSE_PATH, &Method::POST) => return self.compose.call(req),
            (EDITS_PATH | GENERATIONS_PATH | COMPOSE_PATH, _) => GatewayError::MethodNotAllowed,
            (MODELS_PATH, &Method::GET) => {
                return ResponseFuture::ready(crate::body::json_ok(&self.catalog.to_openai_list()))
            }
            (MODELS_PATH, _) => GatewayError::MethodNotAllowed,
            _ if FileApi::serves(path) => return self.files.call(req),
            _ if JobApi::serves(path) => return self.jobs.call(req),
            _ if AccountApi::serves(path) => return self.account.call(req),
            _ => GatewayError::RouteNotFound,
        };
        ResponseFuture::reject(rejection)
    }
}
