//! Two `image-gateway` processes on one PostgreSQL database (`GATEWAY_DATABASE_URL`) and one
//! Redis (`GATEWAY_REDIS_URL`): the money rules and the per-key limits hold across them, a
//! replica killed while it holds money has the hold released by the other's sweep, and
//! limits fail closed while Redis is unreachable.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{gateway_binary, Process};
use common::services::{fresh_postgres, fresh_redis};
use common::*;
use http::Method;

/// Replica `i` on `url`, with the test settings (alice, a balance of 100, 10 per image, holds
/// of 2 s) and `env` over them.
fn replica(url: &str, env: &[(&str, &str)]) -> (Process, TestServer) {
    let port = 0;
    let mut all = vec![("GATEWAY_DATABASE_URL", url)];
    all.extend_from_slice(env);
    let process = Process::start_with(&gateway_binary(), &temp_dir("replica"), port, &all);
    let server = TestServer::at(process.addr);
    (process, server)
}

/// The settings that put the binary's files in a fresh bucket of the test S3 server;
/// `None` (said loudly) when there is none and CI does not require one.
async fn bucket_settings(label: &str) -> Option<Vec<(&'static str, String)>> {
    let (endpoint, bucket) = common::services::fresh_bucket(label).await?;
    Some(vec![
        ("GATEWAY_S3_BUCKET", bucket),
        ("GATEWAY_S3_ENDPOINT", endpoint),
        ("GATEWAY_S3_ACCESS_KEY_ID", "test".to_owned()),
        ("GATEWAY_S3_SECRET_ACCESS_KEY", "test".to_owned()),
    ])
}

/// Two replicas on `url`, both with `env` over the test settings.
async fn two_replicas(
    url: &str,
    env: Vec<(&'static str, String)>,
) -> ((Process, TestServer), (Process, TestServer)) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        (replica(&url, &env), replica(&url, &env))
    })
    .await
    .unwrap()
}

