//! The upstream backend against a scripted OpenAI-compatible mock: a real HTTP server on
//! 127.0.0.1 that records what the gateway sent and answers as told.

use crate::common;
use crate::common::python;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use image_gateway::auth::Principal;
use image_gateway::auth::UserId;
use image_gateway::backend::{BackendError, ImageBackend, UpstreamBackend};
use image_gateway::catalog::ModelSpec;
use image_gateway::gateway::GatewayBuilder;
use image_gateway::job::{EditJob, EditParams, SourceImage};
use image_gateway::ledger::{Ledger, MemoryLedger};
use image_gateway::media::ImageKind;
use image_gateway::store::{FileStore, LocalFileStore, Quota};
use image_gateway::Gateway;

pub(crate) const UPSTREAM_KEY: &str = "sk-upstream-secret-4242";

#[derive(Clone, Copy, Debug)]
pub(crate) enum Script {
    Images(usize),
    Moderation,
    BadSize,
    ServerError,
    Unauthorized,
    Hang,
    /// Images once the test lets the model finish ([`Mock::finish`]).
    Slow,
    Truncated,
    InvalidJson,
    Url,
    Flaky503ThenImages,
    /// A 503 once the test lets the model finish ([`Mock::finish`]).
    Late503,
    /// A 429 (the work was not taken) once the test lets the model finish.
    Late429,
    /// The `Moderation` refusal once the test lets the model finish.
    LateModeration,
    /// An event stream: two partial images, then one completed image per `n`.
    Stream,
    /// The same, the completed images sent once the test lets the model finish; each is
    /// counted rendered once it is sent.
    SlowStream,
    /// An event stream of one partial image, then a server error event.
    StreamThenError,
    /// `429` with `Retry-After: 120`.
    TooMany,
    /// `503`, every time.
    Unavailable,
}

#[derive(Debug, Default, Clone)]
struct Received {
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    api_key: Option<String>,
    texts: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
    /// The `Content-Length` sent, if any, and the body's length as read.
    declared_length: Option<usize>,
    length: usize,
}

pub(crate) struct Mock {
    pub(crate) addr: SocketAddr,
    script: Mutex<Script>,
    pub(crate) calls: AtomicUsize,
    received: Mutex<Vec<Received>>,
    cancelled: AtomicBool,
    /// Images the model answered in all: what the provider would bill.
    rendered: AtomicUsize,
    /// Set by [`Mock::finish`]: the `Slow`, `SlowStream` and late models' work is done.
    finished: tokio::sync::watch::Sender<bool>,
}

impl Mock {
    /// Lets every `Slow`, `SlowStream` and `Late*` call, waiting or to come, answer.
    pub(crate) fn finish(&self) {
        self.finished.send_replace(true);
    }

    /// Waits until the mock has taken `n` calls in all (thirty seconds is a hang, not a
    /// pace).
    pub(crate) async fn calls_reach(&self, n: usize) {
        let waiting = Instant::now();
        while self.calls.load(Ordering::SeqCst) < n {
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "{n} calls never came"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for [`Mock::finish`].
    async fn model_works(&self) {
        let _ = self.finished.subscribe().wait_for(|done| *done).await;
    }
}

struct CancelFlag(Arc<Mock>, bool);

impl Drop for CancelFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut res = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    res
}

fn b64_png() -> String {
    base64::engine::general_purpose::STANDARD.encode(png(6, 6))
}

async fn handle(mock: Arc<Mock>, req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    if req.uri().path() == "/img.png" {
        return Ok(full(StatusCode::OK, png(6, 6)));
    }
    let call = mock.calls.fetch_add(1, Ordering::SeqCst);
    let mut guard = CancelFlag(mock.clone(), false);
    let mut received = Received {
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        authorization: req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        api_key: req
            .headers()
            .get("api-key")
            .map(|v| v.to_str().unwrap().to_owned()),
        ..Received::default()
    };
    let content_type = req.headers()["content-type"].to_str().unwrap().to_owned();
    received.declared_length = req
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    received.length = body.len();
    if content_type == "application/json" {
        // A generation: its fields recorded as text, numbers and booleans as JSON writes them.
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).unwrap();
        for (name, value) in json {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            received.texts.push((name, text));
        }
    } else {
        let boundary = multer::parse_boundary(&content_type).unwrap();
        let mut form = multer::Multipart::new(
            futures_util::stream::once(async move { Ok::<_, Infallible>(body) }),
            boundary,
        );
        while let Some(field) = form.next_field().await.unwrap() {
            let name = field.name().unwrap().to_owned();
            if field.file_name().is_some() {
                received
                    .files
                    .push((name, field.bytes().await.unwrap().to_vec()));
            } else {
                received.texts.push((name, field.text().await.unwrap()));
            }
        }
    }
    let n: usize = received
        .texts
        .iter()
        .find(|(k, _)| k == "n")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(1);
    mock.received.lock().unwrap().push(received);
    let script = *mock.script.lock().unwrap();
    let images = |k: usize| {
        mock.rendered.fetch_add(k, Ordering::SeqCst);
        let data: Vec<_> = (0..k)
            .map(|_| serde_json::json!({"b64_json": b64_png()}))
            .collect();
        full(
            StatusCode::OK,
            serde_json::json!({"created": 1, "data": data}).to_string(),
        )
    };
    let refusal = || {
        full(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"moderation_blocked","message":"Your request was rejected by the safety system at 10.1.2.3","type":"image_generation_user_error"}}"#,
        )
    };
    let answer = match script {
        Script::Images(k) => images(k.min(n)),
        Script::Moderation => refusal(),
        Script::LateModeration => {
            mock.model_works().await;
            refusal()
        }
        Script::BadSize => full(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"invalid_value","param":"size","message":"Invalid value: '333x777'"}}"#,
        ),
        Script::ServerError => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":{"message":"internal detail at 10.1.2.3"}}"#,
        ),
        Script::Unauthorized => full(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"invalid_api_key","message":"Incorrect API key provided: sk-upstream-secret-4242"}}"#,
        ),
        Script::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            images(1)
        }
        Script::Slow => {
            mock.model_works().await;
            images(n)
        }
        Script::Truncated => {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(
                    b"{\"data\":[{\"b64_json\":\"iVBOR",
                ))),
                Err(std::io::Error::other("cut")),
            ];
            let mut res =
                Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed());
            res.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            res
        }
        Script::InvalidJson => full(StatusCode::OK, "{\"data\": [ not json"),
        Script::Url => full(
            StatusCode::OK,
            serde_json::json!({"data": [{"url": format!("http://{}/img.png", mock.addr)}]})
                .to_string(),
        ),
        Script::Flaky503ThenImages if call == 0 => full(StatusCode::SERVICE_UNAVAILABLE, "{}"),
        Script::Flaky503ThenImages => images(n),
        Script::Late503 => {
            mock.model_works().await;
            full(StatusCode::SERVICE_UNAVAILABLE, "{}")
        }
        Script::Late429 => {
            mock.model_works().await;
            full(StatusCode::TOO_MANY_REQUESTS, "{}")
        }
        Script::Stream => {
            let event = |kind: &str, extra: &str| {
                Ok(Frame::data(Bytes::from(format!(
                    "event: image_edit.{kind}\ndata: {{\"type\":\"image_edit.{kind}\",\"b64_json\":\"{}\"{extra}}}\n\n",
                    b64_png()
                ))))
            };
            let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b": comment\n\n"))),
                event("partial_image", ",\"partial_image_index\":0"),
                event("partial_image", ",\"partial_image_index\":1"),
            ];
            frames.extend((0..n).map(|_| event("completed", "")));
            let mut res =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            res
        }
        Script::TooMany => {
            let mut res = full(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":{"code":"rate_limit_exceeded","message":"slow down"}}"#,
            );
            res.headers_mut()
                .insert("retry-after", "120".parse().unwrap());
            res
        }
        Script::Unavailable => full(StatusCode::SERVICE_UNAVAILABLE, "{}"),
        Script::StreamThenError => {
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from(format!(
                    "event: image_edit.partial_image\ndata: {{\"type\":\"image_edit.partial_image\",\"b64_json\":\"{}\",\"partial_image_index\":0}}\n\n",
                    b64_png()
                )))),
                Ok(Frame::data(Bytes::from_static(
                    b"event: error\ndata: {\"error\":{\"code\":\"server_error\",\"message\":\"overloaded\"}}\n\n",
                ))),
            ];
            let mut res =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            res
        }
        Script::SlowStream => {
            let event = |kind: &str, extra: &str| {
                Bytes::from(format!(
                    "event: image_edit.{kind}\ndata: {{\"type\":\"image_edit.{kind}\",\"b64_json\":\"{}\"{extra}}}\n\n",
                    b64_png()
                ))
            };
            // (frame, a completed image): the completed ones wait for the model to finish.
            let mut frames = vec![
                (event("partial_image", ",\"partial_image_index\":0"), false),
                (event("partial_image", ",\"partial_image_index\":1"), false),
            ];
            frames.extend((0..n).map(|_| (event("completed", ""), true)));
            let counted = mock.clone();
            let body = futures_util::stream::unfold(frames.into_iter(), move |mut frames| {
                let counted = counted.clone();
                async move {
                    let (frame, completed) = frames.next()?;
                    if completed {
                        counted.model_works().await;
                        counted.rendered.fetch_add(1, Ordering::SeqCst);
                    }
                    Some((Ok::<_, std::io::Error>(Frame::data(frame)), frames))
                }
            });
            let mut res = Response::new(StreamBody::new(body).boxed());
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            res
        }
    };
    guard.1 = true;
    Ok(answer)
}

