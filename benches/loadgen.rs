//! A load harness: drives a server over loopback and prints requests per second and latency
//! percentiles.
//!
//! ```sh
//! # The gateway's own overhead: full stack with an instant backend, then bare hyper.
//! cargo run --release --example loadgen -- --target gateway --mix json --concurrency 32 --duration 10
//! cargo run --release --example loadgen -- --target bare    --mix json --concurrency 32 --duration 10
//! # The same stack on the binary's SQLite ledger, SQLite generations and local files.
//! cargo run --release --example loadgen -- --target gateway-sqlite --mix json
//! # Against a running server (e.g. the binary): its peak memory while 16 clients send 25 MB.
//! cargo run --release --example loadgen -- --addr 127.0.0.1:8080 --key pk_live_... \
//!     --mix multipart-25m --concurrency 16 --requests 16 --server-pid <pid>
//! ```
//!
//! Mixes: `json` (edit by `image_key`), `multipart-100k`, `multipart-5m`, `multipart-25m`,
//! `upload` (100 KB). In-process targets start the server on its own runtime in this process:
//! `gateway` (in-memory stores), `gateway-sqlite` (the binary's SQLite ledger and generations,
//! local files), `gateway-discard` (in-memory stores, but a file store that keeps nothing: what
//! the stack costs without the cost of retaining every source in RAM; multipart mixes only)
//! and `bare` (hyper alone, reading the body and answering the same bytes).
//!
//! `gateway-sqlite` keeps its files in a data dir of its own under the system temp dir,
//! deleted when the run ends. On this VM's journal-less ext4 a file created within 30 s of
//! a deletion costs several times more (`benches/volume.sh`), so the deletion's time is
//! recorded beside the data dirs and the next `gateway-sqlite` run waits 40 s past it
//! before it measures.

use image_gateway::job::{EditJob, EditOutcome, GeneratedImage, Image, OutputFormat};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use image_gateway::auth::{StaticKeys, UserId};
use image_gateway::backend::{BackendError, ImageBackend};
use image_gateway::catalog::ModelSpec;

use image_gateway::id::GenerationId;
use image_gateway::ledger::{Durability, Ledger, MemoryLedger, SqliteLedger};

use image_gateway::generations::SqliteGenerations;
use image_gateway::store::{FileCursor, FileKey, FilePage, FileStore, LocalFileStore, StoreError};
use image_gateway::Gateway;

const KEY: &str = "pk_live_loadgen_0123456789abcdef";
const BOUNDARY: &str = "----loadgen-boundary-5f2c";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The name of an in-process target's runtime threads (its blocking pool's too).
const TARGET_THREAD: &str = "target-rt";
/// The client's runtime threads.
const CLIENT_THREAD: &str = "loadgen-client";

/// CPU seconds (user + system) the in-process target has spent so far: the whole process's,
/// less the client's threads and the main thread. The target's threads of its own (the
/// stores' writer threads, its runtime) are all counted, also those that have exited.
fn server_cpu_seconds() -> Option<f64> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
                                  // utime and stime: the 12th and 13th fields after the parenthesised command name.
    let ticks = |stat: &str| -> Option<u64> {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let mut total = ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let main = std::process::id().to_string();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?;
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        if name.trim() == CLIENT_THREAD || task.file_name().to_str() == Some(main.as_str()) {
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            total = total.saturating_sub(ticks(&stat)?);
        }
    }
    Some(total as f64 / ticks_per_second)
}

/// The smallest valid PNG (1 x 1), the image every instant edit returns.
fn fixed_image() -> Bytes {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 128, 255, 255]))
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    Bytes::from(out.into_inner())
}

/// A file store that keeps nothing: every write succeeds, every read finds nothing.
struct DiscardStore;

#[async_trait]
impl FileStore for DiscardStore {
    async fn put(&self, _: &FileKey, _: Bytes) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&self, _: &FileKey) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
    async fn delete(&self, _: &FileKey) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn list(
        &self,
        _: &UserId,
        _: Option<&FileCursor>,
        _: usize,
    ) -> Result<FilePage, StoreError> {
        Ok(FilePage::new(Vec::new(), false))
    }
}

/// A backend that answers at once with the fixed image.
struct InstantBackend {
    image: Bytes,
}

#[async_trait]
impl ImageBackend for InstantBackend {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        Ok(vec![
            Image::new(self.image.clone(), OutputFormat::Png);
            job.params.n as usize
        ])
    }
}

struct Args {
    target: String,
    addr: Option<SocketAddr>,
    key: String,
    mix: String,
    concurrency: usize,
    duration: Duration,
    requests: Option<usize>,
    server_pid: Option<u32>,
    /// The `gateway-sqlite` target's ledger: `power-loss` (the binary's) or `process-crash`.
    durability: Durability,
}

