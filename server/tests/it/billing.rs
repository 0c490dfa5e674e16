//! Billing on the real stack: every outcome moves money exactly as the spec says.

use crate::common;

use image_gateway::job::{EditJob, Image};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use image_gateway::auth::UserId;
use image_gateway::backend::{BackendError, ImageBackend};
use image_gateway::catalog::ModelSpec;
use image_gateway::gateway::GatewayBuilder;
use image_gateway::generations::{Generation, GenerationStatus, Generations, MemoryGenerations};
use image_gateway::id::GenerationId;
use image_gateway::ledger::{EntryKind, Ledger, MemoryLedger, SqliteLedger};
use image_gateway::store::{LocalFileStore, StoreError};
use image_gateway::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

const PRICE: u64 = 10;

/// Answers by prompt: `k of n` returns k images, others fail as named; `hang` waits forever.
struct Scripted {
    started: Arc<Notify>,
}

#[async_trait]
impl ImageBackend for Scripted {
    /// Its work is a timer: dropping the future stops it.
    fn cancellable(&self) -> bool {
        true
    }

    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        self.started.notify_one();
        let image = Image::new(Bytes::from(png(4, 4)), job.params.output_format);
        let prompt = job.params.prompt.as_str();
        match prompt {
            "moderate" => Err(BackendError::ContentPolicy {
                message: "no".into(),
            }),
            "bad size" => Err(BackendError::UnsupportedSize {
                size: job.params.size,
            }),
            "crash" => Err(BackendError::upstream("boom")),
            "panic" => {
                // After a wait, so the panic comes in a later poll of the billed work.
                tokio::time::sleep(Duration::from_millis(20)).await;
                panic!("a bug in the backend");
            }
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(vec![image])
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(vec![image; job.params.n as usize])
            }
            _ => {
                let k = prompt
                    .strip_prefix("return ")
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(job.params.n);
                Ok(vec![image; k as usize])
            }
        }
    }
}

struct Billed {
    server: TestServer,
    ledger: Arc<dyn Ledger>,
    started: Arc<Notify>,
}

async fn billed(ledger: Arc<dyn Ledger>) -> Billed {
    let started = Arc::new(Notify::new());
    let gateway = Gateway::builder()
        .keys(keys())
        .backend(Scripted {
            started: started.clone(),
        })
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE))
        .admin_key("admin_secret_key_0123")
        .build();
    Billed {
        server: TestServer::start(gateway).await,
        ledger,
        started,
    }
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

fn form(prompt: &str, n: u32) -> Form {
    Form::new()
        .file("image", "a.png", "image/png", &png(4, 4))
        .text("model", "gpt-image-2")
        .text("prompt", prompt)
        .text("n", &n.to_string())
}

impl Billed {
    async fn balance(&self) -> (i64, u64) {
        let v = self
            .server
            .call(Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .json();
        (
            v["available"].as_i64().unwrap(),
            v["held"].as_u64().unwrap(),
        )
    }
}

#[tokio::test]
async fn each_outcome_moves_money_as_the_spec_says() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    b.ledger
        .deposit(&alice(), 100, "test-credit")
        .await
        .unwrap();