pub(crate) async fn start_mock(script: Script) -> Arc<Mock> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = Arc::new(Mock {
        addr: listener.local_addr().unwrap(),
        script: Mutex::new(script),
        calls: AtomicUsize::new(0),
        received: Mutex::new(Vec::new()),
        cancelled: AtomicBool::new(false),
        rendered: AtomicUsize::new(0),
        finished: tokio::sync::watch::channel(false).0,
    });
    let served = mock.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let mock = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(mock.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    mock
}

struct Setup {
    mock: Arc<Mock>,
    server: TestServer,
    ledger: Arc<dyn Ledger>,
}

/// A gateway billing 10 a image in front of `upstream`; alice holds 100.
async fn billed(upstream: impl ImageBackend) -> (TestServer, Arc<dyn Ledger>) {
    billed_with(upstream, |builder| builder).await
}

/// As [`billed`], the gateway's builder given to `extra` last.
async fn billed_with(
    upstream: impl ImageBackend,
    extra: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> (TestServer, Arc<dyn Ledger>) {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    ledger
        .deposit(&UserId::new("alice").unwrap(), 100, "c")
        .await
        .unwrap();
    let builder = Gateway::builder()
        .keys(keys())
        .backend(upstream)
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, 10));
    (TestServer::start(extra(builder).build()).await, ledger)
}

async fn setup(script: Script) -> Setup {
    setup_at(script, "").await
}

/// As [`setup`], the upstream's URL given with `suffix` (`/v1`, `/`) after its host.
async fn setup_at(script: Script, suffix: &str) -> Setup {
    setup_with(script, suffix, |builder| builder).await
}

/// As [`setup_at`], the gateway's builder given to `extra` last.
async fn setup_with(
    script: Script,
    suffix: &str,
    extra: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> Setup {
    let mock = start_mock(script).await;
    let upstream = UpstreamBackend::builder(format!("http://{}{suffix}", mock.addr))
        .api_key(UPSTREAM_KEY)
        .model("gpt-image-2", "upstream-model-x")
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (server, ledger) = billed_with(upstream, extra).await;
    Setup {
        mock,
        server,
        ledger,
    }
}

impl Setup {
    async fn available(&self) -> (i64, u64) {
        let b = self
            .ledger
            .balance(&UserId::new("alice").unwrap())
            .await
            .unwrap();
        (b.available, b.held)
    }
}

fn edit(n: u32) -> Form {
    Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "make it blue")
        .text("n", &n.to_string())
        .text("size", "333x777")
        .file("image", "a.png", "image/png", &png(10, 10))
}

fn assert_no_leak(reply: &Reply, mock: &Mock) {
    let text = String::from_utf8_lossy(&reply.body);
    for secret in [UPSTREAM_KEY, "10.1.2.3", &mock.addr.to_string()] {
        assert!(!text.contains(secret), "leaked {secret:?}: {text}");
    }
}

