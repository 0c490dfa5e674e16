//! `/metrics`: scraped before and after known traffic, the counters move by exactly what was
//! sent, held, charged and released; the scrape is behind the admin key on the public
//! listener, open on its own listener, and never carries a key.

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::binary::{gateway_binary, Process};
use common::*;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use image_gateway::backend::{BackendError, Failure, ImageBackend};
use image_gateway::catalog::ModelSpec;
use image_gateway::job::{EditJob, Image};
use image_gateway::ledger::{Ledger, MemoryLedger};
use image_gateway::metrics::Metrics;
use image_gateway::ratelimit::RateLimitLayer;
use image_gateway::server::ServeOptions;
use image_gateway::Gateway;
use tokio::io::AsyncWriteExt;

const ADMIN_KEY: &str = "adm_metrics_secret_0123456789";

/// One scrape: every sample line as `series -> value`.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape { text, samples }
    }

    /// A series' value; a series missing from the scrape fails the test (a renamed or
    /// unregistered series must not pass as 0).
    #[track_caller]
    fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(value) => *value,
            None => panic!("{series} is missing from the scrape:\n{}", self.text),
        }
    }

    /// A series' value in a scrape taken before anything touched it: absent is 0.
    fn before(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(addr: SocketAddr, key: Option<&str>) -> Scrape {
    let mut req = Request::get("/metrics");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let reply = send(addr, req.body(Empty::<Bytes>::new()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/openmetrics-text"));
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text)
}

fn edit_form(n: u32) -> Form {
    Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "make it blue")
        .text("n", &n.to_string())
        .file("image", "a.png", "image/png", &png(8, 8))
}

const EDIT_OK: &str = r#"image_gateway_requests_total{route="/v1/images/edits",method="POST",status="200",model="gpt-image-2"}"#;
const HELD: &str = r#"image_gateway_money_held_total{model="gpt-image-2"}"#;
const CHARGED: &str = r#"image_gateway_money_charged_total{model="gpt-image-2"}"#;
const RELEASED: &str = r#"image_gateway_money_released_total{model="gpt-image-2"}"#;
const REQUESTED: &str = r#"image_gateway_images_requested_total{model="gpt-image-2"}"#;
const RETURNED: &str = r#"image_gateway_images_returned_total{model="gpt-image-2"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_counts_known_traffic_exactly_and_never_shows_a_key() {
    let dir = temp_dir("metrics-binary");
    let port = 0;
    let gateway = Process::start_with(
        &gateway_binary(),
        &dir,
        port,
        &[
            ("GATEWAY_ADMIN_KEY", ADMIN_KEY),
            ("GATEWAY_METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let public = TestServer::at(gateway.addr);
    // The scrape listener's port, as the binary printed it.
    let line = gateway.printed("metrics: GET http://");
    let scraper: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no scrape address in {line:?}"));

    // The public listener: the admin key only; a user key is not enough.
    let anonymous = public
        .send(
            Request::get("/metrics")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
    assert_eq!(anonymous.error().1, "invalid_api_key");
    let as_user = public
        .send(
            Request::get("/metrics")
                .header("authorization", format!("Bearer {ALICE_KEY}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
    assert_eq!(as_user.status, StatusCode::UNAUTHORIZED);

    let before = scrape(scraper, None).await;

    // Known traffic: two edits (1 + 2 images at 10 each), one refused for want of money
    // (10 images = 100 > the 70 left), one with a wrong key.
    assert_eq!(
        public.edit_form(ALICE_KEY, edit_form(1)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        public.edit_form(ALICE_KEY, edit_form(2)).await.status,
        StatusCode::OK
    );
    let poor = public.edit_form(ALICE_KEY, edit_form(10)).await;
    assert_eq!(poor.error().1, "insufficient_balance");
    let wrong = public
        .edit_form("pk_live_wrong_key_000", edit_form(1))
        .await;
    assert_eq!(wrong.error().1, "invalid_api_key");

    let after = scrape(scraper, None).await;
    let moved = |series: &str| after.get(series) - before.before(series);
    assert_eq!(moved(EDIT_OK), 2.0);
    assert_eq!(
        moved(
            r#"image_gateway_requests_total{route="/v1/images/edits",method="POST",status="402",model="gpt-image-2"}"#
        ),
        1.0
    );
    // Refused before normalization: no model is known.
    assert_eq!(
        moved(
            r#"image_gateway_requests_total{route="/v1/images/edits",method="POST",status="401",model=""}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"image_gateway_errors_total{code="insufficient_balance"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"image_gateway_errors_total{code="invalid_api_key"}"#),
        1.0
    );
    assert_eq!(moved(HELD), 30.0);
    assert_eq!(moved(CHARGED), 30.0);
    assert_eq!(moved(RELEASED), 0.0);
    assert_eq!(moved(REQUESTED), 3.0);
    assert_eq!(moved(RETURNED), 3.0);
    assert_eq!(after.get("image_gateway_holds_open"), 0.0);
    assert_eq!(
        moved(r#"image_gateway_backend_duration_seconds_count{operation="edit"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"image_gateway_request_duration_seconds_count{route="/v1/images/edits"}"#),
        4.0
    );
    assert!(moved(r#"image_gateway_request_bytes_total{route="/v1/images/edits"}"#) > 0.0);
    assert!(moved(r#"image_gateway_response_bytes_total{route="/v1/images/edits"}"#) > 0.0);

    // The ledger agrees: 100 - 30.
    let balance = public
        .call(http::Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .json();
    assert_eq!(balance["available"], 70);

    // A connection that sent one byte of a request is open; closed, it is not. The
    // connections of the requests above are first seen closed by the server: a client's
    // close reaches it a moment later.
    let mut open = scrape(scraper, None)
        .await
        .get("image_gateway_connections_open");
    for _ in 0..500 {
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        open = scrape(scraper, None)
            .await
            .get("image_gateway_connections_open");
    }
    assert_eq!(open, 0.0, "the requests' connections are closed");
    let mut idle = tokio::net::TcpStream::connect(public.addr).await.unwrap();
    idle.write_all(b"G").await.unwrap();
    for _ in 0..100 {
        open = scrape(scraper, None)
            .await
            .get("image_gateway_connections_open");
        if open >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open, 1.0);
    drop(idle);
    for _ in 0..200 {
        open = scrape(scraper, None)
            .await
            .get("image_gateway_connections_open");
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open, 0.0);

    // The same text behind the admin key on the public listener.
    let behind_key = scrape(public.addr, Some(ADMIN_KEY)).await;
    assert_eq!(behind_key.get(HELD), after.get(HELD));

    for text in [&after.text, &behind_key.text] {
        assert!(!text.contains(ALICE_KEY) && !text.contains(ADMIN_KEY));
        assert!(!text.contains("pk_live"), "no key, nor a key's prefix");
        assert!(!text.contains("alice"), "no user id without the opt-in");
    }
}

/// Fails every job with the given failure, after a moment of work.
struct Failing(Failure);

#[async_trait]
impl ImageBackend for Failing {
    async fn edit(&self, _job: &EditJob) -> Result<Vec<Image>, BackendError> {
        Err(BackendError::failed(self.0, "the model timed out"))
    }
}

#[tokio::test]
async fn failures_release_what_they_held_and_refusals_count_by_code() {
    let metrics = Metrics::with_user_labels();
    let ledger = std::sync::Arc::new(MemoryLedger::new());
    let alice = image_gateway::auth::UserId::new("alice").unwrap();
    ledger.deposit(&alice, 1000, "opening").await.unwrap();
    let gateway = Gateway::builder()
        .keys(keys())
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(4, 25))
        .backend(Failing(Failure::Timeout))
        .rate_limit(RateLimitLayer::new().per_minute(NonZeroU32::new(2).unwrap()))
        .admin_key(ADMIN_KEY)
        .metrics(metrics.clone())
        .build();
    let mut options = ServeOptions::default();
    options.metrics = Some(metrics.clone());
    let server = TestServer::start_with(gateway, options).await;

    let failed = server.edit_form(ALICE_KEY, edit_form(3)).await;
    assert_eq!(failed.error().1, "upstream_error");
    let second = server.edit_form(ALICE_KEY, edit_form(1)).await;
    assert_eq!(second.status, StatusCode::BAD_GATEWAY);
    let limited = server.edit_form(ALICE_KEY, edit_form(1)).await;
    assert_eq!(limited.error().1, "rate_limit_exceeded");

    let text = metrics.encode();
    let scrape = Scrape::parse(text.clone());
    assert_eq!(
        scrape.get(r#"image_gateway_backend_errors_total{kind="upstream_timeout"}"#),
        2.0
    );
    assert_eq!(scrape.get(HELD), 100.0, "75 + 25");
    assert_eq!(scrape.get(RELEASED), 100.0);
    assert_eq!(scrape.get(CHARGED), 0.0);
    assert_eq!(scrape.get(REQUESTED), 4.0);
    assert_eq!(scrape.get(RETURNED), 0.0);
    assert_eq!(scrape.get("image_gateway_holds_open"), 0.0);
    assert_eq!(
        scrape.get(r#"image_gateway_errors_total{code="rate_limit_exceeded"}"#),
        1.0
    );
    assert_eq!(
        scrape.get(r#"image_gateway_user_requests_total{user="alice"}"#),
        3.0
    );
    assert_eq!(ledger.balance(&alice).await.unwrap().available, 1000);

    // Probing paths adds no series: every unknown path is `other`.
    for path in ["/a", "/b/c", "/wp-admin", "/v1/images/edits/x"] {
        let req = Request::get(path)
            .header("authorization", format!("Bearer {BOB_KEY}"))
            .body(Full::<Bytes>::default())
            .unwrap();
        server.send(req).await;
    }
    let text = metrics.encode();
    assert!(text.contains(r#"route="other""#));
    assert!(!text.contains("wp-admin") && !text.contains("/b/c"));
}