    // Success: n=2 returned 2 -> charged 20.
    assert_eq!(
        b.server
            .edit_form(ALICE_KEY, form("ok", 2))
            .await
            .images()
            .len(),
        2
    );
    assert_eq!(b.balance().await, (80, 0));
    // Fewer than n: held 30, charged 10, 20 refunded.
    assert_eq!(
        b.server
            .edit_form(ALICE_KEY, form("return 1", 3))
            .await
            .images()
            .len(),
        1
    );
    assert_eq!(b.balance().await, (70, 0));
    // Failures release the whole hold.
    for (prompt, code) in [
        ("crash", "upstream_error"),
        ("moderate", "content_policy_violation"),
        ("bad size", "invalid_request"),
        ("return 0", "upstream_error"),
    ] {
        let reply = b.server.edit_form(ALICE_KEY, form(prompt, 2)).await;
        assert_eq!(reply.error().1, code, "{prompt}");
        assert_eq!(b.balance().await, (70, 0), "{prompt}");
    }
    // n over the model's maximum: 400, nothing held.
    let reply = b.server.edit_form(ALICE_KEY, form("ok", 11)).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("n".into()))
    );

    // Usage lists the two charges with request ids, counts and amounts.
    let usage = b
        .server
        .call(Method::GET, "/api/v1/usage", ALICE_KEY)
        .await
        .json();
    let data = usage["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{usage}");
    assert_eq!(
        (
            data[0]["n_requested"].as_u64(),
            data[0]["n_returned"].as_u64(),
            data[0]["amount"].as_i64()
        ),
        (Some(2), Some(2), Some(20))
    );
    assert_eq!(
        (
            data[1]["n_requested"].as_u64(),
            data[1]["n_returned"].as_u64(),
            data[1]["amount"].as_i64()
        ),
        (Some(3), Some(1), Some(10))
    );
    assert_eq!(data[0]["model"], "gpt-image-2");
    assert!(!data[0]["request_id"].as_str().unwrap().is_empty());
    // Bob sees none of it.
    let bobs = b
        .server
        .call(Method::GET, "/api/v1/usage", BOB_KEY)
        .await
        .json();
    assert_eq!(bobs["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn request_id_is_honoured_and_recorded() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    b.ledger.deposit(&alice(), 100, "c").await.unwrap();
    let (content_type, body) = form("ok", 1).finish();
    let req = Request::post(EDITS)
        .header("x-api-key", ALICE_KEY)
        .header("x-request-id", "client-req-42")
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap();
    let reply = b.server.send(req).await;
    assert_eq!(reply.headers["x-request-id"], "client-req-42");
    let usage = b
        .server
        .call(Method::GET, "/api/v1/usage", ALICE_KEY)
        .await
        .json();
    assert_eq!(usage["data"][0]["request_id"], "client-req-42");
}

#[tokio::test]
async fn insufficient_balance_and_outstanding_debt_are_402() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    let reply = b.server.edit_form(ALICE_KEY, form("ok", 1)).await;
    assert_eq!(reply.error(), (402, "insufficient_balance".into(), None));
    b.ledger.deposit(&alice(), 15, "c").await.unwrap();
    let reply = b.server.edit_form(ALICE_KEY, form("ok", 2)).await;
    assert_eq!(reply.error().1, "insufficient_balance", "20 > 15");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("needs 20") && message.contains("15 is available"),
        "{message}"
    );
    b.ledger
        .deposit(&alice(), -20, "operator correction")
        .await
        .unwrap();
    let reply = b.server.edit_form(ALICE_KEY, form("ok", 1)).await;
    assert_eq!(reply.error(), (402, "OUTSTANDING_DEBT".into(), None));
    assert_eq!(b.balance().await, (-5, 0));
}

#[tokio::test]
async fn client_disconnect_mid_request_releases_the_hold() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    b.ledger.deposit(&alice(), 100, "c").await.unwrap();
    let (content_type, body) = form("hang", 3).finish();
    let mut socket = tokio::net::TcpStream::connect(b.server.addr).await.unwrap();
    let head = format!(
        "POST {EDITS} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    b.started.notified().await;
    assert_eq!(b.balance().await, (70, 30), "held while the backend runs");
    drop(socket);
    for _ in 0..100 {
        if b.balance().await == (100, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "hold not released after disconnect: {:?}",
        b.balance().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_edits_against_a_balance_for_ten() {
    let dir = temp_dir("concurrency");
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(dir.join("ledger.db")).unwrap());
    let b = billed(ledger.clone()).await;
    ledger.deposit(&alice(), 100, "c").await.unwrap();
    let (content_type, body) = form("slow", 1).finish();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, content_type, body) = (b.server.addr, content_type.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let req = Request::post(EDITS)
                .header("x-api-key", ALICE_KEY)
                .header("content-type", content_type)
                .body(Full::new(body))
                .unwrap();
            send(addr, req).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            200 => ok += 1,
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 10);
    let balance = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.charged),
        (0, 0, 100)
    );
}