#[tokio::test]
async fn forwards_the_sdk_shape_and_bills_what_came_back() {
    let s = setup(Script::Images(2)).await;
    let reply = s.server.edit_form(ALICE_KEY, edit(2)).await;
    assert_eq!(reply.images().len(), 2);
    assert_eq!(s.available().await, (80, 0));

    let received = s.mock.received.lock().unwrap()[0].clone();
    assert_eq!(
        received.authorization.as_deref(),
        Some(&*format!("Bearer {UPSTREAM_KEY}"))
    );
    let text = |k: &str| {
        received
            .texts
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(text("model").as_deref(), Some("upstream-model-x"));
    assert_eq!(text("prompt").as_deref(), Some("make it blue"));
    assert_eq!(text("n").as_deref(), Some("2"));
    assert_eq!(text("size").as_deref(), Some("333x777"));
    assert_eq!(text("output_format").as_deref(), Some("png"));
    assert_eq!(text("response_format").as_deref(), Some("b64_json"));
    assert_eq!(received.files, vec![("image".to_string(), png(10, 10))]);
    // The form's length is known before it is sent: no chunked encoding.
    assert_eq!(received.declared_length, Some(received.length));

    // Several sources go as repeated image[] parts, in order.
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "blend")
        .file("image[]", "a.png", "image/png", &png(3, 3))
        .file("image[]", "b.jpg", "image/jpeg", &jpeg(5, 5));
    assert_eq!(s.server.edit_form(ALICE_KEY, form).await.images().len(), 1);
    let received = s.mock.received.lock().unwrap()[1].clone();
    assert_eq!(
        received.files,
        vec![
            ("image[]".to_string(), png(3, 3)),
            ("image[]".to_string(), jpeg(5, 5))
        ]
    );
}

#[tokio::test]
async fn an_upstream_url_with_or_without_v1_reaches_the_same_endpoint() {
    for suffix in ["", "/", "/v1", "/v1/"] {
        let s = setup_at(Script::Images(1), suffix).await;
        assert_eq!(
            s.server.edit_form(ALICE_KEY, edit(1)).await.images().len(),
            1,
            "{suffix}"
        );
        let path = s.mock.received.lock().unwrap()[0].path.clone();
        assert_eq!(
            path, "/v1/images/edits",
            "upstream URL ending in {suffix:?}"
        );
    }
}

#[tokio::test]
async fn fewer_images_than_asked_are_charged_as_returned() {
    let s = setup(Script::Images(1)).await;
    assert_eq!(
        s.server.edit_form(ALICE_KEY, edit(3)).await.images().len(),
        1
    );
    assert_eq!(s.available().await, (90, 0));
}

#[tokio::test]
async fn upstream_failures_map_to_the_spec_and_release_the_hold() {
    let cases = [
        (Script::Moderation, 400, "content_policy_violation"),
        (Script::BadSize, 400, "invalid_request"),
        (Script::ServerError, 502, "upstream_error"),
        (Script::Unauthorized, 502, "upstream_error"),
        (Script::Hang, 502, "upstream_error"),
        (Script::Truncated, 502, "upstream_error"),
        (Script::InvalidJson, 502, "upstream_error"),
    ];
    for (script, status, code) in cases {
        let s = setup(script).await;
        let reply = s.server.edit_form(ALICE_KEY, edit(2)).await;
        assert_eq!(
            (reply.error().0, reply.error().1.as_str()),
            (status, code),
            "{script:?}"
        );
        assert_no_leak(&reply, &s.mock);
        assert_eq!(
            s.available().await,
            (100, 0),
            "{script:?}: the hold is released"
        );
        assert_eq!(
            s.mock.calls.load(Ordering::SeqCst),
            1,
            "{script:?}: never retried"
        );
    }
}

#[tokio::test]
async fn url_answers_are_fetched_and_returned_as_base64() {
    let s = setup(Script::Url).await;
    let images = s.server.edit_form(ALICE_KEY, edit(1)).await.images();
    assert_eq!(images, vec![png(6, 6)]);
    assert_eq!(s.available().await, (90, 0));
}

#[tokio::test]
async fn a_503_is_retried_once() {
    let s = setup(Script::Flaky503ThenImages).await;
    assert_eq!(
        s.server.edit_form(ALICE_KEY, edit(1)).await.images().len(),
        1
    );
    assert_eq!(s.mock.calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.available().await, (90, 0));
}

#[tokio::test]
async fn the_sources_are_dropped_while_the_model_works_and_a_late_503_is_not_retried() {
    let mock = start_mock(Script::Late503).await;
    let upstream = UpstreamBackend::builder(format!("http://{}", mock.addr))
        .build()
        .unwrap();
    let source = Bytes::from(png(64, 64));
    let job = EditJob::new(
        Principal::new(UserId::new("alice").unwrap()),
        vec![SourceImage::new(source.clone(), ImageKind::Png)],
        EditParams::new("gpt-image-2", "make it blue"),
    );
    let edit = tokio::spawn(async move { upstream.edit_owned(job).await });
    // The mock has the body within milliseconds and answers only when told: while it works,
    // the backend holds no reference to the image (ten seconds is a hang, not a pace).
    let waiting = Instant::now();
    while !(mock.calls.load(Ordering::SeqCst) == 1 && source.is_unique()) {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the backend kept the source while the model worked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!edit.is_finished(), "the model has not answered yet");
    mock.finish();
    let error = edit.await.unwrap().unwrap_err();
    assert!(matches!(error, BackendError::Upstream { .. }), "{error:?}");
    assert_eq!(
        mock.calls.load(Ordering::SeqCst),
        1,
        "a 503 after the window is not sent again"
    );
    assert_eq!(mock.received.lock().unwrap()[0].files[0].1, source.to_vec());
}

