//! The gateway mounted inside an existing axum app, beside the app's own routes.
//!
//! ```sh
//! cargo run --example axum_mount
//! curl http://127.0.0.1:3000/health
//! curl http://127.0.0.1:3000/v1/images/edits -H "Authorization: Bearer pk_live_axum_demo" \
//!      -F image=@photo.png -F model=gpt-image-2 -F prompt="make it blue"
//! curl http://127.0.0.1:3000/api/v1/files -H "Authorization: Bearer pk_live_axum_demo"
//! ```
//!
//! The gateway is the app's fallback, so every one of its endpoints (edits, upload, files,
//! balance, usage, admin) is served, and a path neither knows gets the gateway's JSON 404.
//! Its stores here are the builder's defaults, in memory.

use axum::routing::get;
use axum::Router;
use image_gateway::auth::StaticKeys;
use image_gateway::Gateway;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = StaticKeys::new().with_key("demo", "pk_live_axum_demo")?;
    let gateway = Gateway::builder().keys(keys).build();
    // Releases holds left by a run that was killed; the gateway starts nothing by itself.
    tokio::spawn(gateway.expiry_sweep().run());
    tokio::spawn(gateway.job_runner().run());

    // The gateway brings its own auth and body limit; the app's routes are untouched.
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback_service(gateway);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
