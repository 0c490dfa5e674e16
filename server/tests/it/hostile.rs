//! Hostile clients against the real server on 127.0.0.1: disconnects timed across the
//! billed window, holds outlived by their request, abandoned renders. After each attack the
//! money rules must hold: every image that is reachable was charged, nothing else was, and
//! `deposits = available + held + charged`.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use image_gateway::backend::ReferenceBackend;
use image_gateway::catalog::ModelSpec;
use image_gateway::generations::SqliteGenerations;
use image_gateway::ledger::{EntryKind, Ledger, SqliteLedger};
use image_gateway::ratelimit::RateLimitLayer;
use image_gateway::store::LocalFileStore;
use image_gateway::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PRICE: u64 = 10;

fn alice() -> image_gateway::auth::UserId {
    image_gateway::auth::UserId::new("alice").unwrap()
}

/// A gateway on the durable stores (local files, SQLite records and ledger).
fn durable(
    dir: &std::path::Path,
    backend: ReferenceBackend,
) -> (image_gateway::gateway::GatewayBuilder, Arc<dyn Ledger>) {
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(dir.join("ledger.db")).unwrap());
    let builder = Gateway::builder()
        .keys(keys())
        .backend(backend)
        .store(LocalFileStore::open(dir).unwrap())
        .generations(SqliteGenerations::open(dir.join("generations.db")).unwrap())
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE));
    (builder, ledger)
}

/// Sends an edit (content type and body) on a raw socket and hangs up after `after`, answer
/// or not.
async fn edit_then_hang_up(server: &TestServer, body: (String, Bytes), after: Duration) {
    let socket = send_edit(server, body, "x-pad: 0").await;
    tokio::time::sleep(after).await;
    drop(socket);
}

/// Sends a JSON edit and hangs up once its hold is taken (the render is under way).
async fn edit_then_hang_up_once_held(
    server: &TestServer,
    ledger: &dyn Ledger,
    json: String,
    header: &str,
) {
    let socket = send_edit(server, json_body(json), header).await;
    for _ in 0..500 {
        if ledger.balance(&alice()).await.unwrap().held > 0 {
            drop(socket);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the edit never took its hold");
}

/// A JSON edit's content type and body.
fn json_body(json: String) -> (String, Bytes) {
    ("application/json".into(), Bytes::from(json))
}

async fn send_edit(server: &TestServer, body: (String, Bytes), header: &str) -> TcpStream {
    let (content_type, body) = body;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {EDITS} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\n{header}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    socket
}

/// Every key of alice's files, walking all pages.
async fn all_files(server: &TestServer) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/api/v1/files?limit=100".to_owned()
        } else {
            format!("/api/v1/files?limit=100&after={after}")
        };
        let page = server.call(Method::GET, &path, ALICE_KEY).await.json();
        for file in page["data"].as_array().unwrap() {
            keys.push(file["key"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return keys,
        }
    }
}

/// Waits until nothing is held and the output files have not changed for half a second.
async fn settled(server: &TestServer, ledger: &dyn Ledger) -> Vec<String> {
    let mut last = Vec::new();
    let mut quiet = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ledger.balance(&alice()).await.unwrap().held > 0 {
            quiet = 0;
            continue;
        }
        let outputs: Vec<String> = all_files(server)
            .await
            .into_iter()
            .filter(|k| k.contains("_generation."))
            .collect();
        quiet = if outputs == last { quiet + 1 } else { 0 };
        if quiet == 5 {
            return outputs;
        }
        last = outputs;
    }
    let b = ledger.balance(&alice()).await.unwrap();
    panic!(
        "the gateway never went quiet: {b:?}, {} outputs",
        last.len()
    );
}

async fn assert_conserved(ledger: &dyn Ledger) {
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        b.deposited,
        b.available + b.held as i64 + b.charged as i64,
        "{b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_timed_across_the_billed_window_leave_no_image_uncharged() {
    let dir = temp_dir("settle-window");
    let backend = ReferenceBackend::new().latency(Duration::from_millis(15));
    let (builder, ledger) = durable(&dir, backend);
    timed_disconnects_leave_no_image_uncharged(builder, ledger).await;
}

/// The same attack on a caller the attack takes to her storage quota: jobs that began with
/// room store their outputs past it (and are charged), later ones are refused before their
/// work; whatever the moment each client leaves, every reachable output was charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_timed_across_the_billed_window_at_the_quota_leave_no_image_uncharged() {
    let dir = temp_dir("settle-window-quota");
    let backend = ReferenceBackend::new().latency(Duration::from_millis(15));
    let (builder, ledger) = durable(&dir, backend);
    // The upload and the timing batch (13 files) fit; the attack's 120 edits do not.
    let builder = builder.quota(image_gateway::store::Quota::new(0, 40));
    timed_disconnects_leave_no_image_uncharged(builder, ledger).await;
}