#[tokio::test]
async fn admin_deposits_need_the_admin_key() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    let deposit = |key: &str, body: &str| {
        Request::post("/admin/v1/accounts/alice/deposits")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap()
    };
    let body = r#"{"amount": 250, "reference": "invoice-1"}"#;
    let reply = b.server.send(deposit(ALICE_KEY, body)).await;
    assert_eq!(
        reply.error(),
        (401, "invalid_api_key".into(), None),
        "a user key is not an admin key"
    );
    let reply = b.server.send(deposit("admin_secret_key_0123", body)).await;
    assert_eq!(reply.json()["deposited"], true);
    let reply = b.server.send(deposit("admin_secret_key_0123", body)).await;
    assert_eq!(
        reply.json()["deposited"],
        false,
        "same reference: credited once"
    );
    assert_eq!(b.balance().await, (250, 0));
    let reply = b
        .server
        .send(deposit(
            "admin_secret_key_0123",
            r#"{"amount": 1.5, "reference": "x"}"#,
        ))
        .await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("amount".into()))
    );
    let reply = b
        .server
        .call(
            Method::GET,
            "/admin/v1/accounts/alice/deposits",
            "admin_secret_key_0123",
        )
        .await;
    assert_eq!(reply.error().1, "method_not_allowed");

    // A deposit only adds, and only to an account some key can spend from.
    for amount in ["-250", "0"] {
        let body = format!(r#"{{"amount": {amount}, "reference": "refund-{amount}"}}"#);
        let reply = b.server.send(deposit("admin_secret_key_0123", &body)).await;
        assert_eq!(
            reply.error(),
            (400, "invalid_request".into(), Some("amount".into())),
            "amount {amount}"
        );
    }
    let typo = Request::post("/admin/v1/accounts/alcie/deposits")
        .header("authorization", "Bearer admin_secret_key_0123")
        .body(Full::new(Bytes::from_static(
            br#"{"amount": 100, "reference": "invoice-2"}"#,
        )))
        .unwrap();
    let reply = b.server.send(typo).await;
    assert_eq!(
        reply.error(),
        (404, "account_not_found".into(), Some("user_id".into()))
    );
    assert_eq!(b.balance().await, (250, 0), "nothing moved");

    // Without an admin key configured, the door does not exist.
    let plain = reference_server().await;
    let reply = plain.send(deposit("anything", body)).await;
    assert_eq!(reply.error(), (404, "not_found".into(), None));
}

