//! `/healthz` and `/readyz`: no key, cheap, honest about the ledger and the store, and
//! `503 draining` from SIGTERM until the listener closes.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::binary::{gateway_binary, Process};
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use image_gateway::auth::UserId;
use image_gateway::store::{FileCursor, FileKey, FilePage, FileStore, MemoryFileStore, StoreError};
use image_gateway::Gateway;

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

/// A memory store whose listing fails while `down` is set.
struct Flaky {
    inner: MemoryFileStore,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl FileStore for Flaky {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new("the bucket is unreachable"));
        }
        self.inner.list(owner, after, limit).await
    }
}

#[tokio::test]
async fn checks_need_no_key_and_follow_the_store_and_the_drain() {
    let down = Arc::new(AtomicBool::new(false));
    let gateway = Gateway::builder()
        .keys(keys())
        .store(Flaky {
            inner: MemoryFileStore::new(),
            down: down.clone(),
        })
        .build();
    let readiness = gateway.readiness();
    let server = TestServer::start(gateway).await;

    let live = server.send(get("/healthz")).await;
    assert_eq!(
        (live.status, live.json()["status"].clone()),
        (StatusCode::OK, "ok".into())
    );
    let ready = server.send(get("/readyz")).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (StatusCode::OK, "ready".into())
    );

    down.store(true, Ordering::SeqCst);
    let ready = server.send(get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["failed"], "store");
    down.store(false, Ordering::SeqCst);

    readiness.drain();
    let ready = server.send(get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(
        server.send(get("/healthz")).await.status,
        StatusCode::OK,
        "still alive"
    );

    let post = Request::post("/healthz")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(server.send(post).await.error().1, "method_not_allowed");
    // The API itself still wants a key.
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/balance", "pk_live_nobody")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_drains_on_sigterm_for_its_shutdown_delay_then_exits_cleanly() {
    let dir = temp_dir("drain");
    let port = 0;
    let gateway = Process::start_with(
        &gateway_binary(),
        &dir,
        port,
        &[("GATEWAY_SHUTDOWN_DELAY_SECS", "2")],
    );
    let addr = gateway.addr;
    assert_eq!(send(addr, get("/readyz")).await.status, StatusCode::OK);
    let pid = gateway.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Within the delay: still serving, and saying it is draining.
    let mut drained = None;
    for _ in 0..50 {
        let reply = send(addr, get("/readyz")).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            drained = Some(reply.json()["status"].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(drained, Some("draining".into()));
    assert_eq!(send(addr, get("/healthz")).await.status, StatusCode::OK);
    let mut gateway = gateway;
    let exited = tokio::task::spawn_blocking(move || gateway.child.wait().unwrap().success())
        .await
        .unwrap();
    assert!(exited, "a clean exit after the delay");
}
