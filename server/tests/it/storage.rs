//! Disk as a resource strangers can exhaust: per-user quotas on everything stored for a user,
//! nothing stored for an edit that is refused, a full volume answered clearly while money
//! keeps working, and deposits that would overflow a balance.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use image_gateway::catalog::ModelSpec;
use image_gateway::generations::SqliteGenerations;
use image_gateway::ledger::{Ledger, SqliteLedger};
use image_gateway::store::{LocalFileStore, Quota};
use image_gateway::Gateway;

const ADMIN: &str = "admin_secret_key_0123";

fn alice() -> image_gateway::auth::UserId {
    image_gateway::auth::UserId::new("alice").unwrap()
}

struct Setup {
    server: TestServer,
    ledger: Arc<dyn Ledger>,
}

async fn setup(dir: &std::path::Path, store: LocalFileStore, quota: Quota, price: u64) -> Setup {
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(dir.join("ledger.db")).unwrap());
    let gateway = Gateway::builder()
        .keys(keys())
        .store(store)
        .generations(SqliteGenerations::open(dir.join("generations.db")).unwrap())
        .ledger(ledger.clone())
        .quota(quota)
        .admin_key(ADMIN)
        .model("gpt-image-2", ModelSpec::new(10, price))
        .build();
    Setup {
        server: TestServer::start(gateway).await,
        ledger,
    }
}

impl Setup {
    async fn files(&self) -> usize {
        let list = self
            .server
            .call(Method::GET, "/api/v1/files?limit=100", ALICE_KEY)
            .await
            .json();
        list["data"].as_array().unwrap().len()
    }