/// The same attack on the stores replicas share: the PostgreSQL ledger and generation
/// records, files in an S3 bucket indexed in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_timed_across_the_billed_window_leave_no_image_uncharged_on_shared_stores() {
    use image_gateway::generations::PgGenerations;
    use image_gateway::ledger::PgLedger;
    use image_gateway::postgres::Postgres;
    use image_gateway::store::{S3Config, S3FileStore};
    let Some(url) = common::services::fresh_postgres("shared settle window").await else {
        return;
    };
    let Some((endpoint, bucket)) = common::services::fresh_bucket("shared settle window").await
    else {
        return;
    };
    let db = Postgres::connect(&url).await.unwrap();
    let mut s3 = S3Config::new(bucket, "us-east-1");
    s3.endpoint = Some(endpoint);
    s3.access_key_id = Some("test".into());
    s3.secret_access_key = Some("test".into());
    let ledger: Arc<dyn Ledger> = Arc::new(PgLedger::new(db.clone()));
    let builder = Gateway::builder()
        .keys(keys())
        .backend(ReferenceBackend::new().latency(Duration::from_millis(15)))
        .store(S3FileStore::s3(&s3, db.clone()).unwrap())
        .generations(PgGenerations::new(db))
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE));
    timed_disconnects_leave_no_image_uncharged(builder, ledger).await;
}

/// How many edits the attack sends at once.
const BATCH: usize = 12;