#[tokio::test]
async fn connection_refused_is_502_and_nothing_is_charged() {
    let (_refusing, port) = closed_port();
    let upstream = UpstreamBackend::builder(format!("http://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let (server, ledger) = billed(upstream).await;
    let reply = server.edit_form(ALICE_KEY, edit(1)).await;
    assert_eq!(reply.error(), (502, "upstream_error".into(), None));
    assert!(!String::from_utf8_lossy(&reply.body).contains(&port.to_string()));
    assert_eq!(
        ledger
            .balance(&UserId::new("alice").unwrap())
            .await
            .unwrap()
            .available,
        100
    );
}

#[tokio::test]
async fn clients_that_leave_upstream_jobs_are_charged_for_every_image_the_model_rendered() {
    let s = setup(Script::Slow).await;
    let alice = UserId::new("alice").unwrap();
    // Five clients give up while the model works on their edits.
    for _ in 0..5 {
        leave_while_the_model_works(&s).await;
    }
    s.mock.finish();
    let b = wait_for_no_hold(&s.ledger, &alice).await;
    assert!(
        !s.mock.cancelled.load(Ordering::SeqCst),
        "no upstream call was cut off"
    );
    let rendered = s.mock.rendered.load(Ordering::SeqCst) as u64;
    assert_eq!(rendered, 5, "the model rendered every edit");
    assert_eq!(
        (b.available, b.held, b.charged),
        (100 - 10 * rendered as i64, 0, 10 * rendered),
        "every rendered image charged, once"
    );
    // Each output is kept for its owner: listed with the five sources.
    let list = s
        .server
        .call(http::Method::GET, "/api/v1/files?limit=100", ALICE_KEY)
        .await
        .json();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    let outputs = names
        .iter()
        .filter(|k| k.ends_with("_generation.png"))
        .count();
    assert_eq!(outputs, 5, "{names:?}");
}

/// Waits until `user` has nothing held (every job ended), and returns the balance.
async fn wait_for_no_hold(
    ledger: &Arc<dyn Ledger>,
    user: &UserId,
) -> image_gateway::ledger::Balance {
    for _ in 0..500 {
        let b = ledger.balance(user).await.unwrap();
        if b.held == 0 {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "a hold never ended: {:?}",
        ledger.balance(user).await.unwrap()
    );
}

/// Alice sends a one-image edit and hangs up once the model has it (her 10 held).
async fn leave_while_the_model_works(s: &Setup) {
    let (content_type, body) = edit(1).finish();
    let addr = s.server.addr;
    let calls = s.mock.calls.load(Ordering::SeqCst);
    let client = tokio::spawn(async move {
        let req = Request::post(EDITS)
            .header("x-api-key", ALICE_KEY)
            .header("content-type", content_type)
            .body(Full::new(body))
            .unwrap();
        send(addr, req).await
    });
    s.mock.calls_reach(calls + 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.available().await.1 % 10, 0);
    assert!(s.available().await.1 >= 10, "the edit's 10 is held");
    client.abort();
}

/// A multipart edit's source is written to the file store while the model works. A client
/// that leaves then gets its job finished and charged, and the upload written beside it is
/// kept: listed once, counted once against the quota, found again on restart.
#[tokio::test]
async fn a_client_leaving_while_the_model_works_keeps_its_upload_listed_and_counted_once() {
    let dir = temp_dir("upstream-leave");
    let store = LocalFileStore::open(&dir).unwrap();
    let s = setup_with(Script::Slow, "", |builder| {
        builder.store(store).quota(Quota::new(0, 3))
    })
    .await;
    let (server, alice, source) = (&s.server, UserId::new("alice").unwrap(), png(10, 10));
    leave_while_the_model_works(&s).await;
    s.mock.finish();
    let b = wait_for_no_hold(&s.ledger, &alice).await;
    assert_eq!(
        (b.available, b.held, b.charged),
        (90, 0, 10),
        "the render charged"
    );

    // The writes outlive the request: listed once durable (a busy disk can take a while).
    let mut keys = Vec::new();
    for _ in 0..400 {
        let list = server
            .call(http::Method::GET, "/api/v1/files", ALICE_KEY)
            .await
            .json();
        keys = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["key"].as_str().unwrap().to_owned())
            .collect::<Vec<String>>();
        if keys.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        keys.len(),
        2,
        "the source and the output, once each: {keys:?}"
    );
    let source_key = keys
        .iter()
        .find(|k| !k.ends_with("_generation.png"))
        .expect("the source is listed");
    let path = format!("/api/v1/files/{source_key}");
    let stored = server.call(http::Method::GET, &path, ALICE_KEY).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body.as_ref(), source.as_slice());
    // Found again by a store opened afresh on the directory, as after a restart.
    let reopened = LocalFileStore::open(&dir).unwrap();
    assert_eq!(reopened.usage(&alice).await.unwrap().files, 2);
    // Counted once: of a quota of three files, one is left, and only one.
    let uploaded = server.upload(ALICE_KEY, &[("b.png", &source)]).await;
    assert_eq!(uploaded.uploaded_keys().len(), 1);
    let refused = server.upload(ALICE_KEY, &[("c.png", &source)]).await;
    assert_eq!(
        refused.error().0,
        413,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_through_the_gateway_to_the_upstream() {
    let s = setup(Script::Images(2)).await;
    let dir = temp_dir("sdk-upstream");
    std::fs::write(dir.join("photo.png"), png(16, 16)).unwrap();
    let script = r#"
import base64, os, openai
client = openai.OpenAI(base_url=os.environ["GATEWAY_URL"] + "/v1", api_key=os.environ["GATEWAY_KEY"], max_retries=0)
with open(os.environ["PNG_PATH"], "rb") as f:
    r = client.images.edit(model="gpt-image-2", image=f, prompt="make it blue", n=2)
assert len(r.data) == 2, r
assert base64.b64decode(r.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
print("ok", len(r.model_dump()["picklyone_generation_ids"]))
"#;
    let url = format!("http://{}", s.server.addr);
    let png_path = ("PNG_PATH", dir.join("photo.png").into_os_string());
    let (out, err) = python::run(script, url, vec![png_path]).await;
    assert_eq!(out, "ok 2", "{err}");
    assert_eq!(s.available().await, (80, 0));
    assert_eq!(s.mock.received.lock().unwrap()[0].files[0].1, png(16, 16));
}

impl Received {
    fn text(&self, name: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[tokio::test]
async fn a_masked_edit_forwards_the_mask_and_every_field() {
    let s = setup(Script::Images(1)).await;
    let mask = png(6, 6);
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "fill the hole")
        .text("quality", "high")
        .text("background", "transparent")
        .text("output_format", "webp")
        .text("output_compression", "70")
        .text("moderation", "low")
        .text("input_fidelity", "high")
        .text("user", "end-user-7")
        .file("image", "a.png", "image/png", &png(6, 6))
        .file("mask", "m.png", "image/png", &mask);
    let reply = s.server.edit_form(ALICE_KEY, form).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let received = s.mock.received.lock().unwrap()[0].clone();
    assert_eq!(received.path, "/v1/images/edits");
    let names: Vec<&str> = received.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["image", "mask"]);
    assert_eq!(received.files[1].1, mask, "the mask's bytes, unchanged");
    for (name, value) in [
        ("model", "upstream-model-x"),
        ("prompt", "fill the hole"),
        ("quality", "high"),
        ("background", "transparent"),
        ("output_format", "webp"),
        ("output_compression", "70"),
        ("moderation", "low"),
        ("input_fidelity", "high"),
        ("user", "end-user-7"),
    ] {
        assert_eq!(received.text(name), Some(value), "{name}");
    }
    assert_eq!(received.text("stream"), None, "not streamed");
}

#[tokio::test]
async fn a_generation_goes_as_json_to_the_generations_endpoint() {
    let s = setup_at(Script::Images(2), "/v1").await;
    let req = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-image-2","prompt":"a lighthouse","n":2,"size":"1024x1536","moderation":"auto","input_fidelity":"high"}"#,
        )))
        .unwrap();
    let reply = s.server.send(req).await;
    assert_eq!(reply.images().len(), 2);
    let received = s.mock.received.lock().unwrap()[0].clone();
    assert_eq!(received.path, "/v1/images/generations");
    assert_eq!(
        received.authorization.as_deref(),
        Some("Bearer sk-upstream-secret-4242")
    );
    assert_eq!(received.text("model"), Some("upstream-model-x"));
    assert_eq!(received.text("n"), Some("2"));
    assert_eq!(received.text("size"), Some("1024x1536"));
    assert_eq!(received.text("moderation"), Some("auto"));
    assert_eq!(received.text("input_fidelity"), None, "an edit-only field");
    assert!(received.files.is_empty());
    assert_eq!(s.available().await, (80, 0));
}

#[tokio::test]
async fn an_upstream_event_stream_is_relayed_and_its_completed_images_charged() {
    let s = setup(Script::Stream).await;
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .text("n", "2")
        .text("stream", "true")
        .text("partial_images", "2")
        .file("image", "a.png", "image/png", &png(6, 6));
    let reply = s.server.edit_form(ALICE_KEY, form).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "image_edit.partial_image",
            "image_edit.partial_image",
            "image_edit.completed",
            "image_edit.completed"
        ]
    );
    let received = s.mock.received.lock().unwrap()[0].clone();
    assert_eq!(received.text("stream"), Some("true"));
    assert_eq!(received.text("partial_images"), Some("2"));
    assert_eq!(s.available().await, (80, 0));
}