fn args() -> Result<Args, Error> {
    let mut args = Args {
        target: "gateway".into(),
        addr: None,
        key: KEY.into(),
        mix: "json".into(),
        concurrency: 32,
        duration: Duration::from_secs(10),
        requests: None,
        server_pid: None,
        durability: Durability::PowerLoss,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => args.target = value,
            "--addr" => args.addr = Some(value.parse()?),
            "--key" => args.key = value,
            "--mix" => args.mix = value,
            "--concurrency" => args.concurrency = value.parse()?,
            "--duration" => args.duration = Duration::from_secs(value.parse()?),
            "--requests" => args.requests = Some(value.parse()?),
            "--server-pid" => args.server_pid = Some(value.parse()?),
            "--durability" => {
                args.durability = match value.as_str() {
                    "process-crash" => Durability::ProcessCrash,
                    "power-loss" => Durability::PowerLoss,
                    _ => return Err("--durability is process-crash or power-loss".into()),
                }
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}

/// Starts an in-process target on its own runtime thread; returns its address.
/// A `gateway-sqlite` run's data dir: deleted when the run ends, and that deletion recorded.
struct DataDir(std::path::PathBuf);

impl DataDir {
    /// Where the time of the last deletion is recorded.
    fn stamp() -> std::path::PathBuf {
        std::env::temp_dir().join("igw-load.deleted")
    }

    /// A fresh data dir, once an earlier run's deletion can no longer slow file creation.
    fn fresh() -> Result<DataDir, Error> {
        let deleted = std::fs::read_to_string(Self::stamp())
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let now = image_gateway::clock::unix_now();
        if let Some(wait) = deleted
            .map(|t| (t + 40).saturating_sub(now))
            .filter(|w| *w > 0)
        {
            eprintln!("waiting {wait}s: an earlier run deleted its files on this volume");
            std::thread::sleep(Duration::from_secs(wait));
        }
        let dir = std::env::temp_dir().join(format!("igw-load-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(DataDir(dir))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // The server's last outputs may still be landing (and make their directory again):
        // removed until it stays gone.
        for _ in 0..50 {
            let _ = std::fs::remove_dir_all(&self.0);
            std::thread::sleep(Duration::from_millis(300));
            if !self.0.exists() {
                break;
            }
        }
        // Written back, a deleted inode counts as recent for 30 s (5 min before that).
        if let Ok(volume) = std::fs::File::open(std::env::temp_dir()) {
            let _ = rustix::fs::syncfs(&volume);
        }
        let _ = std::fs::write(Self::stamp(), image_gateway::clock::unix_now().to_string());
    }
}

fn start_target(
    target: &str,
    durability: Durability,
    data_dir: Option<std::path::PathBuf>,
) -> Result<SocketAddr, Error> {
    let image = fixed_image();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let target = target.to_owned();
    let answer = EditOutcome::new(
        1_776_864_985,
        vec![GeneratedImage::new(
            GenerationId::new(),
            Image::new(image.clone(), OutputFormat::Png),
        )],
    )
    .to_json();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(TARGET_THREAD)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            if target == "bare" {
                return serve_bare(listener, answer).await;
            }
            let user = UserId::new("load").expect("user");
            let keys = StaticKeys::new().with_key("load", KEY).expect("key");
            let builder = Gateway::builder()
                .keys(keys)
                .backend(InstantBackend { image })
                // A load run stores far more than one user's quota.
                .quota(image_gateway::store::Quota::UNLIMITED)
                .model("gpt-image-2", ModelSpec::new(10, 1));
            let builder = if let Some(dir) = data_dir {
                let ledger: Arc<dyn Ledger> = Arc::new(
                    SqliteLedger::open_with(dir.join("ledger.db"), durability).expect("ledger"),
                );
                ledger
                    .deposit(&user, i64::MAX / 4, "load")
                    .await
                    .expect("deposit");
                builder
                    .store(LocalFileStore::open(&dir).expect("store"))
                    .generations(
                        SqliteGenerations::open(dir.join("generations.db")).expect("generations"),
                    )
                    .ledger(ledger)
            } else {
                let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
                ledger
                    .deposit(&user, i64::MAX / 4, "load")
                    .await
                    .expect("deposit");
                let builder = builder.ledger(ledger);
                if target == "gateway-discard" {
                    builder.store(DiscardStore)
                } else {
                    builder
                }
            };
            let gateway = builder.build();
            let _ = image_gateway::server::serve(
                listener,
                gateway,
                Default::default(),
                std::future::pending(),
            )
            .await;
        });
    });
    Ok(addr)
}