    async fn deposit(&self, amount: &str, reference: &str) -> Reply {
        let body = format!(r#"{{"amount": {amount}, "reference": "{reference}"}}"#);
        let req = Request::post("/admin/v1/accounts/alice/deposits")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.server.send(req).await
    }
}

fn edit_with(images: usize, n: u32) -> Form {
    let source = png(16, 16);
    (0..images)
        .fold(Form::new(), |form, i| {
            form.file("image[]", &format!("{i}.png"), "image/png", &source)
        })
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .text("n", &n.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_stored_for_a_user_counts_against_its_file_quota() {
    let dir = temp_dir("quota-files");
    let s = setup(
        &dir,
        LocalFileStore::open(&dir).unwrap(),
        Quota::new(0, 4),
        0,
    )
    .await;
    let file = png(32, 32);
    let keys = s
        .server
        .upload(ALICE_KEY, &[("a.png", &file), ("b.png", &file)])
        .await
        .uploaded_keys();
    // A multipart edit stores its sources: three more would make five files.
    let refused = s.server.edit_form(ALICE_KEY, edit_with(3, 1)).await;
    let (status, code, _) = refused.error();
    assert_eq!((status, code.as_str()), (413, "storage_quota_exceeded"));
    assert_eq!(s.files().await, 2, "nothing of the refused edit was kept");
    // Outputs count too, and are refused before anything is charged.
    let by_key = |n: u32| {
        format!(
            r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{}","n":{n}}}"#,
            keys[0]
        )
    };
    let refused = s.server.edit_json(ALICE_KEY, &by_key(3)).await;
    assert_eq!(
        refused.error().1,
        "storage_quota_exceeded",
        "three outputs would make five files"
    );
    assert_eq!(s.files().await, 2);
    assert_eq!(
        s.server
            .edit_json(ALICE_KEY, &by_key(2))
            .await
            .images()
            .len(),
        2
    );
    let full = s.server.upload(ALICE_KEY, &[("c.png", &file)]).await;
    assert_eq!(full.error().1, "storage_quota_exceeded");
    // Deleting makes room again; bob's quota is his own.
    let deleted = s
        .server
        .call(
            Method::DELETE,
            &format!("/api/v1/files/{}", keys[1]),
            ALICE_KEY,
        )
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        s.server
            .upload(ALICE_KEY, &[("c.png", &file)])
            .await
            .uploaded_keys()
            .len(),
        1
    );
    assert_eq!(
        s.server
            .upload(BOB_KEY, &[("b.png", &file)])
            .await
            .uploaded_keys()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_byte_quota_are_refused_whole() {
    let dir = temp_dir("quota-bytes");
    let file = png(64, 64);
    let quota = Quota::new(3 * file.len() as u64 + 10, 0);
    let s = setup(&dir, LocalFileStore::open(&dir).unwrap(), quota, 0).await;
    s.server
        .upload(ALICE_KEY, &[("a.png", &file), ("b.png", &file)])
        .await
        .uploaded_keys();
    let refused = s
        .server
        .upload(ALICE_KEY, &[("c.png", &file), ("d.png", &file)])
        .await;
    assert_eq!(refused.error().1, "storage_quota_exceeded");
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("quota") && message.contains("DELETE"),
        "{message}"
    );
    assert_eq!(s.files().await, 2, "nothing of the refused batch was kept");
    assert_eq!(
        s.server
            .upload(ALICE_KEY, &[("c.png", &file)])
            .await
            .uploaded_keys()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_refused_for_money_stores_none_of_its_sources() {
    let dir = temp_dir("refused");
    let s = setup(
        &dir,
        LocalFileStore::open(&dir).unwrap(),
        Quota::default(),
        10,
    )
    .await;
    // Zero balance: 402 before anything is written, however many sources came.
    let refused = s.server.edit_form(ALICE_KEY, edit_with(16, 1)).await;
    assert_eq!(refused.error().0, 402);
    assert_eq!(s.files().await, 0, "a refused edit kept its sources");
    // Paid, the same edit keeps its sources, as the spec says.
    s.ledger.deposit(&alice(), 10, "opening").await.unwrap();
    assert_eq!(
        s.server
            .edit_form(ALICE_KEY, edit_with(3, 1))
            .await
            .images()
            .len(),
        1
    );
    let outputs_and_sources = 1 + 3;
    for _ in 0..100 {
        if s.files().await == outputs_and_sources {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "expected {outputs_and_sources} files, found {}",
        s.files().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_refuses_files_with_507_and_money_keeps_working() {
    let dir = temp_dir("full");
    // First life: a file uploaded while there is room.
    let key = {
        let s = setup(
            &dir,
            LocalFileStore::open(&dir).unwrap(),
            Quota::default(),
            10,
        )
        .await;
        s.server
            .upload(ALICE_KEY, &[("a.png", &png(16, 16))])
            .await
            .uploaded_keys()[0]
            .clone()
    };
    // Second life: a floor above the volume's free space, as when the disk is full.
    let store = LocalFileStore::open(&dir)
        .unwrap()
        .min_free_bytes(u64::MAX / 2);
    let s = setup(&dir, store, Quota::default(), 10).await;
    let deposited = s.deposit("100", "invoice-1").await;
    assert_eq!(
        deposited.json()["deposited"],
        true,
        "deposits work with the volume full"
    );

    let refused = s.server.upload(ALICE_KEY, &[("b.png", &png(16, 16))]).await;
    assert_eq!(refused.error(), (507, "insufficient_storage".into(), None));
    let refused = s.server.edit_form(ALICE_KEY, edit_with(1, 2)).await;
    assert_eq!(refused.error().1, "insufficient_storage");
    let json = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","n":2}}"#);
    let refused = s.server.edit_json(ALICE_KEY, &json).await;
    assert_eq!(refused.error().1, "insufficient_storage");

    // Nothing was charged or left held; balance and usage answer.
    let balance = s
        .server
        .call(Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .json();
    assert_eq!(
        (balance["available"].as_i64(), balance["held"].as_u64()),
        (Some(100), Some(0))
    );
    let usage = s.server.call(Method::GET, "/api/v1/usage", ALICE_KEY).await;
    assert_eq!(usage.status, 200);
    assert_eq!(s.files().await, 1, "reading files still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_that_would_overflow_the_balance_is_refused_and_changes_nothing() {
    let dir = temp_dir("overflow");
    let s = setup(
        &dir,
        LocalFileStore::open(&dir).unwrap(),
        Quota::default(),
        10,
    )
    .await;
    let max = i64::MAX.to_string();
    assert_eq!(s.deposit(&max, "big").await.json()["deposited"], true);
    let refused = s.deposit("1", "one-more").await;
    assert_eq!(
        refused.error(),
        (400, "invalid_request".into(), Some("amount".into()))
    );
    let balance = s
        .server
        .call(Method::GET, "/api/v1/balance", ALICE_KEY)
        .await;
    let text = String::from_utf8_lossy(&balance.body).into_owned();
    assert!(text.contains(&format!("\"available\":{max}")), "{text}");
    // The refused deposit's reference is still free: nothing of it was kept.
    let b = s.ledger.balance(&alice()).await.unwrap();
    assert_eq!((b.available, b.deposited), (i64::MAX, i64::MAX));
    let journal = s.ledger.journal(&alice(), None, 10).await.unwrap();
    assert_eq!(journal.len(), 1);
}

/// The backend calls the binary at `addr` has made so far (its metrics' edit count).
async fn renders(server: &TestServer) -> f64 {
    let text = server.call(Method::GET, "/metrics", ADMIN).await;
    let text = String::from_utf8(text.body.to_vec()).unwrap();
    text.lines()
        .find(|l| l.starts_with("image_gateway_backend_duration_seconds_count{operation=\"edit\"}"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_no_room_is_refused_before_its_work_and_work_that_ran_is_kept_and_charged() {
    use common::binary::{gateway_binary, Process};
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let source = png(640, 480);
    let data = temp_dir("quota-before-work");
    let port = 0;
    // Room for the source and a few bytes: the first edit's output does not fit the bytes
    // left, but its one file does.
    let quota = (source.len() + 64).to_string();
    let gateway = Process::start_with(
        &binary,
        &data,
        port,
        &[
            ("GATEWAY_QUOTA_BYTES", &quota),
            ("GATEWAY_ADMIN_KEY", ADMIN),
        ],
    );
    let server = TestServer::at(gateway.addr);
    let key = server
        .upload(ALICE_KEY, &[("big.png", &source)])
        .await
        .uploaded_keys()
        .remove(0);
    let edit =
        format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}","size":"auto"}}"#);
    let available = || async {
        server
            .call(Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .json()["available"]
            .as_i64()
            .unwrap()
    };
    // The work ran (there was room for an output when it began): it is kept past the
    // quota, listed and charged, never refused after the fact.
    let ran = server.edit_json(ALICE_KEY, &edit).await;
    assert_eq!(ran.status, 200, "{:?}", ran.body);
    let id = ran.generation_ids().remove(0);
    assert_eq!(available().await, 90);
    assert_eq!(renders(&server).await, 1.0);
    let chained = server.edit_generation(ALICE_KEY, &id).await;
    assert_ne!(chained.status, 200, "no room for the chained edit's output");
    // Now at her quota: every further edit is refused before any render, charged nothing.
    for _ in 0..5 {
        let refused = server.edit_json(ALICE_KEY, &edit).await;
        assert_eq!(refused.error().1, "storage_quota_exceeded");
    }
    assert_eq!(
        renders(&server).await,
        1.0,
        "no render ran for a refused job"
    );
    assert_eq!(available().await, 90);
}