/// 120 edits cut off across the billed window, JSON by key and multipart in turn; then
/// every reachable output was charged, and nothing else, with the ledger conserved.
async fn timed_disconnects_leave_no_image_uncharged(
    builder: image_gateway::gateway::GatewayBuilder,
    ledger: Arc<dyn Ledger>,
) {
    let server = TestServer::start(builder.build()).await;
    ledger
        .deposit(&alice(), 1_000_000, "opening")
        .await
        .unwrap();
    let key = server
        .upload(ALICE_KEY, &[("src.png", &png(32, 32))])
        .await
        .uploaded_keys()[0]
        .clone();

    // A batch of edits left to finish, as many at once as the attack sends, tells how long
    // the whole billed window takes on these stores and this machine under that load (a
    // lone edit can be much faster than twelve at once on a busy machine), so the cut-offs
    // below span it.
    let started = std::time::Instant::now();
    let whole = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","n":1}}"#);
    let timing: Vec<_> = (0..BATCH)
        .map(|_| {
            let (server, whole) = (TestServer::at(server.addr), whole.clone());
            tokio::spawn(async move { server.edit_json(ALICE_KEY, &whole).await.status })
        })
        .collect();
    for edit in timing {
        assert_eq!(edit.await.unwrap(), 200);
    }
    let window = started.elapsed().max(Duration::from_millis(60)) * 3 / 2;

    // 120 edits, each cut off at a different moment across that window: before the backend,
    // while it works, between its answer and the settle, while outputs are stored, after.
    // Every other one is multipart: its upload is written while the backend works and its
    // images are recorded, and it is cut off across that too.
    let source = png(32, 32);
    let mut attacks = Vec::new();
    for i in 0..120u64 {
        let n = 1 + i % 3;
        let body = if i % 2 == 0 {
            json_body(format!(
                r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","n":{n}}}"#
            ))
        } else {
            Form::new()
                .file("image", "src.png", "image/png", &source)
                .text("model", "gpt-image-2")
                .text("prompt", "p")
                .text("n", &n.to_string())
                .finish()
        };
        let server = TestServer::at(server.addr);
        attacks.push(tokio::spawn(async move {
            edit_then_hang_up(&server, body, window * i as u32 / 120).await;
        }));
        if attacks.len() == BATCH {
            for attack in attacks.drain(..) {
                attack.await.unwrap();
            }
        }
    }
    for attack in attacks {
        attack.await.unwrap();
    }
    let outputs = settled(&server, &*ledger).await;
    let balance = ledger.balance(&alice()).await.unwrap();
    assert!(
        outputs.len() > BATCH,
        "no attacked edit got through (only the timing ones): the attack proved nothing"
    );
    let sources = all_files(&server)
        .await
        .into_iter()
        .filter(|k| k.ends_with("_src.png"))
        .count();
    assert!(
        sources > 1,
        "no multipart edit got its source stored: its half of the attack proved nothing"
    );
    assert_eq!(
        balance.charged,
        PRICE * outputs.len() as u64,
        "{} output files reachable, {} charged",
        outputs.len(),
        balance.charged
    );
    // Each reachable output is also fetchable, and its generation chains.
    let first = outputs[0].clone();
    let fetched = server
        .call(Method::GET, &format!("/api/v1/files/{first}"), ALICE_KEY)
        .await;
    assert_eq!(fetched.status, 200);
    assert_conserved(&*ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ttl_shorter_than_the_backend_is_renewed_and_charged() {
    let dir = temp_dir("short-ttl");
    // The backend takes 5 s; holds live 2 s; the expiry sweep runs every second.
    let backend = ReferenceBackend::new().latency(Duration::from_secs(5));
    let (builder, ledger) = durable(&dir, backend);
    let gateway = builder.hold_ttl(Duration::from_secs(2)).build();
    let sweep = tokio::spawn(gateway.expiry_sweep().run());
    let server = TestServer::start(gateway).await;
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    let edits = (0..3).map(|_| {
        let server = TestServer::at(server.addr);
        tokio::spawn(async move {
            let form = Form::new()
                .file("image", "a.png", "image/png", &png(8, 8))
                .text("model", "gpt-image-2")
                .text("prompt", "p")
                .text("n", "2");
            server.edit_form(ALICE_KEY, form).await
        })
    });
    for edit in edits.collect::<Vec<_>>() {
        let reply = edit.await.unwrap();
        assert_eq!(
            reply.images().len(),
            2,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.charged, b.held), (3 * 2 * PRICE, 0));
    let journal = ledger.journal(&alice(), None, 100).await.unwrap();
    assert!(
        journal.iter().all(|e| e.kind != EntryKind::Expire),
        "a live request's hold expired: {journal:?}"
    );
    assert_conserved(&*ledger).await;
    sweep.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_render_keeps_its_slot_and_is_charged() {
    let dir = temp_dir("abandoned");
    let backend = ReferenceBackend::new()
        .latency(Duration::from_millis(800))
        .max_renders(1);
    let (builder, ledger) = durable(&dir, backend);
    let limits = RateLimitLayer::new().max_in_flight(1);
    let server = TestServer::start(builder.rate_limit(limits).build()).await;
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    let key = server
        .upload(ALICE_KEY, &[("src.png", &png(64, 64))])
        .await
        .uploaded_keys()[0]
        .clone();
    let json = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","n":3}}"#);

    // The client leaves once its 800 ms render is under way.
    edit_then_hang_up_once_held(&server, &*ledger, json.clone(), "x-pad: 0").await;
    // Its slot is still taken while the render runs: a second edit is refused.
    let refused = server.edit_json(ALICE_KEY, &json).await;
    assert_eq!(
        refused.error().0,
        429,
        "the abandoned render's slot was given back early"
    );
    // The abandoned render is charged, and its outputs are listed under alice's files.
    let outputs = settled(&server, &*ledger).await;
    assert_eq!(outputs.len(), 3);
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.charged, b.held), (3 * PRICE, 0));
    // And once it has ended, the slot is free again.
    let reply = server.edit_json(ALICE_KEY, &json).await;
    assert_eq!(reply.images().len(), 3);
    assert_conserved(&*ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_edit_abandoned_then_retried_is_charged_once() {
    let dir = temp_dir("idempotent-abandoned");
    let backend = ReferenceBackend::new().latency(Duration::from_millis(600));
    let (builder, ledger) = durable(&dir, backend);
    let server = TestServer::start(builder.build()).await;
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    let key = server
        .upload(ALICE_KEY, &[("src.png", &png(16, 16))])
        .await
        .uploaded_keys()[0]
        .clone();
    let json = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","n":2}}"#);

    // The client leaves mid-render; its work runs on and is charged.
    edit_then_hang_up_once_held(&server, &*ledger, json.clone(), "idempotency-key: retry-1").await;
    // Its retry waits for that work and gets its answer, not a second render.
    let retried = loop {
        let req = http::Request::post(EDITS)
            .header("x-api-key", ALICE_KEY)
            .header("idempotency-key", "retry-1")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(json.clone())))
            .unwrap();
        let reply = server.send(req).await;
        if reply.status != 409 {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        retried.images().len(),
        2,
        "{}",
        String::from_utf8_lossy(&retried.body)
    );
    let outputs = settled(&server, &*ledger).await;
    assert_eq!(outputs.len(), 2, "one render, not two");
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.charged, b.held), (2 * PRICE, 0));
    assert_conserved(&*ledger).await;
}