fn keyed(key: &str, form: Form) -> Request<Full<Bytes>> {
    let (content_type, body) = form.finish();
    Request::post(EDITS)
        .header("x-api-key", ALICE_KEY)
        .header("idempotency-key", key)
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn idempotent_retries_are_answered_once_and_charged_once() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    b.ledger.deposit(&alice(), 100, "c").await.unwrap();
    let first = b.server.send(keyed("retry-1", form("ok", 2))).await;
    let ids = first.generation_ids();
    assert_eq!(b.balance().await, (80, 0));

    // The retry gets the first answer (once its outputs are stored), and pays nothing.
    let mut again = b.server.send(keyed("retry-1", form("ok", 2))).await;
    for _ in 0..50 {
        if again.status.as_u16() != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        again = b.server.send(keyed("retry-1", form("ok", 2))).await;
    }
    assert_eq!(again.generation_ids(), ids);
    assert_eq!(again.images(), first.images());
    assert_eq!(again.json()["created"], first.json()["created"]);
    assert_eq!(b.balance().await, (80, 0));

    // Same key, different request: 409.
    let reply = b
        .server
        .send(keyed("retry-1", form("something else", 2)))
        .await;
    assert_eq!(reply.error(), (409, "idempotency_key_reused".into(), None));
    // A failure is not remembered: the retry runs again.
    assert_eq!(
        b.server
            .send(keyed("fails", form("crash", 1)))
            .await
            .error()
            .1,
        "upstream_error"
    );
    assert_eq!(
        b.server
            .send(keyed("fails", form("crash", 1)))
            .await
            .error()
            .1,
        "upstream_error"
    );
    assert_eq!(b.balance().await, (80, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_run_once() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    b.ledger.deposit(&alice(), 100, "c").await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let addr = b.server.addr;
            tokio::spawn(async move {
                send(addr, keyed("same", form("slow", 1)))
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));
    assert_eq!(b.balance().await, (90, 0), "charged once: {statuses:?}");
}

#[tokio::test]
async fn an_idempotent_retry_after_a_restart_is_still_answered_once() {
    use image_gateway::generations::{GenerationStatus, Generations, SqliteGenerations};
    use image_gateway::idempotency::SqliteIdempotency;
    use image_gateway::store::LocalFileStore;
    let dir = temp_dir("idempotency-restart");
    let start = |dir: std::path::PathBuf| async move {
        let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(dir.join("ledger.db")).unwrap());
        let gateway = Gateway::builder()
            .keys(keys())
            .store(LocalFileStore::open(&dir).unwrap())
            .generations(SqliteGenerations::open(dir.join("generations.db")).unwrap())
            .idempotency(SqliteIdempotency::open(dir.join("generations.db")).unwrap())
            .ledger(ledger.clone())
            .model("gpt-image-2", ModelSpec::new(10, PRICE))
            .build();
        (TestServer::start(gateway).await, ledger)
    };
    let (server, ledger) = start(dir.clone()).await;
    ledger.deposit(&alice(), 100, "c").await.unwrap();
    let first = server.send(keyed("across-restart", form("any", 1))).await;
    let ids = first.generation_ids();
    // A restart comes after the old process has ended: its outputs are stored (a second
    // store opened on the directory meanwhile would clear the first one's temporary files).
    let records = SqliteGenerations::open(dir.join("generations.db")).unwrap();
    for id in &ids {
        let id = image_gateway::id::GenerationId::parse(id).unwrap();
        let mut status = None;
        for _ in 0..500 {
            status = records.get(id).await.unwrap().map(|g| g.status);
            if status != Some(GenerationStatus::Pending) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            status,
            Some(GenerationStatus::Ready),
            "the first run's output"
        );
    }
    drop(server);
    drop(ledger);

    let (server, ledger) = start(dir).await;
    let mut again = server.send(keyed("across-restart", form("any", 1))).await;
    for _ in 0..50 {
        if again.status.as_u16() != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        again = server.send(keyed("across-restart", form("any", 1))).await;
    }
    assert_eq!(again.generation_ids(), ids);
    assert_eq!(again.images(), first.images());
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (b.available, b.charged),
        (90, 10),
        "charged once across the restart"
    );
}

/// Generation records that cannot be written, like a database that went away.
struct BrokenGenerations;

#[async_trait]
impl image_gateway::generations::Generations for BrokenGenerations {
    async fn insert(
        &self,
        _: &image_gateway::generations::Generation,
    ) -> Result<(), image_gateway::store::StoreError> {
        Err(image_gateway::store::StoreError::new("disk full"))
    }
    async fn set_status(
        &self,
        _: image_gateway::id::GenerationId,
        _: image_gateway::generations::GenerationStatus,
    ) -> Result<(), image_gateway::store::StoreError> {
        Err(image_gateway::store::StoreError::new("disk full"))
    }
    async fn get(
        &self,
        _: image_gateway::id::GenerationId,
    ) -> Result<Option<image_gateway::generations::Generation>, image_gateway::store::StoreError>
    {
        Ok(None)
    }
}

