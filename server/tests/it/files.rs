//! Uploads, stored sources, file management and chained edits on a real server with a real
//! data directory (local file store + SQLite generations), as the example server runs them.

use crate::common;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use image_gateway::auth::UserId;
use image_gateway::store::{FileCursor, FileKey, FilePage, FileStore, MemoryFileStore, StoreError};
use image_gateway::Gateway;

/// Uploads a PNG as alice and edits it by key; returns the key and the generation id.
async fn upload_and_edit(server: &TestServer, side: u32) -> (String, String) {
    let image = png(side, side);
    let key = server
        .upload(ALICE_KEY, &[("a.png", &image)])
        .await
        .uploaded_keys()
        .remove(0);
    let id = server
        .edit_json(ALICE_KEY, &key_edit(&key))
        .await
        .generation_ids()
        .remove(0);
    (key, id)
}

fn key_edit(key: &str) -> String {
    format!(r#"{{"model":"gpt-image-2","prompt":"edit","image_key":"{key}","n":1}}"#)
}

#[tokio::test]
async fn upload_then_edit_by_key_then_a_chain_of_three() {
    let dir = temp_dir("chain");
    let server = TestServer::start(persistent_gateway(&dir)).await;
    let reply = server
        .upload(ALICE_KEY, &[("anchor.jpg", &jpeg(32, 24))])
        .await;
    let v = reply.json();
    let uploaded = &v["uploaded"][0];
    let key = uploaded["key"].as_str().unwrap();
    assert!(
        key.starts_with("files/alice/") && key.ends_with("_anchor.jpg"),
        "{key}"
    );
    assert_eq!(v["success"], true);
    assert_eq!(uploaded["mimeType"], "image/jpeg");
    assert_eq!(uploaded["isImage"], true);
    assert_eq!(uploaded["filename"], "anchor.jpg");
    assert_eq!(
        uploaded["size"].as_u64().unwrap(),
        jpeg(32, 24).len() as u64
    );
    assert!(dir.join(key).is_file(), "stored under the data dir");

    let reply = server.edit_json(ALICE_KEY, &key_edit(key)).await;
    assert_eq!(
        inspect(&reply.images()[0]),
        (image::ImageFormat::Png, 32, 24)
    );
    let mut id = reply.generation_ids().remove(0);
    for step in 0..3 {
        let reply = server.edit_generation(ALICE_KEY, &id).await;
        let images = reply.images();
        assert_eq!(images.len(), 1, "step {step}");
        assert_eq!(inspect(&images[0]).1, 32);
        let next = reply.generation_ids().remove(0);
        assert_ne!(next, id);
        id = next;
    }
    // Every output is an ordinary file of its owner.
    let list = server
        .call(Method::GET, "/api/v1/files?limit=100", ALICE_KEY)
        .await
        .json();
    let keys: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&key));
    assert!(
        keys.iter()
            .filter(|k| k.ends_with("_generation.png"))
            .count()
            >= 3,
        "the first three outputs are ready (the fourth may still be storing): {list}"
    );
}

#[tokio::test]
async fn multipart_edits_store_their_source_as_an_upload() {
    let server = reference_server().await;
    let source = png(12, 12);
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .file("image", "mine.png", "image/png", &source);
    let reply = server.edit_form(ALICE_KEY, form).await;
    assert_eq!(reply.images().len(), 1);
    let key = reply.headers["x-source-image-keys"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(key.starts_with("files/alice/") && key.ends_with("_mine.png"));
    let fetched = server
        .call(Method::GET, &format!("/api/v1/files/{key}"), ALICE_KEY)
        .await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.headers["content-type"], "image/png");
    assert_eq!(
        &fetched.body[..],
        &source[..],
        "the stored source is the sent bytes"
    );
    // ... and it is a source for the JSON method.
    assert_eq!(
        server
            .edit_json(ALICE_KEY, &key_edit(&key))
            .await
            .images()
            .len(),
        1
    );
}