fn edit() -> Form {
    Form::new()
        .file("image", "a.png", "image/png", &png(8, 8))
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .text("n", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_edits_over_two_replicas_are_charged_exactly_the_balance() {
    let Some(url) = fresh_postgres("two replicas").await else {
        return;
    };
    // Both start at once on an empty schema: one migrates, both credit the opening balance
    // under one reference, so it is credited once.
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking({
            let url = url.clone();
            move || replica(&url, &[])
        }),
        tokio::task::spawn_blocking({
            let url = url.clone();
            move || replica(&url, &[])
        })
    );
    let ((_a, a), (_b, b)) = (a.unwrap(), b.unwrap());
    assert_eq!(a.balance(ALICE_KEY).await, (100, 0));
    assert_eq!(b.balance(ALICE_KEY).await, (100, 0));

    let edits = (0..50).map(|i| {
        let server = TestServer::at(if i % 2 == 0 { a.addr } else { b.addr });
        tokio::spawn(async move { server.edit_form(ALICE_KEY, edit()).await })
    });
    let mut statuses = Vec::new();
    for edit in futures_util::future::join_all(edits).await {
        statuses.push(edit.unwrap().status.as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (10, 40), "{statuses:?}");
    assert_eq!(a.balance(ALICE_KEY).await, (0, 0));
    assert_eq!(b.balance(ALICE_KEY).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_hold_is_released_by_the_others_sweep() {
    let Some(url) = fresh_postgres("killed replica").await else {
        return;
    };
    let slow = replica(&url, &[("GATEWAY_REFERENCE_LATENCY_MS", "30000")]);
    let (_b, b) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || replica(&url, &[]))
            .await
            .unwrap()
    };
    let (a_process, a) = slow;
    let pending = tokio::spawn(async move { a.edit_form(ALICE_KEY, edit()).await });
    let started = Instant::now();
    while b.balance(ALICE_KEY).await.1 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no hold was taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.balance(ALICE_KEY).await,
        (90, 10),
        "replica A holds the price of one image"
    );
    a_process.kill();
    let _ = pending.await;
    // Holds live 2 s and replica B sweeps every second: the money is back within seconds.
    let started = Instant::now();
    while b.balance(ALICE_KEY).await != (100, 0) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the dead replica's hold was never released: {:?}",
            b.balance(ALICE_KEY).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_async_jobs_running_has_them_finished_by_the_other() {
    let Some(url) = fresh_postgres("job takeover").await else {
        return;
    };
    let Some(mut env) = bucket_settings("takeover").await else {
        return;
    };
    // Renders of 3 s; leases of 2 s (renewed every 0.67 s while a replica lives); holds
    // that outlive the takeover.
    env.extend([
        ("GATEWAY_REFERENCE_LATENCY_MS", "3000".to_owned()),
        ("GATEWAY_JOB_LEASE_SECS", "2".to_owned()),
        ("GATEWAY_HOLD_TTL_SECS", "60".to_owned()),
    ]);
    let ((a_process, a), (_b_process, b)) = two_replicas(&url, env).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let req = http::Request::post("/v1/images/generations")
            .header("x-api-key", ALICE_KEY)
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#,
            )))
            .unwrap();
        let reply = send(a.addr, req).await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        b.balance(ALICE_KEY).await,
        (50, 50),
        "replica A holds five jobs"
    );
    a_process.kill();
    // Replica B takes the jobs over once A's leases lapse, and runs them under A's holds.
    let started = Instant::now();
    for id in &ids {
        let path = format!("/v1/images/jobs/{id}");
        let job = loop {
            let job = b.call(Method::GET, &path, ALICE_KEY).await.json();
            if job["status"] == "succeeded" || job["status"] == "failed" {
                break job;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(job["status"], "succeeded", "{job}");
        let data = job["result"]["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert!(!data[0]["b64_json"].as_str().unwrap().is_empty());
    }
    // Charged once per job, under the holds A took: 100 = 50 available + 50 charged.
    assert_eq!(b.balance(ALICE_KEY).await, (50, 0));
    let usage = b
        .call(Method::GET, "/api/v1/usage?status=all", ALICE_KEY)
        .await
        .json();
    let ends = usage["data"].as_array().unwrap();
    assert_eq!(ends.len(), 5, "one end per hold: {usage}");
    assert!(ends
        .iter()
        .all(|e| e["status"] == "charged" && e["amount"] == 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_replicas() {
    let Some(url) = fresh_postgres("shared rate limit").await else {
        return;
    };
    let Some((redis, prefix)) = fresh_redis("shared rate limit").await else {
        return;
    };
    let env = [
        ("GATEWAY_REDIS_URL", redis.as_str()),
        ("GATEWAY_REDIS_PREFIX", prefix.as_str()),
        ("GATEWAY_RATE_LIMIT", "10"),
    ];
    let env = env.map(|(k, v)| (k, v.to_owned())).to_vec();
    let ((_a, a), (_b, b)) = two_replicas(&url, env).await;
    let mut statuses = Vec::new();
    for i in 0..15 {
        let server = if i % 2 == 0 { &a } else { &b };
        let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
        statuses.push(reply.status.as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (ok, limited),
        (10, 5),
        "10 a minute over both replicas: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_bound_holds_across_replicas() {
    let Some(url) = fresh_postgres("shared in-flight bound").await else {
        return;
    };
    let Some((redis, prefix)) = fresh_redis("shared in-flight bound").await else {
        return;
    };
    let env = [
        ("GATEWAY_REDIS_URL", redis.clone()),
        ("GATEWAY_REDIS_PREFIX", prefix.clone()),
        ("GATEWAY_MAX_IN_FLIGHT", "1".to_owned()),
        ("GATEWAY_REFERENCE_LATENCY_MS", "1500".to_owned()),
    ];
    let ((_a, a), (_b, b)) = two_replicas(&url, env.to_vec()).await;
    let first = tokio::spawn({
        let a = TestServer::at(a.addr);
        async move { a.edit_form(ALICE_KEY, edit()).await }
    });
    // Once A's edit holds its slot (seen in Redis), B refuses alice.
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let slots = format!("{prefix}:slots:alice");
    let started = Instant::now();
    loop {
        let taken: u64 = redis::cmd("ZCARD")
            .arg(&slots)
            .query_async(&mut connection)
            .await
            .unwrap();
        if taken == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "A's edit never took its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = b.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
    assert_eq!(reply.error().1, "rate_limit_exceeded");
    assert_eq!(first.await.unwrap().status, 200);
    // A's slot was given back with its answer.
    let started = Instant::now();
    while b
        .call(Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .status
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slot was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay to `target` that can be cut: what a network partition from Redis looks like.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }

    /// Closes the listener and every link.
    fn cut(self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_closed_while_redis_is_unreachable() {
    use image_gateway::ratelimit::{RateLimitLayer, RedisLimits};
    use image_gateway::Gateway;
    let Some((redis, prefix)) = fresh_redis("fail closed").await else {
        return;
    };
    let target = redis.trim_start_matches("redis://").to_owned();
    let relay = Relay::to(target).await;
    let limits = RedisLimits::connect(&format!("redis://{}", relay.addr), &prefix)
        .await
        .unwrap();
    let gateway = Gateway::builder()
        .keys(keys())
        .rate_limit(
            RateLimitLayer::new()
                .per_minute(std::num::NonZeroU32::new(100).unwrap())
                .redis(limits),
        )
        .build();
    let server = TestServer::start(gateway).await;
    let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
    assert_eq!(reply.status, 200);
    relay.cut();
    let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
    assert_eq!(
        reply.error(),
        (503, "limits_unavailable".into(), None),
        "refused, not let through"
    );
    assert_eq!(reply.headers["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_generations_and_retries_follow_the_client_across_replicas() {
    let Some(url) = fresh_postgres("shared files").await else {
        return;
    };
    let Some(env) = bucket_settings("shared files").await else {
        return;
    };
    let ((_a, a), (_b, b)) = two_replicas(&url, env).await;
    // Uploaded on A, edited by key on B.
    let uploaded = a.upload(ALICE_KEY, &[("anchor.png", &png(16, 16))]).await;
    let key = uploaded.uploaded_keys().remove(0);
    let by_key = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}"}}"#);
    let edited = b.edit_json(ALICE_KEY, &by_key).await;
    assert_eq!(
        edited.status,
        200,
        "{}",
        String::from_utf8_lossy(&edited.body)
    );
    // Made on B, chained on A (once B has stored it).
    let id = edited.generation_ids().remove(0);
    let chained = format!(r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{id}"}}"#);
    let started = Instant::now();
    let reply = loop {
        let reply = a.edit_json(ALICE_KEY, &chained).await;
        if reply.status != 409 {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // Both replicas list the same files (outputs are stored just after their answer).
    let started = Instant::now();
    let list_a = loop {
        let list = a.call(Method::GET, "/api/v1/files", ALICE_KEY).await.json();
        if list["data"].as_array().unwrap().len() == 3 {
            break list;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let list_b = b.call(Method::GET, "/api/v1/files", ALICE_KEY).await.json();
    assert_eq!(list_a["data"], list_b["data"]);

    // One Idempotency-Key, sent to A then retried on B: one answer, charged once.
    let retried = |server: &TestServer| {
        let request = http::Request::post(EDITS)
            .header("authorization", format!("Bearer {ALICE_KEY}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "retry-across-replicas")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                by_key.clone(),
            )))
            .unwrap();
        let server = TestServer::at(server.addr);
        async move { server.send(request).await }
    };
    let before = a.balance(ALICE_KEY).await;
    let first = retried(&a).await;
    // The first request's record and outputs are finished just after its answer; until
    // then the retry is told to wait (409 with Retry-After), as a client would be.
    let started = Instant::now();
    let second = loop {
        let reply = retried(&b).await;
        if reply.status != 409 {
            break reply;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the retry never got its answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    assert_eq!(first.generation_ids(), second.generation_ids());
    assert_eq!(b.balance(ALICE_KEY).await.0, before.0 - 10, "charged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_replica_is_limited_and_revoked_on_both() {
    let Some(url) = fresh_postgres("keys across replicas").await else {
        return;
    };
    const ADMIN: &str = "adm_replicas_0123456789";
    let admin_env = vec![("GATEWAY_ADMIN_KEY", ADMIN.to_owned())];
    let ((_a, a), (_b, b)) = two_replicas(&url, admin_env).await;
    let admin = |server: &TestServer, method: Method, path: String, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        let server = TestServer::at(server.addr);
        async move { server.send(req).await }
    };
    // 10 per image, 50 a day: ten concurrent edits over both replicas, exactly five pass.
    let made = admin(
        &a,
        Method::POST,
        "/admin/v1/users/alice/keys".into(),
        r#"{"daily_limit":50}"#,
    )
    .await;
    assert_eq!(made.status.as_u16(), 201);
    let made = made.json();
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    let edits = (0..10).map(|i| {
        let server = TestServer::at(if i % 2 == 0 { a.addr } else { b.addr });
        let key = key.clone();
        tokio::spawn(async move { server.edit_form(&key, edit()).await.status.as_u16() })
    });
    let mut statuses = Vec::new();
    for status in futures_util::future::join_all(edits).await {
        statuses.push(status.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(a.balance(ALICE_KEY).await, (50, 0));

    // Listed on the other replica; revoked there, refused here from the next request.
    let listed = admin(&b, Method::GET, "/admin/v1/users/alice/keys".into(), "")
        .await
        .json();
    let data = listed["data"].as_array().unwrap();
    assert!(data.iter().any(|k| k["id"] == id.as_str()), "{listed}");
    // The configured key is a managed key on PostgreSQL: listed beside the one made.
    let names: Vec<&str> = data.iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(data.len(), 2, "{names:?}");
    assert!(names.contains(&"configured"), "{names:?}");
    let revoked = admin(&b, Method::DELETE, format!("/admin/v1/keys/{id}"), "").await;
    assert_eq!(revoked.status.as_u16(), 200);
    for server in [&a, &b] {
        let reply = server.call(Method::GET, "/api/v1/balance", &key).await;
        assert_eq!(reply.status.as_u16(), 401);
    }
    assert_eq!(
        a.call(Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .status
            .as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_uploading_for_one_user_at_once_keep_to_one_shared_quota() {
    let Some(url) = fresh_postgres("shared quota").await else {
        return;
    };
    let Some(mut env) = bucket_settings("shared quota").await else {
        return;
    };
    env.push(("GATEWAY_QUOTA_FILES", "5".to_owned()));
    let ((_a, a), (_b, b)) = two_replicas(&url, env).await;
    let file = png(16, 16);
    // Twenty uploads at once, alternating replicas: each process's own count sees only its
    // half; the shared index's count sees all.
    let uploads = (0..20).map(|i| {
        let server = TestServer::at(if i % 2 == 0 { a.addr } else { b.addr });
        let file = file.clone();
        tokio::spawn(async move {
            let name = format!("f{i}.png");
            server
                .upload(ALICE_KEY, &[(&name, &file)])
                .await
                .status
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for status in futures_util::future::join_all(uploads).await {
        statuses.push(status.unwrap());
    }
    let stored = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(stored, 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 413),
        "{statuses:?}"
    );
    for server in [&a, &b] {
        let list = server
            .call(Method::GET, "/api/v1/files", ALICE_KEY)
            .await
            .json();
        assert_eq!(list["data"].as_array().unwrap().len(), 5, "{list}");
    }
}

/// An object store that stops every put at `gate`: before the object is written, or after.
#[derive(Debug)]
struct Gated {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    after: bool,
    reached: tokio::sync::Notify,
}

impl std::fmt::Display for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for Gated {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if !self.after {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.reached.notify_one();
        std::future::pending::<()>().await;
        Ok(result)
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &object_store::path::Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_the_bucket_cut_at_any_step_leaves_no_object_unaccounted() {
    use futures_util::TryStreamExt;
    use image_gateway::auth::UserId;
    use image_gateway::postgres::Postgres;
    use image_gateway::store::{FileKey, FileStore, S3FileStore, Usage};
    let Some(url) = fresh_postgres("cut bucket writes").await else {
        return;
    };
    let Some((endpoint, bucket)) = common::services::fresh_bucket("cut bucket writes").await else {
        return;
    };
    let s3: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap(),
    );
    let db = Postgres::connect(&url).await.unwrap();
    let alice = UserId::new("alice").unwrap();
    let objects = || async {
        let listed: Vec<_> = s3.list(None).try_collect().await.unwrap();
        listed.len()
    };
    for after in [false, true] {
        let gated = std::sync::Arc::new(Gated {
            inner: s3.clone(),
            after,
            reached: tokio::sync::Notify::new(),
        });
        let store = S3FileStore::new(gated.clone(), db.clone());
        let key = FileKey::new(&alice, uuid::Uuid::new_v4(), "cut.png");
        let writing = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.put(&key, bytes::Bytes::from(png(8, 8))).await })
        };
        gated.reached.notified().await;
        writing.abort();
        let _ = writing.await;
        // Cut: counted (its room kept), never listed, its object written only in the
        // second case.
        assert_eq!(
            store.usage(&alice).await.unwrap().files,
            1,
            "after: {after}"
        );
        assert!(store.list(&alice, None, 10).await.unwrap().files.is_empty());
        assert_eq!(objects().await, usize::from(after));
        // The sweep ends it: the object (if any) and then the row.
        assert_eq!(store.sweep_pending(Duration::ZERO).await.unwrap(), 1);
        assert_eq!(store.usage(&alice).await.unwrap(), Usage::new(0, 0));
        assert_eq!(objects().await, 0, "after: {after}");
    }
    // A write that ends is listed and kept by the sweep.
    let store = S3FileStore::new(s3.clone(), db.clone());
    let key = FileKey::new(&alice, uuid::Uuid::new_v4(), "kept.png");
    store
        .put(&key, bytes::Bytes::from(png(8, 8)))
        .await
        .unwrap();
    assert_eq!(store.sweep_pending(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(store.list(&alice, None, 10).await.unwrap().files.len(), 1);
    assert_eq!(objects().await, 1);
}

/// A deployment that always answers `result`, counting its calls.
struct Counted {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    fails: bool,
}

#[image_gateway::async_trait]
impl image_gateway::backend::ImageBackend for Counted {
    async fn edit(
        &self,
        job: &image_gateway::job::EditJob,
    ) -> Result<Vec<image_gateway::job::Image>, image_gateway::backend::BackendError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fails {
            return Err(image_gateway::backend::BackendError::failed(
                image_gateway::backend::Failure::Busy,
                "503",
            ));
        }
        let image = image_gateway::job::Image::new(
            bytes::Bytes::from_static(b"img"),
            job.params.output_format,
        );
        Ok(vec![image])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_resting_on_one_replica_rests_on_the_other_through_redis() {
    use image_gateway::backend::{Deployment, ImageBackend, RedisRests, RoutedBackend};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some((url, prefix)) = fresh_redis("shared rests").await else {
        return;
    };
    // Two replicas route over the same two deployments (same names); the preferred one
    // answers 503.
    let flaky = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let steady = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut replicas = Vec::new();
    for i in 0..2 {
        let rests = RedisRests::connect(&url, &prefix).await.unwrap();
        let routed = RoutedBackend::new([
            Deployment::new(
                "m#0",
                Counted {
                    calls: flaky[i].clone(),
                    fails: true,
                },
            )
            .priority(1),
            Deployment::new(
                "m#1",
                Counted {
                    calls: steady[i].clone(),
                    fails: false,
                },
            ),
        ])
        .shared_rests(Arc::new(rests));
        replicas.push(routed);
    }
    let job = || {
        let principal =
            image_gateway::auth::Principal::new(image_gateway::auth::UserId::new("alice").unwrap());
        image_gateway::job::EditJob::new(
            principal,
            Vec::new(),
            image_gateway::job::EditParams::new("m", "p"),
        )
    };
    // Three failures on replica 0 rest the deployment (each job falls back and succeeds).
    for _ in 0..3 {
        assert_eq!(replicas[0].edit(&job()).await.unwrap().len(), 1);
    }
    assert_eq!(flaky[0].load(Ordering::SeqCst), 3);
    // Replica 1 never saw it fail, and skips it.
    for _ in 0..5 {
        assert_eq!(replicas[1].edit(&job()).await.unwrap().len(), 1);
    }
    assert_eq!(
        flaky[1].load(Ordering::SeqCst),
        0,
        "rested on both replicas"
    );
    assert_eq!(steady[1].load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refunds_a_charged_generation_a_dead_process_left_pending_and_only_an_old_one() {
    use image_gateway::generations::{Generation, GenerationStatus, Generations, PgGenerations};
    use image_gateway::id::{GenerationId, UserId};
    use image_gateway::ledger::{Amount, Ledger, Memo, PgLedger};
    use image_gateway::postgres::Postgres;
    use image_gateway::store::FileKey;
    let Some(url) = fresh_postgres("pending sweep").await else {
        return;
    };
    // The replica's runner ticks every few hundred milliseconds with a one-second lease.
    let (_process, server) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || replica(&url, &[("GATEWAY_JOB_LEASE_SECS", "1")]))
            .await
            .unwrap()
    };
    assert_eq!(server.balance(ALICE_KEY).await, (100, 0));
    // What a process that died between a settle and its storage leaves: a hold settled for
    // two images, and their records pending, one recorded long ago, one just now.
    let db = Postgres::connect(&url).await.unwrap();
    let (ledger, records) = (PgLedger::new(db.clone()), PgGenerations::new(db));
    let alice = UserId::new("alice").unwrap();
    let memo = Memo::new("died", "gpt-image-2", 2);
    let hold = ledger
        .hold(&alice, Amount::new(20), Duration::from_secs(600), memo)
        .await
        .unwrap()
        .id;
    ledger.settle(hold, Amount::new(20), 2).await.unwrap();
    let pending = |created: u64| {
        let id = GenerationId::new();
        let key = FileKey::new(&alice, id.as_uuid(), "generation.png");
        Generation::new(id, key, GenerationStatus::Pending, created).charged_under(Some(hold))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (old, young) = (pending(1_000), pending(now));
    records.insert(&old).await.unwrap();
    records.insert(&young).await.unwrap();
    assert_eq!(server.balance(ALICE_KEY).await, (80, 0));
    // The old one's bytes never reached the store: refunded its share (10) and failed. The
    // young one may still be being stored by a live process: left as it is.
    let started = Instant::now();
    while server.balance(ALICE_KEY).await != (90, 0) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never refunded: {:?}",
            server.balance(ALICE_KEY).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = |id| {
        let records = &records;
        async move { records.get(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(old.id).await, GenerationStatus::Failed);
    assert_eq!(status(young.id).await, GenerationStatus::Pending);
}