/// Sends a two-image edit to a gateway built on `builder` whose storage fails after the
/// backend answered: `500 internal_error` with nothing of `hidden` in it, nothing charged,
/// the hold released.
async fn fails_as_storage_error(builder: GatewayBuilder, hidden: &str) {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    ledger.deposit(&alice(), 100, "c").await.unwrap();
    let gateway = builder
        .keys(keys())
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE))
        .build();
    let server = TestServer::start(gateway).await;
    let reply = server.edit_form(ALICE_KEY, form("any", 2)).await;
    assert_eq!(reply.error(), (500, "internal_error".into(), None));
    assert!(!String::from_utf8_lossy(&reply.body).contains(hidden));
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.available, b.held, b.charged), (100, 0, 0));
}

#[tokio::test]
async fn a_storage_error_after_the_backend_releases_the_hold() {
    fails_as_storage_error(
        Gateway::builder().generations(BrokenGenerations),
        "disk full",
    )
    .await;
}

/// Generation records in memory, remembering which ids were inserted.
#[derive(Clone, Default)]
struct Recorded {
    records: Arc<MemoryGenerations>,
    inserted: Arc<std::sync::Mutex<Vec<GenerationId>>>,
}

#[async_trait]
impl Generations for Recorded {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        self.inserted.lock().unwrap().push(generation.id);
        self.records.insert(generation).await
    }
    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        self.records.set_status(id, status).await
    }
    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        self.records.get(id).await
    }
}

/// The upload of a multipart edit is written while the backend works and its images are
/// recorded. When that write fails after the backend answered (here a real local store
/// whose `files` is a plain file, so no owner's directory can be made under it), the edit
/// fails as a storage error: nothing is charged, the hold is released, and every image
/// recorded meanwhile is marked failed, so none of them is ever reachable.
#[tokio::test]
async fn an_upload_that_cannot_be_written_fails_the_edit_after_its_images_were_recorded() {
    let dir = temp_dir("unwritable");
    let store = LocalFileStore::open(&dir).unwrap();
    std::fs::write(dir.join("files"), b"not a directory").unwrap();
    let generations = Recorded::default();
    let builder = Gateway::builder()
        .store(store)
        .generations(generations.clone());
    fails_as_storage_error(builder, "directory").await;
    let inserted = generations.inserted.lock().unwrap().clone();
    assert_eq!(inserted.len(), 2, "the backend's two images were recorded");
    for id in inserted {
        let record = generations.records.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, GenerationStatus::Failed, "{id}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A backend that panics mid-edit: the client gets `500 internal_error` in the envelope,
/// the hold is released exactly once (nothing charged, nothing left held), and the gateway
/// goes on serving.
#[tokio::test]
async fn a_backend_that_panics_answers_500_and_releases_the_hold() {
    let b = billed(Arc::new(MemoryLedger::new())).await;
    b.ledger.deposit(&alice(), 100, "c").await.unwrap();
    let reply = b.server.edit_form(ALICE_KEY, form("panic", 2)).await;
    assert_eq!(reply.error(), (500, "internal_error".into(), None));
    assert!(!String::from_utf8_lossy(&reply.body).contains("a bug"));
    // The release runs on a task the guard's drop spawned.
    for _ in 0..100 {
        if b.balance().await == (100, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let balance = b.ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.charged),
        (100, 0, 0)
    );
    let journal = b.ledger.journal(&alice(), None, 100).await.unwrap();
    let kinds: Vec<_> = journal.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == EntryKind::Release).count(),
        1,
        "{kinds:?}"
    );
    let reply = b.server.edit_form(ALICE_KEY, form("return 1", 1)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(b.balance().await, (90, 0));
}

/// A local file store whose writes of generated images fail (`Fail`) or never end (`Hang`,
/// like a process that dies before its store answered); uploads and reads pass through.
struct Outputs {
    inner: LocalFileStore,
    hang: bool,
    /// Writes a generated image's bytes before hanging (the process dies after they
    /// reached the volume, before its record was marked ready).
    store_first: bool,
}

#[async_trait]
impl image_gateway::store::FileStore for Outputs {
    async fn put(
        &self,
        key: &image_gateway::store::FileKey,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        if !key.as_str().contains("_generation.") {
            return self.inner.put(key, bytes).await;
        }
        if self.store_first {
            self.inner.put(key, bytes).await?;
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(StoreError::new("the volume went away"))
    }
    async fn get(&self, key: &image_gateway::store::FileKey) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &image_gateway::store::FileKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        owner: &UserId,
        after: Option<&image_gateway::store::FileCursor>,
        limit: usize,
    ) -> Result<image_gateway::store::FilePage, StoreError> {
        self.inner.list(owner, after, limit).await
    }
}

/// The first life of a process that dies while storing an async job's image: a gateway on
/// `dir` whose store never answers for generated images (after writing their bytes, with
/// `store_first`); alice holds 100 and has submitted one async generation, whose id comes
/// back.
async fn first_life(
    dir: &std::path::Path,
    store_first: bool,
) -> (TestServer, Arc<dyn Ledger>, String) {
    let store = Outputs {
        inner: LocalFileStore::open(dir).unwrap(),
        hang: true,
        store_first,
    };
    let (gateway, ledger) = on_disk(dir, store);
    let server = TestServer::start(gateway).await;
    ledger.deposit(&alice(), 100, "opening").await.unwrap();
    let json = r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#;
    let accepted = server.send(generation(json, true)).await;
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    (server, ledger, id)
}

/// A gateway on SQLite files in `dir` (ledger, generation and job records) over `store`.
fn on_disk(
    dir: &std::path::Path,
    store: impl image_gateway::store::FileStore,
) -> (Gateway, Arc<dyn Ledger>) {
    use image_gateway::generations::SqliteGenerations;
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(dir.join("ledger.db")).unwrap());
    let generations = SqliteGenerations::open(dir.join("generations.db")).unwrap();
    let jobs = image_gateway::jobs::SqliteJobs::beside(&generations).unwrap();
    let gateway = Gateway::builder()
        .keys(keys())
        .store(store)
        .generations(generations)
        .jobs(jobs)
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE))
        .build();
    (gateway, ledger)
}