#[tokio::test]
async fn spec_two_step_examples_run_unchanged() {
    let dir = temp_dir("spec");
    let server = TestServer::start(persistent_gateway(&dir.join("data"))).await;
    std::fs::write(dir.join("anchor.jpg"), jpeg(40, 30)).unwrap();
    let url = format!("http://{}", server.addr);
    let root = env!("CARGO_MANIFEST_DIR");
    let python = common::python::python();
    let clients: [(&str, Vec<String>); 3] = [
        (
            python.to_str().unwrap(),
            vec![format!("{root}/tests/sdk/two_step_requests.py")],
        ),
        ("bash", vec![format!("{root}/tests/sdk/two_step_curl.sh")]),
        ("node", vec![format!("{root}/tests/sdk/two_step_node.mjs")]),
    ];
    for (program, args) in clients {
        let edited = dir.join(format!("edited-{program}.png").replace('/', "_"));
        let (program, args, url, anchor, out) = (
            program.to_owned(),
            args,
            url.clone(),
            dir.join("anchor.jpg"),
            edited.clone(),
        );
        let shown = args.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&program)
                .args(&args)
                .env("GATEWAY_URL", url)
                .env("GATEWAY_KEY", ALICE_KEY)
                .env("ANCHOR_PATH", anchor)
                .env("EDITED_PATH", out)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{shown:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.trim().starts_with("files/alice/"),
            "{shown:?} printed {stdout}"
        );
        let bytes = std::fs::read(&edited).unwrap();
        let (_, w, h) = inspect(&bytes);
        assert!(w > 0 && h > 0);
    }
}

