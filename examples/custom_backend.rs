//! A backend of your own behind the whole gateway: the one trait a model needs, a price,
//! and an account credited so the price can be paid.
//!
//! ```sh
//! cargo run --example custom_backend
//! curl http://127.0.0.1:3001/v1/images/edits -H "Authorization: Bearer pk_live_custom_demo" \
//!      -F image=@photo.png -F model=gpt-image-2 -F prompt="anything" -F n=2
//! curl http://127.0.0.1:3001/api/v1/balance -H "Authorization: Bearer pk_live_custom_demo"
//! ```
//!
//! Stores and ledger are the builder's defaults, in memory: lost when the process ends (see
//! the `gateway` example for files on disk and SQLite).

use image_gateway::job::{EditJob, Image};
use std::sync::Arc;

use image_gateway::auth::{StaticKeys, UserId};
use image_gateway::backend::{BackendError, ImageBackend};
use image_gateway::catalog::ModelSpec;
use image_gateway::ledger::{Ledger, MemoryLedger};
use image_gateway::server::{serve, ServeOptions};
use image_gateway::{async_trait, Gateway};

/// "Edits" by returning the first source unchanged, `n` times.
struct Echo;

#[async_trait]
impl ImageBackend for Echo {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        let source = job
            .sources
            .first()
            .ok_or_else(|| BackendError::upstream("no source"))?;
        let image = Image::new(source.bytes.clone(), job.params.output_format);
        Ok(vec![image; job.params.n as usize])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // With a price set, an account needs money: credit it through the ledger you keep.
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    ledger
        .deposit(&UserId::new("demo")?, 1_000, "opening-balance")
        .await?;
    let gateway = Gateway::builder()
        .keys(StaticKeys::new().with_key("demo", "pk_live_custom_demo")?)
        .backend(Echo)
        .ledger(ledger)
        .model("gpt-image-2", ModelSpec::new(10, 4)) // at most 10 images, 4 units each
        .build();
    // Releases holds left by a run that was killed; the gateway starts nothing by itself.
    tokio::spawn(gateway.expiry_sweep().run());
    tokio::spawn(gateway.job_runner().run());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, gateway, ServeOptions::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