/// Alice's JSON generation request; with `async_`, as an async job.
fn generation(json: &'static str, async_: bool) -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/images/generations")
        .header("x-api-key", ALICE_KEY)
        .header("content-type", "application/json");
    if async_ {
        request = request.header("prefer", "respond-async");
    }
    request
        .body(Full::new(Bytes::from_static(json.as_bytes())))
        .unwrap()
}

/// The job `id` once it ended.
async fn ended_job(server: &TestServer, id: &str) -> serde_json::Value {
    for _ in 0..500 {
        let job = server
            .call(Method::GET, &format!("/v1/images/jobs/{id}"), ALICE_KEY)
            .await
            .json();
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never ended");
}

/// The refunds the journal shows: deposits whose reference starts `refund:`.
async fn refunds(ledger: &dyn Ledger) -> Vec<(i64, String)> {
    let journal = ledger.journal(&alice(), None, 100).await.unwrap();
    journal
        .into_iter()
        .filter(|e| e.kind == EntryKind::Deposit)
        .filter_map(|e| Some((e.amount, e.reference?)))
        .filter(|(_, r)| r.starts_with("refund:"))
        .collect()
}

#[tokio::test]
async fn an_async_jobs_images_the_store_refused_are_refunded_an_answers_images_are_charged() {
    let dir = temp_dir("lost-outputs-live");
    let store = Outputs {
        inner: LocalFileStore::open(&dir).unwrap(),
        hang: false,
        store_first: false,
    };
    let (gateway, ledger) = on_disk(&dir, store);
    let server = TestServer::start(gateway).await;
    ledger.deposit(&alice(), 100, "opening").await.unwrap();
    let json = r#"{"model":"gpt-image-2","prompt":"p","n":2,"size":"16x16"}"#;
    let accepted = server.send(generation(json, true)).await;
    assert_eq!(accepted.status.as_u16(), 202);
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    // Charged (the settle comes first), never stored, so never delivered: refunded.
    let job = ended_job(&server, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "internal_error", "{job}");
    let refunded = refunds(&*ledger).await;
    assert_eq!(refunded.len(), 2, "one refund per lost image: {refunded:?}");
    assert!(refunded.iter().all(|(amount, _)| *amount == PRICE as i64));
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.charged),
        (100, 0, 20),
        "charged 20, refunded 20"
    );
    let files = server
        .call(Method::GET, "/api/v1/files", ALICE_KEY)
        .await
        .json();
    assert_eq!(files["data"].as_array().unwrap().len(), 0, "{files}");

    // A synchronous answer carries its image: delivered, so charged, stored or not.
    let json = r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#;
    assert_eq!(server.send(generation(json, false)).await.images().len(), 1);
    assert_eq!(ledger.balance(&alice()).await.unwrap().available, 90);
    assert_eq!(refunds(&*ledger).await.len(), 2);
}

