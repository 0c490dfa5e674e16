//! The gateway in plain hyper: a hand-written accept loop with hyper-util.
//!
//! ```sh
//! cargo run --example hyper_server
//! curl http://127.0.0.1:3001/v1/images/edits -H "x-api-key: pk_live_hyper_demo" \
//!      -F image=@photo.png -F model=gpt-image-2 -F prompt="make it blue"
//! ```

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use image_gateway::auth::StaticKeys;
use image_gateway::Gateway;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = StaticKeys::new().with_key("demo", "pk_live_hyper_demo")?;
    let gateway = Gateway::builder().keys(keys).build();
    // Releases holds left by a run that was killed; the gateway starts nothing by itself.
    tokio::spawn(gateway.expiry_sweep().run());
    tokio::spawn(gateway.job_runner().run());

    let listener = TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        // A `Gateway` is a cheap clone: each connection gets its own handle.
        let service = TowerToHyperService::new(gateway.clone());
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                eprintln!("connection error: {error}");
            }
        });
    }
}