/// A ledger whose settle waits at a gate (or fails), so a test can act between the
/// backend's answer and the committed charge.
struct SettleGate {
    inner: SqliteLedger,
    gate: tokio::sync::Semaphore,
    fail: bool,
    reached: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Ledger for SettleGate {
    async fn hold(
        &self,
        account: &image_gateway::auth::UserId,
        amount: image_gateway::ledger::Amount,
        ttl: Duration,
        memo: image_gateway::ledger::Memo,
    ) -> Result<image_gateway::ledger::Hold, image_gateway::ledger::LedgerError> {
        self.inner.hold(account, amount, ttl, memo).await
    }
    async fn settle(
        &self,
        hold: image_gateway::ledger::HoldId,
        charge: image_gateway::ledger::Amount,
        units: u32,
    ) -> Result<image_gateway::ledger::Settlement, image_gateway::ledger::LedgerError> {
        self.reached.notify_one();
        let _pass = self.gate.acquire().await;
        if self.fail {
            return Err(image_gateway::ledger::LedgerError::Storage(
                "disk gone".into(),
            ));
        }
        self.inner.settle(hold, charge, units).await
    }
    async fn release(
        &self,
        hold: image_gateway::ledger::HoldId,
    ) -> Result<(), image_gateway::ledger::LedgerError> {
        self.inner.release(hold).await
    }
    async fn renew(
        &self,
        hold: image_gateway::ledger::HoldId,
        ttl: Duration,
    ) -> Result<bool, image_gateway::ledger::LedgerError> {
        self.inner.renew(hold, ttl).await
    }
    async fn balance(
        &self,
        account: &image_gateway::auth::UserId,
    ) -> Result<image_gateway::ledger::Balance, image_gateway::ledger::LedgerError> {
        self.inner.balance(account).await
    }
    async fn deposit(
        &self,
        account: &image_gateway::auth::UserId,
        amount: i64,
        reference: &str,
    ) -> Result<bool, image_gateway::ledger::LedgerError> {
        self.inner.deposit(account, amount, reference).await
    }
    async fn expire(&self, now: u64) -> Result<usize, image_gateway::ledger::LedgerError> {
        self.inner.expire(now).await
    }
    async fn journal(
        &self,
        account: &image_gateway::auth::UserId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<image_gateway::ledger::JournalEntry>, image_gateway::ledger::LedgerError> {
        self.inner.journal(account, after_seq, limit).await
    }
}

/// A server on durable stores whose ledger settles only when the test lets it.
async fn gated(dir: &std::path::Path, fail: bool) -> (TestServer, Arc<SettleGate>, String) {
    let ledger = Arc::new(SettleGate {
        inner: SqliteLedger::open(dir.join("ledger.db")).unwrap(),
        gate: tokio::sync::Semaphore::new(0),
        fail,
        reached: tokio::sync::Notify::new(),
    });
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    let gateway = Gateway::builder()
        .keys(keys())
        .store(LocalFileStore::open(dir).unwrap())
        .generations(SqliteGenerations::open(dir.join("generations.db")).unwrap())
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(10, PRICE))
        .build();
    let server = TestServer::start(gateway).await;
    let key = server
        .upload(ALICE_KEY, &[("src.png", &png(16, 16))])
        .await
        .uploaded_keys()[0]
        .clone();
    let json = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","n":2}}"#);
    (server, ledger, json)
}

async fn outputs_now(server: &TestServer) -> Vec<String> {
    all_files(server)
        .await
        .into_iter()
        .filter(|k| k.contains("_generation."))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_between_the_backend_answer_and_the_settle_is_charged_before_anything_is_reachable(
) {
    let dir = temp_dir("gated-settle");
    let (server, ledger, json) = gated(&dir, false).await;
    let socket = send_edit(&server, json_body(json), "x-pad: 0").await;
    // The backend has answered and the settle is waiting: the client leaves now.
    ledger.reached.notified().await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        outputs_now(&server).await.is_empty(),
        "an output was reachable before its charge"
    );
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (b.charged, b.held),
        (0, 2 * PRICE),
        "still held, not released"
    );
    // The settle commits: the outputs are charged, then reachable.
    ledger.gate.add_permits(1);
    let outputs = settled(&server, &*ledger).await;
    assert_eq!(outputs.len(), 2);
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.charged, b.held), (2 * PRICE, 0));
    assert_conserved(&*ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_that_fails_leaves_nothing_reachable_and_releases_the_hold() {
    let dir = temp_dir("failed-settle");
    let (server, ledger, json) = gated(&dir, true).await;
    ledger.gate.add_permits(1);
    let reply = server.edit_json(ALICE_KEY, &json).await;
    assert_eq!(
        reply.error().0,
        500,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        outputs_now(&server).await.is_empty(),
        "uncharged outputs were kept"
    );
    let b = ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.available, b.charged, b.held), (1_000, 0, 0));
    assert_conserved(&*ledger).await;
}