#[tokio::test]
async fn traversal_corpus_is_refused_and_touches_nothing_outside() {
    let dir = temp_dir("traversal");
    let data = dir.join("data");
    let server = TestServer::start(persistent_gateway(&data)).await;
    let canary = dir.join("canary.png");
    let marker = b"CANARY-7f3a9c-DO-NOT-LEAK";
    let mut canary_bytes = png(8, 8);
    canary_bytes.extend_from_slice(marker);
    std::fs::write(&canary, &canary_bytes).unwrap();
    std::fs::create_dir_all(data.join("files/bob")).unwrap();
    let bob_file = format!("files/bob/{}_x.png", uuid::Uuid::new_v4());
    std::fs::write(data.join(&bob_file), &canary_bytes).unwrap();

    let id = "0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11";
    let canary_abs = canary.display().to_string();
    let corpus: Vec<String> = vec![
        "../canary.png".into(),
        "../../canary.png".into(),
        "files/alice/../../canary.png".into(),
        "files/alice/../../../canary.png".into(),
        format!("files/alice/{id}_../../canary.png"),
        "/etc/passwd".into(),
        canary_abs.clone(),
        format!("/{canary_abs}"),
        "files/alice/%2e%2e/%2e%2e/canary.png".into(),
        "files/alice/%252e%252e/%252e%252e/canary.png".into(),
        "..%2f..%2fcanary.png".into(),
        "..%252f..%252fcanary.png".into(),
        "files\\alice\\..\\..\\canary.png".into(),
        "files/alice/..\\..\\canary.png".into(),
        format!("files\\alice\\{id}_x.png"),
        "files/alice/\u{ff0e}\u{ff0e}/canary.png".into(),
        format!("files/alice/{id}_\u{ff0e}\u{ff0e}"),
        format!("files/alice/{id}_\u{ff58}.png"),
        format!("files/alice/{id}_x\u{0}.png"),
        format!("files/alice/{id}_x.png\u{0}.jpg"),
        "files/alice/%00".into(),
        "files/alice/%c0%ae%c0%ae/canary.png".into(),
        "files/alice/..%c0%af../canary.png".into(),
        "files/alice/\u{c0}\u{ae}\u{c0}\u{ae}/canary.png".into(),
        bob_file.clone(),
        format!("files/bob/{id}_x.png"),
        format!("files/ALICE/{id}_x.png"),
        format!("FILES/alice/{id}_x.png"),
        "files/alice/../x".into(),
        "files/me/../x".into(),
        format!("files/alice/{id}_x.png/"),
        format!("files/alice/{id}_x.png/.."),
        format!("files//alice/{id}_x.png"),
        format!("files/alice//{id}_x.png"),
        format!("/files/alice/{id}_x.png"),
        format!("./files/alice/{id}_x.png"),
        format!("files/./alice/{id}_x.png"),
        format!("files/alice/./{id}_x.png"),
        String::new(),
        "files".into(),
        "files/".into(),
        "files/alice".into(),
        "files/alice/".into(),
        format!("files/alice/{id}_{}", "a".repeat(201)),
        format!("files/alice/{id}_{}", "a".repeat(5000)),
        format!("files/alice/{id}_."),
        format!("files/alice/{id}_.."),
        format!("files/alice/{id}_..."),
        format!("files/alice/{id}_%2e%2e"),
        format!("files/alice/{id}x.png"),
        format!("files/alice/{}_x.png", id.replace('-', "")),
        "files/alice/not-a-uuid-but-exactly-36-chars-lo_x.png".into(),
        format!("files/alice/{id}_x png"),
        format!("files/alice/{id}_x\tpng"),
        format!("files/alice/{id}_x\npng"),
        format!("files/alice/{id}_x.png;rm -rf /"),
        format!("files/alice/{id}_x.png?x=1"),
        format!("files/alice/{id}_x.png#f"),
        format!("files/alice/{id}_x.png\u{202e}"),
        "~/canary.png".into(),
        "file:///etc/passwd".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "C:\\Windows\\win.ini".into(),
        "\\\\server\\share\\x.png".into(),
    ];
    assert!(corpus.len() >= 50, "{}", corpus.len());

    for raw in &corpus {
        let body = serde_json::json!({
            "model": "gpt-image-2", "prompt": "p", "image_key": raw,
        });
        let reply = server.edit_json(ALICE_KEY, &body.to_string()).await;
        assert_eq!(
            reply.error(),
            (400, "invalid_image_key".into(), Some("image_key".into())),
            "{raw:?}"
        );
        assert!(!contains(&reply.body, marker), "{raw:?} leaked the canary");

        // The same keys in the file API's path, percent-encoded: never a 2xx.
        let path = format!("/api/v1/files/{}", encode_path(raw));
        for method in [Method::GET, Method::DELETE] {
            let reply = server.call(method.clone(), &path, ALICE_KEY).await;
            assert!(
                matches!(reply.status.as_u16(), 400 | 404 | 405),
                "{method} {raw:?}: {}",
                reply.status
            );
            assert!(!contains(&reply.body, marker), "{raw:?} leaked the canary");
        }
    }
    assert_eq!(
        std::fs::read(&canary).unwrap(),
        canary_bytes,
        "canary untouched"
    );
    assert!(data.join(&bob_file).is_file(), "bob's file untouched");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_path(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn bob_cannot_touch_alices_files_or_generations() {
    let server = reference_server().await;
    let (key, id) = upload_and_edit(&server, 8).await;

    let reply = server.edit_json(BOB_KEY, &key_edit(&key)).await;
    assert_eq!(reply.error().1, "invalid_image_key");
    let reply = server.edit_generation(BOB_KEY, &id).await;
    assert_eq!(
        reply.error(),
        (
            404,
            "generation_not_found".into(),
            Some("generation_id".into())
        )
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let reply = server.edit_generation(BOB_KEY, &unknown).await;
    assert_eq!(
        reply.error().1,
        "generation_not_found",
        "foreign and unknown look the same"
    );

    let bobs = server
        .call(Method::GET, "/api/v1/files", BOB_KEY)
        .await
        .json();
    assert_eq!(bobs["data"].as_array().unwrap().len(), 0);
    let path = format!("/api/v1/files/{key}");
    assert_eq!(
        server.call(Method::GET, &path, BOB_KEY).await.error().0,
        404
    );
    assert_eq!(
        server.call(Method::DELETE, &path, BOB_KEY).await.error().0,
        404
    );
    // Alice still has it.
    assert_eq!(
        server.call(Method::GET, &path, ALICE_KEY).await.status,
        StatusCode::OK
    );
    assert_eq!(
        server.edit_generation(ALICE_KEY, &id).await.images().len(),
        1
    );
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = temp_dir("restart");
    let (key, id) = {
        let server = TestServer::start(persistent_gateway(&dir)).await;
        let (key, id) = upload_and_edit(&server, 9).await;
        // Wait until the generation is durable before stopping.
        assert_eq!(
            server.edit_generation(ALICE_KEY, &id).await.images().len(),
            1
        );
        (key, id)
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = TestServer::start(persistent_gateway(&dir)).await;
    assert_eq!(
        server
            .edit_json(ALICE_KEY, &key_edit(&key))
            .await
            .images()
            .len(),
        1
    );
    let reply = server
        .edit_json(
            ALICE_KEY,
            &format!(r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{id}"}}"#),
        )
        .await;
    assert_eq!(inspect(&reply.images()[0]).1, 9);
}

/// A PNG of `side` x `side` noisy pixels: it does not compress, so its bytes run to about
/// four per pixel.
fn noisy_png(side: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbaImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [r, g, b, ..] = state.to_le_bytes();
        image::Rgba([r, g, b, 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Large sources are written past the page cache (whole blocks direct, the tail through
/// it), one under the 1 MiB at which multipart joins a part as it arrives and one past it,
/// with a length that is not a whole number of blocks. Each comes back byte for byte, by
/// the files API and as an edit's source, also after a restart.
#[tokio::test]
async fn large_sources_on_local_files_come_back_whole() {
    let dir = temp_dir("large-sources");
    let sources = [noisy_png(300), noisy_png(700)];
    assert!(sources[0].len() > 256 * 1024 && sources[0].len() < 1024 * 1024);
    assert!(sources[1].len() > 1024 * 1024 && sources[1].len() % 4096 != 0);
    let mut keys = Vec::new();
    {
        let server = TestServer::start(persistent_gateway(&dir)).await;
        for source in &sources {
            let form = Form::new()
                .text("model", "gpt-image-2")
                .text("prompt", "p")
                .file("image", "large.png", "image/png", source);
            let reply = server.edit_form(ALICE_KEY, form).await;
            assert_eq!(reply.images().len(), 1, "{:?}", reply.status);
            let key = reply.headers["x-source-image-keys"].to_str().unwrap();
            keys.push(key.to_owned());
        }
    }
    let server = TestServer::start(persistent_gateway(&dir)).await;
    for (key, source) in keys.iter().zip(&sources) {
        let fetched = server
            .call(Method::GET, &format!("/api/v1/files/{key}"), ALICE_KEY)
            .await;
        assert_eq!(fetched.status, StatusCode::OK);
        assert!(fetched.body[..] == source[..], "{key}: the sent bytes");
        let reply = server.edit_json(ALICE_KEY, &key_edit(key)).await;
        assert_eq!(reply.images().len(), 1, "{key} is a source");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn deleted_file_is_image_not_found() {
    let server = reference_server().await;
    let key = server
        .upload(ALICE_KEY, &[("a.png", &png(8, 8))])
        .await
        .uploaded_keys()
        .remove(0);
    let path = format!("/api/v1/files/{key}");
    let reply = server.call(Method::DELETE, &path, ALICE_KEY).await;
    assert_eq!(
        reply.json(),
        serde_json::json!({"deleted": true, "key": key})
    );
    let reply = server.edit_json(ALICE_KEY, &key_edit(&key)).await;
    assert_eq!(
        reply.error(),
        (404, "IMAGE_NOT_FOUND".into(), Some("image_key".into()))
    );
    assert_eq!(
        server
            .call(Method::DELETE, &path, ALICE_KEY)
            .await
            .error()
            .1,
        "IMAGE_NOT_FOUND"
    );
    // Percent-encoded keys name the same file.
    let key = server
        .upload(ALICE_KEY, &[("b.png", &png(8, 8))])
        .await
        .uploaded_keys()
        .remove(0);
    let encoded = format!("/api/v1/files/{}", key.replace('/', "%2F"));
    assert_eq!(
        server
            .call(Method::DELETE, &encoded, ALICE_KEY)
            .await
            .status,
        StatusCode::OK
    );
}

/// How many files alice has.
async fn file_count(server: &TestServer) -> usize {
    server
        .call(Method::GET, "/api/v1/files", ALICE_KEY)
        .await
        .json()["data"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_batch_stores_its_good_files_and_lists_the_bad_ones_in_errors() {
    let server = reference_server().await;
    // Alone, a file over the 10 MB upload limit is the answer's error, and nothing stored.
    let mut big = png(4, 4);
    big.resize(10 * 1024 * 1024 + 1, 0);
    let reply = server.upload(ALICE_KEY, &[("big.png", &big)]).await;
    assert_eq!(
        reply.error(),
        (400, "IMAGE_TOO_LARGE".into(), Some("files".into()))
    );
    let mut huge = png(4, 4);
    huge.resize(26 * 1024 * 1024, 0);
    assert_eq!(
        server
            .upload(ALICE_KEY, &[("huge.png", &huge)])
            .await
            .error()
            .0,
        413
    );
    assert_eq!(
        file_count(&server).await,
        0,
        "nothing of a refused batch stored"
    );

    // Beside good files, bad ones are refused alone and named in `errors`.
    let text = b"plain text, named like an image".to_vec();
    let reply = server
        .upload(
            ALICE_KEY,
            &[
                ("ok.png", &png(4, 4)),
                ("bad.png", &text),
                ("big.png", &big),
                ("ok.jpg", &jpeg(4, 4)),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    let stored: Vec<&str> = v["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["filename"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["ok.png", "ok.jpg"]);
    let errors: Vec<(&str, &str)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["filename"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            ("bad.png", "IMAGE_TYPE_UNSUPPORTED"),
            ("big.png", "IMAGE_TOO_LARGE")
        ]
    );
    assert_eq!(file_count(&server).await, 2);

    // A file of exactly 10 MiB is taken.
    let mut exact = png(4, 4);
    exact.resize(10 * 1024 * 1024, 0);
    assert_eq!(
        server
            .upload(ALICE_KEY, &[("exact.png", &exact)])
            .await
            .uploaded_keys()
            .len(),
        1
    );

    // At most five files per upload: five are taken, six refused whole.
    let image = png(2, 2);
    let five: Vec<(&str, &[u8])> = (0..5).map(|_| ("a.png", &image[..])).collect();
    assert_eq!(
        server.upload(ALICE_KEY, &five).await.uploaded_keys().len(),
        5
    );
    let six: Vec<(&str, &[u8])> = (0..6).map(|_| ("a.png", &image[..])).collect();
    let reply = server.upload(ALICE_KEY, &six).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("files".into()))
    );
    assert_eq!(
        file_count(&server).await,
        2 + 1 + 5,
        "a refused batch stores nothing"
    );

    let (content_type, body) = Form::new().text("note", "no files here").finish();
    let req = http::Request::post("/api/v1/upload")
        .header("x-api-key", ALICE_KEY)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(body))
        .unwrap();
    assert_eq!(
        server.send(req).await.error(),
        (400, "invalid_request".into(), Some("files".into()))
    );
}

#[tokio::test]
async fn listing_runs_newest_first_and_pages_through_every_file_once() {
    // Times are whole seconds: the store's clock, moved by the test, dates the next
    // upload a second after the batch.
    let time = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let store =
        MemoryFileStore::new().with_clock(image_gateway::clock::Clock::manual(time.clone()));
    let server = TestServer::start(Gateway::builder().keys(keys()).store(store).build()).await;
    let image = png(4, 4);
    let files: Vec<(&str, &[u8])> = (0..5).map(|_| ("p.png", &image[..])).collect();
    let mut expected = server.upload(ALICE_KEY, &files).await.uploaded_keys();
    time.store(1_001, std::sync::atomic::Ordering::Release);
    let newest = server
        .upload(ALICE_KEY, &[("new.png", &image)])
        .await
        .uploaded_keys();
    let mut seen = Vec::new();
    let mut created = Vec::new();
    let mut path = "/api/v1/files?limit=2".to_owned();
    loop {
        let page = server.call(Method::GET, &path, ALICE_KEY).await.json();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|f| f["key"].as_str().unwrap().to_owned()));
        created.extend(data.iter().map(|f| f["created"].as_u64().unwrap()));
        if !page["has_more"].as_bool().unwrap() {
            assert!(page["next_after"].is_null());
            break;
        }
        path = format!(
            "/api/v1/files?limit=2&after={}",
            page["next_after"].as_str().unwrap()
        );
        // A file stored while the client pages is newer than the cursor: the pages that
        // follow neither repeat nor skip anything.
        if seen.len() == 2 {
            server.upload(ALICE_KEY, &[("late.png", &image)]).await;
        }
    }
    assert_eq!(seen[0], newest[0], "the newest file first");
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    seen.sort();
    expected.extend(newest);
    expected.sort();
    assert_eq!(seen, expected, "every file once");

    for bad in ["limit=0", "after=files/alice/not-a-cursor.png"] {
        let reply = server
            .call(Method::GET, &format!("/api/v1/files?{bad}"), ALICE_KEY)
            .await;
        assert_eq!(reply.error().0, 400, "{bad}");
        assert_eq!(reply.error().1, "invalid_request", "{bad}");
    }
}

/// A store whose writes of generated images take a while, like a remote object store.
struct SlowStore {
    inner: MemoryFileStore,
    delay: Duration,
}

#[async_trait]
impl FileStore for SlowStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        if key.as_str().ends_with("_generation.png") {
            tokio::time::sleep(self.delay).await;
        }
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
        self.inner.list(owner, after, limit).await
    }
}

#[tokio::test]
async fn a_generation_still_being_stored_is_409_with_retry_after() {
    let store = SlowStore {
        inner: MemoryFileStore::new(),
        delay: Duration::from_millis(800),
    };
    let server = TestServer::start(Gateway::builder().keys(keys()).store(store).build()).await;
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &png(8, 8));
    let id = server
        .edit_form(ALICE_KEY, form)
        .await
        .generation_ids()
        .remove(0);
    let body = format!(r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{id}"}}"#);
    let reply = server.edit_json(ALICE_KEY, &body).await;
    assert_eq!(
        reply.error(),
        (
            409,
            "generation_not_ready".into(),
            Some("generation_id".into())
        )
    );
    assert_eq!(reply.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(server.edit_json(ALICE_KEY, &body).await.images().len(), 1);
}
