//! An OpenAI-compatible images API that does no image work: the floor under the gateway's
//! upstream path in `benches/upstream.sh`.
//!
//! `POST /v1/images/edits` and `/v1/images/generations` read the whole body, wait
//! `--delay-ms` (a model at work), and answer one 1x1 PNG as `b64_json`, as OpenAI does.
//!
//! ```sh
//! cargo run --release --example mock_upstream -- --addr 127.0.0.1:9100 --delay-ms 0
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One opaque 1x1 PNG, base64: the smallest image an SDK decodes.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC";

struct Options {
    addr: SocketAddr,
    delay: Duration,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
        delay: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => options.addr = value.parse().map_err(|e| format!("--addr: {e}"))?,
            "--delay-ms" => {
                let ms = value.parse().map_err(|e| format!("--delay-ms: {e}"))?;
                options.delay = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown flag {flag} (--addr, --delay-ms)")),
        }
    }
    Ok(options)
}

async fn handle(
    delay: Duration,
    answer: Bytes,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let images = matches!(
        req.uri().path(),
        "/v1/images/edits" | "/v1/images/generations"
    );
    // Read (and drop) the whole body: the upstream's share of the work is receiving it.
    let received = req.into_body().collect().await.is_ok();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, body) = match (images, received) {
        (true, true) => (StatusCode::OK, answer),
        (true, false) => (StatusCode::BAD_REQUEST, Bytes::from_static(b"{}")),
        (false, _) => (StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(why) => {
            eprintln!("mock_upstream: {why}");
            std::process::exit(2);
        }
    };
    let answer = Bytes::from(format!(
        r#"{{"created":1700000000,"data":[{{"b64_json":"{PNG_B64}"}}],"usage":{{"total_tokens":1,"input_tokens":1,"output_tokens":0}}}}"#
    ));
    let listener = match TcpListener::bind(options.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mock_upstream: bind {}: {e}", options.addr);
            std::process::exit(1);
        }
    };
    println!("mock upstream on http://{}", options.addr);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (delay, answer) = (options.delay, answer.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(delay, answer.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