/// A streamed edit whose client leaves after the first partial image: the gateway reads the
/// upstream's stream to its end (the provider bills it), charges the image and keeps it.
#[tokio::test]
async fn a_streamed_upstream_job_left_after_a_partial_is_read_to_its_end_and_charged() {
    let s = setup(Script::SlowStream).await;
    let (content_type, body) = edit(1)
        .text("stream", "true")
        .text("partial_images", "2")
        .finish();
    let mut socket = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let head = format!(
        "POST {EDITS} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    let mut read = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !read.contains("image_edit.partial_image") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a partial: {read}");
        read.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(socket);
    s.mock.finish();
    let alice = UserId::new("alice").unwrap();
    let b = wait_for_no_hold(&s.ledger, &alice).await;
    assert_eq!(
        s.mock.rendered.load(Ordering::SeqCst),
        1,
        "the stream was read to its end"
    );
    assert_eq!((b.available, b.held, b.charged), (90, 0, 10));
    assert!(!s.mock.cancelled.load(Ordering::SeqCst));
}

/// The admin key of [`routed_binary`]: its metrics are read with it.
const ROUTED_ADMIN_KEY: &str = "admin_routed_0123456789";

/// The binary with `[models."gpt-image-2"]` served by `deployments` (TOML of its
/// `[[upstreams]]` tables); alice holds 100, 10 a image.
fn routed_binary(deployments: &str) -> (common::binary::Process, TestServer) {
    routed_binary_with(deployments, &[])
}