/// A bare hyper server that reads the whole body and answers the gateway's bytes, with the
/// connection builder `server::serve` uses.
async fn serve_bare(listener: tokio::net::TcpListener, answer: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = answer.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    let mut res = Response::new(Full::new(answer));
                    res.headers_mut()
                        .insert("content-type", "application/json".parse().expect("header"));
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn multipart(image_bytes: usize, field: &str) -> (String, Bytes) {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-2\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nmake it blue\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"a.png\"\r\n\r\n"
    )
    .into_bytes();
    let png = fixed_image();
    body.extend_from_slice(&png);
    body.resize(body.len() + image_bytes.saturating_sub(png.len()), 0x5A);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={BOUNDARY}"),
        Bytes::from(body),
    )
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    client: &Http,
    addr: SocketAddr,
    key: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> Result<(u16, Bytes), Error> {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", content_type)
        .body(Full::new(body))?;
    let res = client.request(req).await?;
    let status = res.status().as_u16();
    Ok((status, res.into_body().collect().await?.to_bytes()))
}

fn main() -> Result<(), Error> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), Error> {
    let args = args()?;
    if !["gateway", "gateway-sqlite", "gateway-discard", "bare"].contains(&args.target.as_str()) {
        return Err(format!("unknown target {}", args.target).into());
    }
    if args.target == "gateway-discard" && !args.mix.starts_with("multipart") {
        return Err("gateway-discard keeps no files: use a multipart mix".into());
    }
    let data_dir = match (&args.addr, args.target.as_str()) {
        (None, "gateway-sqlite") => Some(DataDir::fresh()?),
        _ => None,
    };
    let addr = match args.addr {
        Some(addr) => addr,
        None => start_target(
            &args.target,
            args.durability,
            data_dir.as_ref().map(|d| d.0.clone()),
        )?,
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client: Http = Client::builder(TokioExecutor::new()).build_http();

    let (path, content_type, body) = match args.mix.as_str() {
        "json" => {
            let (ct, upload) = multipart(100, "files");
            let (status, answer) =
                call(&client, addr, &args.key, "/api/v1/upload", &ct, upload).await?;
            let key = if status == 200 {
                let v: serde_json::Value = serde_json::from_slice(&answer)?;
                v["uploaded"][0]["key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                "files/load/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_a.png".to_owned()
            };
            let json = format!(
                r#"{{"model":"gpt-image-2","prompt":"make it blue","image_key":"{key}","n":1}}"#
            );
            (
                "/v1/images/edits",
                "application/json".to_owned(),
                Bytes::from(json),
            )
        }
        "multipart-100k" => {
            let (ct, b) = multipart(100 * 1024, "image");
            ("/v1/images/edits", ct, b)
        }
        "multipart-5m" => {
            let (ct, b) = multipart(5 * 1024 * 1024, "image");
            ("/v1/images/edits", ct, b)
        }
        "multipart-25m" => {
            let (ct, b) = multipart(25 * 1024 * 1024 - 4096, "image");
            ("/v1/images/edits", ct, b)
        }
        "upload" => {
            let (ct, b) = multipart(100 * 1024, "files");
            ("/api/v1/upload", ct, b)
        }
        other => return Err(format!("unknown mix {other}").into()),
    };

    let cpu_before = server_cpu_seconds();
    let deadline = Instant::now() + args.duration;
    let budget = Arc::new(std::sync::atomic::AtomicUsize::new(
        args.requests.unwrap_or(usize::MAX),
    ));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, key, ct, body, budget) = (
                client.clone(),
                args.key.clone(),
                content_type.clone(),
                body.clone(),
                budget.clone(),
            );
            tokio::spawn(async move {
                let (mut latencies, mut failures) = (Vec::new(), 0usize);
                while Instant::now() < deadline
                    && budget
                        .fetch_update(
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                            |b| b.checked_sub(1),
                        )
                        .is_ok()
                {
                    let t = Instant::now();
                    match call(&client, addr, &key, path, &ct, body.clone()).await {
                        Ok((200, _)) => latencies.push(t.elapsed().as_micros() as u64),
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let (mut latencies, mut failures) = (Vec::new(), 0);
    for worker in workers {
        let (l, f) = worker.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "target={} mix={} concurrency={} ok={} failed={} rps={:.0} p50={:.2}ms p99={:.2}ms p999={:.2}ms",
        args.addr.map_or(args.target.clone(), |a| a.to_string()),
        args.mix,
        args.concurrency,
        latencies.len(),
        failures,
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
    );
    if let (None, Some(before), Some(after)) = (args.addr, cpu_before, server_cpu_seconds()) {
        println!(
            "server CPU per request: {:.1} us",
            (after - before) * 1e6 / latencies.len().max(1) as f64
        );
    }
    if let Some(pid) = args.server_pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("server {line}");
        }
    }
    Ok(())
}