#[tokio::test]
async fn a_process_that_dies_between_an_async_jobs_charge_and_its_storage_refunds_at_restart() {
    use image_gateway::generations::SqliteGenerations;
    let dir = temp_dir("lost-outputs-crash");
    // First life: the settle commits, then the store never answers (the process dies
    // there); the job, which waits for the store, never ends.
    let (server, ledger, id) = first_life(&dir, false).await;
    let mut balance = ledger.balance(&alice()).await.unwrap();
    for _ in 0..500 {
        if balance.charged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        balance = ledger.balance(&alice()).await.unwrap();
    }
    assert_eq!((balance.available, balance.charged), (90, 10), "settled");
    let job = server
        .call(Method::GET, &format!("/v1/images/jobs/{id}"), ALICE_KEY)
        .await
        .json();
    assert_eq!(
        job["status"], "running",
        "not ended before its image is stored"
    );
    drop(server);
    drop(ledger);

    // Second life on the same files: the image left pending is lost, and refunded; the
    // job, taken over, finds its hold ended and fails.
    let (gateway, ledger) = on_disk(&dir, LocalFileStore::open(&dir).unwrap());
    assert_eq!(gateway.job_runner().take_all().await.unwrap(), 1);
    let server = TestServer::start(gateway).await;
    let job = ended_job(&server, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let refunded = refunds(&*ledger).await;
    assert_eq!(refunded.len(), 1, "{refunded:?}");
    assert_eq!(refunded[0].0, PRICE as i64);
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.available, b.held), (100, 0));
    let generation = GenerationId::parse(refunded[0].1.trim_start_matches("refund:")).unwrap();
    let records = SqliteGenerations::open(dir.join("generations.db")).unwrap();
    let record = records.get(generation).await.unwrap().unwrap();
    assert_eq!(record.status, GenerationStatus::Failed);
    drop(server);
    // A second start refunds nothing more (the record is ended; the refund's reference is
    // the generation's id).
    let (gateway, ledger) = on_disk(&dir, LocalFileStore::open(&dir).unwrap());
    gateway.job_runner().take_all().await.unwrap();
    assert_eq!(refunds(&*ledger).await.len(), 1);
    assert_eq!(ledger.balance(&alice()).await.unwrap().available, 100);
}