/// [`routed_binary`] with `env` over its settings.
pub(crate) fn routed_binary_with(
    deployments: &str,
    env: &[(&str, &str)],
) -> (common::binary::Process, TestServer) {
    let dir = temp_dir("routed");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!("[models.\"gpt-image-2\"]\nprice_per_image = 10\n{deployments}"),
    )
    .unwrap();
    let process = common::binary::Process::start_args(
        &common::binary::gateway_binary(),
        &dir,
        0,
        &["--config", config.to_str().unwrap()],
        &[
            &[
                ("UPSTREAM_TEST_KEY", UPSTREAM_KEY),
                ("GATEWAY_ADMIN_KEY", ROUTED_ADMIN_KEY),
            ],
            env,
        ]
        .concat(),
    );
    let server = TestServer::at(process.addr);
    (process, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_two_deployments_falls_back_when_the_work_was_not_taken() {
    let failing = start_mock(Script::ServerError).await;
    let working = start_mock(Script::Images(1)).await;
    let (_process, server) = routed_binary(&format!(
        "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\nkey_env = \"UPSTREAM_TEST_KEY\"\npriority = 1\n\
         [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\nkey_env = \"UPSTREAM_TEST_KEY\"\nmodel = \"gpt-image-1.5\"\ncost_per_image = 2\n",
        failing.addr, working.addr
    ));
    for _ in 0..5 {
        let reply = server.edit_form(ALICE_KEY, edit(1)).await;
        assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    }
    // The first deployment answered 500 three times, then rested; the second served all
    // five, under its own name for the model, with the key from the environment.
    assert_eq!(failing.calls.load(Ordering::SeqCst), 3);
    assert_eq!(working.calls.load(Ordering::SeqCst), 5);
    let received = working.received.lock().unwrap().clone();
    assert!(received
        .iter()
        .all(|r| r.text("model") == Some("gpt-image-1.5")));
    assert!(received
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {UPSTREAM_KEY}")[..])));
    // Charged once per image: 100 = 50 available + 50 charged.
    assert_eq!(server.balance(ALICE_KEY).await, (50, 0));
    // Each deployment seen by the operator: calls by outcome, fallbacks, the rest, and what
    // the second bills (5 images x 2) beside the 50 charged.
    let metrics = server
        .call(http::Method::GET, "/metrics", ROUTED_ADMIN_KEY)
        .await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        r#"image_gateway_upstream_requests_total{deployment="gpt-image-2#0",outcome="upstream_busy"} 3"#,
        r#"image_gateway_upstream_requests_total{deployment="gpt-image-2#1",outcome="ok"} 5"#,
        r#"image_gateway_upstream_fallbacks_total{deployment="gpt-image-2#0"} 3"#,
        r#"image_gateway_upstream_cooldowns_total{deployment="gpt-image-2#0"} 1"#,
        r#"image_gateway_upstream_cost_total{deployment="gpt-image-2#1"} 10"#,
        r#"image_gateway_upstream_in_flight{deployment="gpt-image-2#1"} 0"#,
        r#"image_gateway_upstream_duration_seconds_count{deployment="gpt-image-2#1"} 5"#,
        r#"image_gateway_money_charged_total{model="gpt-image-2"} 50"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // The usage log names the deployment that rendered each charge.
    let usage = server
        .call(http::Method::GET, "/api/v1/usage", ALICE_KEY)
        .await
        .json();
    let upstreams: Vec<_> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["upstream"].as_str().unwrap_or("none").to_owned())
        .collect();
    assert_eq!(upstreams, vec!["gpt-image-2#1"; 5], "{usage}");
    // And their state now: the first rests, the second takes jobs.
    let states = server
        .call(http::Method::GET, "/admin/v1/upstreams", ROUTED_ADMIN_KEY)
        .await
        .json();
    let model = &states["data"][0];
    assert_eq!(model["model"], "gpt-image-2", "{states}");
    let (first, second) = (&model["deployments"][0], &model["deployments"][1]);
    assert_eq!(first["name"], "gpt-image-2#0");
    assert_eq!(
        (first["priority"].as_i64(), second["priority"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(first["available"], false, "{states}");
    assert!(first["resting_until_ms"].as_u64().unwrap() > 0, "{states}");
    assert_eq!(second["available"], true, "{states}");
    assert!(second["resting_until_ms"].is_null());
    assert_eq!(second["in_flight"], 0);
    // Not for a user's key.
    let refused = server
        .call(http::Method::GET, "/admin/v1/upstreams", ALICE_KEY)
        .await;
    assert_eq!(refused.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_refused_does_not_fall_back() {
    let refusing = start_mock(Script::BadSize).await;
    let working = start_mock(Script::Images(1)).await;
    let (_process, server) = routed_binary(&format!(
        "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\npriority = 1\n\
         [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
        refusing.addr, working.addr
    ));
    let reply = server.edit_form(ALICE_KEY, edit(1)).await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert_eq!(reply.error().2.as_deref(), Some("size"));
    assert_eq!(working.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server.balance(ALICE_KEY).await, (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_charges_the_models_violation_fee_once_and_never_falls_back() {
    let refusing = start_mock(Script::Moderation).await;
    let working = start_mock(Script::Images(2)).await;
    let (_process, server) = routed_binary(&format!(
        "violation_fee = 3\n[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\npriority = 1\n\
         [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
        refusing.addr, working.addr
    ));
    let reply = server.edit_form(ALICE_KEY, edit(2)).await;
    assert_eq!(
        (reply.error().0, reply.error().1.as_str()),
        (400, "content_policy_violation"),
        "{:?}",
        reply.body
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("fee for a refused request, 3, was charged"),
        "{message}"
    );
    assert!(
        !message.contains("10.1.2.3"),
        "the upstream's words stay out: {message}"
    );
    assert_eq!(working.calls.load(Ordering::SeqCst), 0, "no fallback");
    // 20 held, 3 charged, 17 back: 100 = 97 available + 3 charged.
    assert_eq!(server.balance(ALICE_KEY).await, (97, 0));
    let usage = server
        .call(http::Method::GET, "/api/v1/usage", ALICE_KEY)
        .await
        .json();
    let entry = &usage["data"][0];
    assert_eq!(entry["status"], "violation_fee", "{usage}");
    assert_eq!(
        entry["upstream"], "gpt-image-2#0",
        "the deployment that refused"
    );
    assert_eq!(
        (
            entry["held"].as_u64(),
            entry["charged"].as_u64(),
            entry["released"].as_u64(),
            entry["n_returned"].as_u64()
        ),
        (Some(20), Some(3), Some(17), Some(0)),
        "{usage}"
    );
    assert_eq!(usage["data"].as_array().unwrap().len(), 1);
}

/// The provider bills a refusal it reached after its client left: the fee is charged once,
/// the rest of the hold released, and nothing is rendered or listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_refusal_is_charged_the_violation_fee_once() {
    let refusing = start_mock(Script::LateModeration).await;
    let (_process, server) = routed_binary(&format!(
        "violation_fee = 3\n[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
        refusing.addr
    ));
    let server = Arc::new(server);
    let client = {
        let server = server.clone();
        tokio::spawn(async move { server.edit_form(ALICE_KEY, edit(2)).await })
    };
    refusing.calls_reach(1).await;
    assert_eq!(server.balance(ALICE_KEY).await, (80, 20), "n x 10 held");
    client.abort();
    let _ = client.await;
    refusing.finish();
    let waiting = Instant::now();
    while server.balance(ALICE_KEY).await.1 != 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "the hold never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 20 held, 3 charged, 17 back: 100 = 97 available + 3 charged.
    assert_eq!(server.balance(ALICE_KEY).await, (97, 0));
    assert_eq!(refusing.calls.load(Ordering::SeqCst), 1, "sent once");
    assert!(
        !refusing.cancelled.load(Ordering::SeqCst),
        "the call was read to its answer"
    );
    let usage = server
        .call(http::Method::GET, "/api/v1/usage", ALICE_KEY)
        .await
        .json();
    assert_eq!(usage["data"].as_array().unwrap().len(), 1, "{usage}");
    let entry = &usage["data"][0];
    assert_eq!(entry["status"], "violation_fee", "{usage}");
    assert_eq!(
        (
            entry["charged"].as_u64(),
            entry["released"].as_u64(),
            entry["n_returned"].as_u64()
        ),
        (Some(3), Some(17), Some(0)),
        "{usage}"
    );
    let files = server
        .call(http::Method::GET, "/api/v1/files", ALICE_KEY)
        .await
        .json();
    let outputs = files["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["key"].as_str().unwrap().ends_with("_generation.png"))
        .count();
    assert_eq!(outputs, 0, "no image was made: {files}");
}

#[tokio::test]
async fn azure_deployments_get_azure_s_shape_and_its_unsupported_values_are_refused() {
    let mock = start_mock(Script::Images(1)).await;
    let upstream =
        UpstreamBackend::builder(format!("http://{}/openai/deployments/image-dep", mock.addr))
            .azure(image_gateway::backend::DEFAULT_AZURE_API_VERSION)
            .api_key(UPSTREAM_KEY)
            .build()
            .unwrap();
    let (server, ledger) = billed(upstream).await;
    let form = |size: &str, format: &str| {
        Form::new()
            .text("model", "gpt-image-2")
            .text("prompt", "make it blue")
            .text("size", size)
            .text("output_format", format)
            .text("quality", "high")
            .text("moderation", "low")
            .text("input_fidelity", "high")
            .text("user", "u-7")
            .file("image", "a.png", "image/png", &png(10, 10))
    };
    let reply = server.edit_form(ALICE_KEY, form("1024x1536", "jpeg")).await;
    assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    let received = mock.received.lock().unwrap()[0].clone();
    assert_eq!(received.path, "/openai/deployments/image-dep/images/edits");
    assert_eq!(
        received.query.as_deref(),
        Some("api-version=2025-04-01-preview")
    );
    assert_eq!(received.api_key.as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(received.authorization, None);
    // Each field's fate: sent as asked, or (the model, `response_format`) not sent.
    for (field, value) in [
        ("prompt", "make it blue"),
        ("size", "1024x1536"),
        ("output_format", "jpeg"),
        ("quality", "high"),
        ("moderation", "low"),
        ("input_fidelity", "high"),
        ("user", "u-7"),
        ("n", "1"),
    ] {
        assert_eq!(received.text(field), Some(value), "{field}");
    }
    assert_eq!(
        received.text("model"),
        None,
        "the deployment names the model"
    );
    assert_eq!(received.text("response_format"), None);
    assert_eq!(received.files.len(), 1);
    // Refused before anything is sent, nothing charged.
    for (size, format, param) in [
        ("1024x1024", "webp", "output_format"),
        ("1792x1024", "png", "size"),
    ] {
        let reply = server.edit_form(ALICE_KEY, form(size, format)).await;
        assert_eq!(reply.status, 400, "{:?}", reply.body);
        assert_eq!(reply.error().2.as_deref(), Some(param));
    }
    assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
    let balance = ledger
        .balance(&UserId::new("alice").unwrap())
        .await
        .unwrap();
    assert_eq!((balance.available, balance.held), (90, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_drop_fields_are_never_sent_and_the_rest_are() {
    let mock = start_mock(Script::Images(1)).await;
    let (_process, server) = routed_binary(&format!(
        "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\ndrop_fields = [\"input_fidelity\", \"user\"]\n",
        mock.addr
    ));
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "make it blue")
        .text("quality", "high")
        .text("input_fidelity", "high")
        .text("user", "u-7")
        .file("image", "a.png", "image/png", &png(10, 10));
    let reply = server.edit_form(ALICE_KEY, form).await;
    assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    let received = mock.received.lock().unwrap()[0].clone();
    assert_eq!(received.text("input_fidelity"), None);
    assert_eq!(received.text("user"), None);
    for (field, value) in [("prompt", "make it blue"), ("quality", "high"), ("n", "1")] {
        assert_eq!(received.text(field), Some(value), "{field}");
    }
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
    // The request itself cannot be dropped.
    let refused = UpstreamBackend::builder(format!("http://{}", mock.addr))
        .drop_fields(["prompt"])
        .build()
        .unwrap_err()
        .to_string();
    assert!(refused.contains("`prompt` cannot be dropped"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_max_in_flight_holds_under_fifty_concurrent_jobs() {
    // The first deployment works until told, then answers 429 (the work was not taken):
    // while its five slots are busy, the other 45 jobs go to the second, and the five fall
    // back to it after the 429.
    let bounded = start_mock(Script::Late429).await;
    let open = start_mock(Script::Images(1)).await;
    let (_process, server) = routed_binary_with(
        &format!(
            "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\npriority = 1\nmax_in_flight = 5\n\
             [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
            bounded.addr, open.addr
        ),
        &[("GATEWAY_DEMO_BALANCE", "500")],
    );
    let server = std::sync::Arc::new(server);
    let jobs: Vec<_> = (0..50)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.edit_form(ALICE_KEY, edit(1)).await })
        })
        .collect();
    open.calls_reach(45).await;
    assert_eq!(
        bounded.calls.load(Ordering::SeqCst),
        5,
        "never more than its bound"
    );
    bounded.finish();
    for job in jobs {
        let reply = job.await.unwrap();
        assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    }
    assert_eq!(bounded.calls.load(Ordering::SeqCst), 5);
    assert_eq!(open.calls.load(Ordering::SeqCst), 50);
    // 50 images charged once each: 500 = 0 available + 500 charged.
    assert_eq!(server.balance(ALICE_KEY).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_deployment_free_is_503_upstream_unavailable_with_retry_after_and_charges_nothing() {
    // One deployment, one job at a time: while it works, a second job finds none free.
    let busy = start_mock(Script::Slow).await;
    let (_process, server) = routed_binary(&format!(
        "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\nmax_in_flight = 1\n",
        busy.addr
    ));
    let server = std::sync::Arc::new(server);
    let first = {
        let server = server.clone();
        tokio::spawn(async move { server.edit_form(ALICE_KEY, edit(1)).await })
    };
    busy.calls_reach(1).await;
    let refused = server.edit_form(ALICE_KEY, edit(1)).await;
    assert_eq!(
        refused.error(),
        (503, "upstream_unavailable".into(), None),
        "{:?}",
        refused.body
    );
    assert!(refused.headers.contains_key("retry-after"));
    busy.finish();
    assert_eq!(first.await.unwrap().images().len(), 1);
    assert_eq!(busy.calls.load(Ordering::SeqCst), 1);
    // The first charged, the second held and released: 100 = 90 + 10.
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
}

/// A generation of one image as `key`, through `server`.
async fn generate(server: &TestServer, key: &str) -> Reply {
    let req = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-image-2","prompt":"a lighthouse"}"#,
        )))
        .unwrap();
    server.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_over_deployments_weighted_three_to_one_land_within_five_points() {
    let heavy = start_mock(Script::Images(1)).await;
    let light = start_mock(Script::Images(1)).await;
    let (_process, server) = routed_binary_with(
        &format!(
            "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\nweight = 3\n\
             [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\nweight = 1\n",
            heavy.addr, light.addr
        ),
        &[("GATEWAY_DEMO_BALANCE", "10000")],
    );
    let server = Arc::new(server);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (server, next) = (server.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < 1000 {
                    let reply = generate(&server, ALICE_KEY).await;
                    assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let (a, b) = (
        heavy.calls.load(Ordering::SeqCst),
        light.calls.load(Ordering::SeqCst),
    );
    assert_eq!(a + b, 1000);
    assert!(
        (700..=800).contains(&a),
        "75% within five points: {a} and {b}"
    );
    // Each job charged once: 10,000 = 0 available + 10,000 charged.
    assert_eq!(server.balance(ALICE_KEY).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_partial_came_from_one_deployment_never_switches() {
    let failing = start_mock(Script::StreamThenError).await;
    let other = start_mock(Script::Stream).await;
    let (_process, server) = routed_binary(&format!(
        "[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\npriority = 1\n\
         [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
        failing.addr, other.addr
    ));
    let form = edit(1).text("stream", "true").text("partial_images", "1");
    let reply = server.edit_form(ALICE_KEY, form).await;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let partials = text.matches(r#""type":"image_edit.partial_image""#).count();
    assert_eq!(partials, 1, "{text}");
    assert!(text.contains(r#""code":"upstream_error""#), "{text}");
    assert!(!text.contains("image_edit.completed"), "{text}");
    // The first deployment's partial was shown: its failure is the job's, not a reason
    // to render again elsewhere; no image came, nothing is charged.
    assert_eq!(failing.calls.load(Ordering::SeqCst), 1);
    assert_eq!(other.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server.balance(ALICE_KEY).await, (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_resting_on_one_replica_rests_on_the_other_through_redis() {
    let Some((url, prefix)) = common::services::fresh_redis("shared rests").await else {
        return;
    };
    let failing = start_mock(Script::ServerError).await;
    let working = start_mock(Script::Images(1)).await;
    let deployments = format!(
        "cooldown_failures = 1\ncooldown_secs = 600\n\
         [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\npriority = 1\n\
         [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
        failing.addr, working.addr
    );
    let env = [
        ("GATEWAY_REDIS_URL", url.as_str()),
        ("GATEWAY_REDIS_PREFIX", prefix.as_str()),
    ];
    let (_first, one) = routed_binary_with(&deployments, &env);
    let (_second, other) = routed_binary_with(&deployments, &env);
    // On the first replica the deployment fails once, falls back, and rests.
    assert_eq!(one.edit_form(ALICE_KEY, edit(1)).await.images().len(), 1);
    assert_eq!(failing.calls.load(Ordering::SeqCst), 1);
    // The second replica never saw it fail, and skips it all the same.
    for _ in 0..3 {
        let reply = other.edit_form(ALICE_KEY, edit(1)).await;
        assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    }
    assert_eq!(failing.calls.load(Ordering::SeqCst), 1, "it rests on both");
    assert_eq!(working.calls.load(Ordering::SeqCst), 4);
    // Each replica's own ledger: one image and three, each charged once.
    assert_eq!(one.balance(ALICE_KEY).await, (90, 0));
    assert_eq!(other.balance(ALICE_KEY).await, (70, 0));
}

/// A server that resets every connection as soon as it is accepted, before reading a byte.
async fn start_resetting() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // A zero linger turns the close into a reset (and drops at once: no data is
            // left to send, so nothing blocks).
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_the_upstream_never_took_falls_back_and_is_charged_once() {
    let (closed, port) = closed_port();
    let reset = start_resetting().await;
    let (too_many, server_error, unavailable) = (
        start_mock(Script::TooMany).await,
        start_mock(Script::ServerError).await,
        start_mock(Script::Unavailable).await,
    );
    // An edit of a large image (noise, which PNG cannot shrink): a reset comes while its
    // body is still being written.
    let mut seed = 0x2545_f491_u32;
    let noise = image::RgbaImage::from_fn(1100, 1100, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        image::Rgba(seed.to_le_bytes())
    });
    let mut large = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut large, image::ImageFormat::Png).unwrap();
    let large = large.into_inner();
    assert!(large.len() > 4_000_000, "{}", large.len());
    let faults = [
        ("connection refused", format!("http://127.0.0.1:{port}")),
        (
            "reset before the request was sent",
            format!("http://{reset}"),
        ),
        ("429", format!("http://{}", too_many.addr)),
        ("500", format!("http://{}", server_error.addr)),
        ("503", format!("http://{}", unavailable.addr)),
    ];
    for (fault, url) in faults {
        let working = start_mock(Script::Images(1)).await;
        let (_process, server) = routed_binary(&format!(
            "cooldown_failures = 1\ncooldown_secs = 30\n\
             [[models.\"gpt-image-2\".upstreams]]\nurl = \"{url}\"\npriority = 1\n\
             [[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{}\"\n",
            working.addr
        ));
        let form = Form::new()
            .text("model", "gpt-image-2")
            .text("prompt", "make it blue")
            .file("image", "a.png", "image/png", &large);
        let reply = server.edit_form(ALICE_KEY, form).await;
        assert_eq!(reply.status, 200, "{fault}: {:?}", reply.body);
        assert_eq!(reply.images().len(), 1, "{fault}");
        assert_eq!(working.calls.load(Ordering::SeqCst), 1, "{fault}");
        // Charged once: 100 = 90 available + 10 charged.
        assert_eq!(server.balance(ALICE_KEY).await, (90, 0), "{fault}");
        if fault == "429" {
            // Its Retry-After (120 s) outlasts the model's 30 s rest, and wins.
            let states = server
                .call(http::Method::GET, "/admin/v1/upstreams", ROUTED_ADMIN_KEY)
                .await
                .json();
            let until = states["data"][0]["deployments"][0]["resting_until_ms"]
                .as_u64()
                .unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert!(until > now + 100_000, "rests past 100 s: {states}");
        }
    }
    drop(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_past_the_timeout_falls_back_only_where_the_operator_allows_it() {
    use image_gateway::backend::{Deployment, RoutedBackend};
    for allowed in [false, true] {
        let hanging = start_mock(Script::Hang).await;
        let working = start_mock(Script::Images(1)).await;
        let deployment = |mock: &Mock, name: &str, priority: i32| {
            let backend = UpstreamBackend::builder(format!("http://{}", mock.addr))
                .timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            Deployment::new(name, backend).priority(priority)
        };
        let routed = RoutedBackend::new([
            deployment(&hanging, "hangs", 1),
            deployment(&working, "works", 0),
        ])
        .retry_after_timeout(allowed);
        let (server, ledger) = billed(routed).await;
        let reply = server.edit_form(ALICE_KEY, edit(1)).await;
        let alice = UserId::new("alice").unwrap();
        let b = ledger.balance(&alice).await.unwrap();
        // What the upstreams rendered (and would bill) is what was charged, each once.
        let rendered =
            hanging.rendered.load(Ordering::SeqCst) + working.rendered.load(Ordering::SeqCst);
        assert_eq!(b.charged as usize, rendered * 10, "allowed: {allowed}");
        assert_eq!(b.available + b.held as i64 + b.charged as i64, 100);
        if allowed {
            assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
            assert_eq!(working.calls.load(Ordering::SeqCst), 1);
            assert_eq!((b.available, b.held), (90, 0));
        } else {
            // The first may still render and bill: the job fails rather than pay twice.
            assert_eq!(reply.status, 502, "{:?}", reply.body);
            assert_eq!(working.calls.load(Ordering::SeqCst), 0);
            assert_eq!((b.available, b.held), (100, 0));
        }
    }
}