#[tokio::test]
async fn a_process_that_dies_after_an_async_jobs_image_reached_the_store_keeps_it_charged() {
    use image_gateway::generations::SqliteGenerations;
    let dir = temp_dir("stored-outputs-crash");
    // First life: the settle commits, the image's bytes reach the volume, then the process
    // dies before the generation's record says so.
    let (server, ledger, id) = first_life(&dir, true).await;
    // The bytes are on the volume once alice's directory holds a generated image.
    let stored = || {
        walk(&dir.join("files"))
            .iter()
            .any(|p| p.to_string_lossy().contains("_generation."))
    };
    for _ in 0..500 {
        if stored() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored(), "the image reached the volume");
    let balance = ledger.balance(&alice()).await.unwrap();
    assert_eq!((balance.available, balance.charged), (90, 10), "settled");
    drop(server);
    drop(ledger);

    // Second life: the sweep finds the bytes, so the image was delivered to the store: it
    // stays charged, is marked ready and is listed; nothing is refunded.
    let (gateway, ledger) = on_disk(&dir, LocalFileStore::open(&dir).unwrap());
    assert_eq!(gateway.job_runner().take_all().await.unwrap(), 1);
    let server = TestServer::start(gateway).await;
    let job = ended_job(&server, &id).await;
    assert_eq!(refunds(&*ledger).await, vec![], "{job}");
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.available, b.held, b.charged), (90, 0, 10));
    let files = server
        .call(Method::GET, "/api/v1/files", ALICE_KEY)
        .await
        .json();
    let listed = files["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{files}");
    let pending = SqliteGenerations::open(dir.join("generations.db"))
        .unwrap()
        .pending(u64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(pending, vec![], "marked ready");
    // The job ends with the image its first run charged and stored, not run again.
    assert_eq!(job["status"], "succeeded", "{job}");
    let ids = job["result"]["picklyone_generation_ids"]
        .as_array()
        .unwrap();
    assert_eq!(ids.len(), 1, "{job}");
    let records = SqliteGenerations::open(dir.join("generations.db")).unwrap();
    let generation = GenerationId::parse(ids[0].as_str().unwrap()).unwrap();
    let record = records.get(generation).await.unwrap().unwrap();
    assert_eq!(record.status, GenerationStatus::Ready);
}

/// Every file under `dir`, at any depth.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Generation records in memory that are never marked ready: each stays pending with its
/// bytes stored, as when a process dies between the storage and the record's update.
#[derive(Clone, Default)]
struct NeverReady(Arc<MemoryGenerations>);

#[async_trait]
impl Generations for NeverReady {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        self.0.insert(generation).await
    }
    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        if status == GenerationStatus::Ready {
            return Ok(());
        }
        self.0.set_status(id, status).await
    }
    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        self.0.get(id).await
    }
}

/// A pending generation whose bytes are stored was stored after its charge: a retried
/// idempotent request replays it, a job's result reads it, a chained edit uses it.
#[tokio::test]
async fn a_pending_generation_whose_bytes_are_stored_reads_as_ready_everywhere() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    ledger.deposit(&alice(), 100, "c").await.unwrap();
    let records = NeverReady::default();
    let gateway = Gateway::builder()
        .keys(keys())
        .generations(records.clone())
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE))
        .build();
    let server = TestServer::start(gateway).await;
    let pending = |id: &str| {
        let records = records.clone();
        let id = GenerationId::parse(id).unwrap();
        async move { records.0.get(id).await.unwrap().unwrap().status }
    };

    // Idempotency: the retry replays the first answer, charged once.
    let first = server.send(keyed("pending-1", form("ok", 1))).await;
    let ids = first.generation_ids();
    assert_eq!(pending(&ids[0]).await, GenerationStatus::Pending);
    let mut again = server.send(keyed("pending-1", form("ok", 1))).await;
    for _ in 0..50 {
        if again.status.as_u16() != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        again = server.send(keyed("pending-1", form("ok", 1))).await;
    }
    assert_eq!(again.generation_ids(), ids, "{:?}", again.body);
    assert_eq!(again.images(), first.images());

    // A chained edit from it.
    let chained = server.edit_generation(ALICE_KEY, &ids[0]).await;
    assert_eq!(chained.images().len(), 1, "{:?}", chained.body);

    // An async job's result, read back while its record is still pending.
    let json = r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#;
    let accepted = server.send(generation(json, true)).await;
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    let job = ended_job(&server, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let generation_id = job["result"]["picklyone_generation_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(pending(&generation_id).await, GenerationStatus::Pending);
    // The job's read carries the image, read from the store by its generation id.
    let b64 = job["result"]["data"][0]["b64_json"]
        .as_str()
        .unwrap_or_default();
    assert!(b64.starts_with("iVBOR"), "a PNG: {job}");
    // Three images charged once each.
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.available, b.held, b.charged), (70, 0, 30));
}
