//! The key lifecycle through the binary: create (shown once), list (never the key), revoke
//! and rotate under concurrent use, expiry, and each key's daily limit, model and IP
//! allow-lists; keys outlive a restart.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::binary::{gateway_binary, Process};
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "adm_keys_secret_0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn start(dir: &std::path::Path, port: u16) -> Process {
    Process::start_with(
        &gateway_binary(),
        dir,
        port,
        &[("GATEWAY_ADMIN_KEY", ADMIN_KEY)],
    )
}

async fn admin(server: &TestServer, method: Method, path: &str, body: Value) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    server.send(req).await
}

async fn create(server: &TestServer, user: &str, body: Value) -> (String, String) {
    let made = admin(
        server,
        Method::POST,
        &format!("/admin/v1/users/{user}/keys"),
        body,
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let made = made.json();
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

async fn balance_status(server: &TestServer, key: &str) -> StatusCode {
    server
        .call(Method::GET, "/api/v1/balance", key)
        .await
        .status
}

fn edit(n: u32, model: &str) -> Form {
    Form::new()
        .text("model", model)
        .text("prompt", "make it blue")
        .text("n", &n.to_string())
        .file("image", "a.png", "image/png", &png(8, 8))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_listed_revoked_and_kept_across_a_restart() {
    let dir = temp_dir("keys-lifecycle");
    let gateway = start(&dir, 0);
    let server = TestServer::at(gateway.addr);
    // The restart below listens where this start did.
    let port = gateway.addr.port();

    // Only the admin key opens the key routes.
    let as_user = server
        .call(Method::GET, "/admin/v1/users/alice/keys", ALICE_KEY)
        .await;
    assert_eq!(as_user.error().1, "invalid_api_key");

    let (key, id) = create(&server, "alice", json!({"name": "laptop"})).await;
    assert!(key.starts_with("pk_live_") && key.len() == 40, "{key}");
    assert_eq!(balance_status(&server, &key).await, StatusCode::OK);
    let balance = server
        .call(Method::GET, "/api/v1/balance", &key)
        .await
        .json();
    assert_eq!(
        balance["available"], 100,
        "the same account as the configured key"
    );
    // A key for a user nobody configured makes that user; deposits reach it.
    let (carol, _) = create(&server, "carol", json!({})).await;
    assert_eq!(balance_status(&server, &carol).await, StatusCode::OK);
    let deposit = admin(
        &server,
        Method::POST,
        "/admin/v1/accounts/carol/deposits",
        json!({"amount": 5, "reference": "r1"}),
    )
    .await;
    assert_eq!(deposit.status, StatusCode::OK);

    let listed = admin(
        &server,
        Method::GET,
        "/admin/v1/users/alice/keys",
        json!({}),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    let text = String::from_utf8(listed.body.to_vec()).unwrap();
    assert!(!text.contains(&key), "the key is shown once, never listed");
    assert!(
        !text.contains(ALICE_KEY),
        "configured keys are not listed either"
    );
    let listed = listed.json();
    let entry = &listed["data"][0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["name"], "laptop");
    assert_eq!(entry["prefix"], &key[..12]);
    assert!(entry["last_used"].as_u64().unwrap() >= now() - 5);
    assert!(entry["revoked_at"].is_null());

    // Bad input is refused with a reason; nothing is made.
    for (body, param) in [
        (json!({"ips": ["10.0.0.0/33"]}), "ips"),
        (json!({"expires_at": 1}), "expires_at"),
        (json!({"name": "x".repeat(101)}), "name"),
    ] {
        let refused = admin(&server, Method::POST, "/admin/v1/users/alice/keys", body).await;
        assert_eq!(
            refused.error(),
            (400, "invalid_request".into(), Some(param.into()))
        );
    }
    let unknown = admin(
        &server,
        Method::POST,
        "/admin/v1/users/alice/keys",
        json!({"admin": true}),
    )
    .await;
    assert_eq!(unknown.error().1, "invalid_request");
    assert_eq!(
        admin(
            &server,
            Method::GET,
            "/admin/v1/users/alice/keys",
            json!({})
        )
        .await
        .json()["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Revoked while requests with it are in flight: every request sent after the revoke's
    // answer is 401; the ones before it were 200 or 401, never anything else.
    let hammer = {
        let server = TestServer::at(server.addr);
        let key = key.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..200 {
                seen.push(balance_status(&server, &key).await);
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let revoked = admin(
        &server,
        Method::DELETE,
        &format!("/admin/v1/keys/{id}"),
        json!({}),
    )
    .await;
    assert_eq!(revoked.json()["revoked"], true);
    for _ in 0..20 {
        assert_eq!(
            balance_status(&server, &key).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let seen = hammer.await.unwrap();
    assert!(seen
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED));
    // Once refused, never served again.
    let first_refused = seen.iter().position(|s| *s == StatusCode::UNAUTHORIZED);
    if let Some(at) = first_refused {
        assert!(seen[at..].iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    }
    let again = admin(
        &server,
        Method::DELETE,
        &format!("/admin/v1/keys/{id}"),
        json!({}),
    )
    .await;
    assert_eq!(again.error().1, "key_not_found");

    // A restart keeps carol's key and alice's revocation.
    drop(gateway);
    let _gateway = start(&dir, port);
    assert_eq!(balance_status(&server, &carol).await, StatusCode::OK);
    assert_eq!(
        balance_status(&server, &key).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(balance_status(&server, ALICE_KEY).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_key_for_its_grace_and_expiry_ends_a_key() {
    let dir = temp_dir("keys-rotate");
    let port = 0;
    let gateway = start(&dir, port);
    let server = TestServer::at(gateway.addr);

    let limits = json!({"name": "ci", "daily_limit": 500, "models": ["gpt-image-2"]});
    let (old, old_id) = create(&server, "alice", limits).await;
    let (short, _) = create(&server, "alice", json!({"expires_at": now() + 2})).await;
    assert_eq!(balance_status(&server, &short).await, StatusCode::OK);

    // Requests with the old key go on while it is rotated: none of them fails.
    let hammer = {
        let server = TestServer::at(server.addr);
        let old = old.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..100 {
                seen.push(balance_status(&server, &old).await);
            }
            seen
        })
    };
    let rotated = admin(
        &server,
        Method::POST,
        &format!("/admin/v1/keys/{old_id}/rotate"),
        json!({"grace_seconds": 3}),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let rotated = rotated.json();
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["name"], "ci");
    assert_eq!(rotated["limits"]["daily_limit"], 500, "limits carry over");
    assert_eq!(rotated["replaces"]["id"], old_id.as_str());
    let old_until = rotated["replaces"]["expires_at"].as_u64().unwrap();
    assert!(old_until >= now() + 2 && old_until <= now() + 3);
    assert!(hammer.await.unwrap().iter().all(|s| *s == StatusCode::OK));
    assert_eq!(balance_status(&server, &new).await, StatusCode::OK);
    assert_eq!(
        balance_status(&server, &old).await,
        StatusCode::OK,
        "within its grace"
    );

    // Past the grace and the expiry: both ended keys are 401, the new key works.
    let until = old_until.max(now() + 2) + 1;
    while now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        balance_status(&server, &old).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        balance_status(&server, &short).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(balance_status(&server, &new).await, StatusCode::OK);
    let rotate_ended = admin(
        &server,
        Method::POST,
        &format!("/admin/v1/keys/{old_id}/rotate"),
        json!({}),
    )
    .await;
    assert_eq!(rotate_ended.error().1, "key_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_keeps_to_its_daily_limit_models_and_networks() {
    let dir = temp_dir("keys-limits");
    let port = 0;
    let gateway = start(&dir, port);
    let server = TestServer::at(gateway.addr);
    let balance = || async {
        server
            .call(Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .json()["available"]
            .as_i64()
            .unwrap()
    };

    // 10 per image, 30 a day: 20 passes, 20 more would pass the limit, 10 reaches it exactly.
    let (capped, capped_id) = create(&server, "alice", json!({"daily_limit": 30})).await;
    assert_eq!(
        server
            .edit_form(&capped, edit(2, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    let over = server.edit_form(&capped, edit(2, "gpt-image-2")).await;
    assert_eq!(over.error().0, 429);
    assert_eq!(over.error().1, "daily_limit_exceeded");
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    assert_eq!(
        server
            .edit_form(&capped, edit(1, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    let at_limit = server.edit_form(&capped, edit(1, "gpt-image-2")).await;
    assert_eq!(at_limit.error().1, "daily_limit_exceeded");
    assert_eq!(
        balance().await,
        70,
        "30 charged, the refusals charged nothing"
    );
    // Another key of the same user is not held back by this one's limit.
    assert_eq!(
        server
            .edit_form(ALICE_KEY, edit(1, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    // Raised without a restart: the next request sees it.
    let raised = admin(
        &server,
        Method::PATCH,
        &format!("/admin/v1/keys/{capped_id}"),
        json!({"daily_limit": 40}),
    )
    .await;
    assert_eq!(raised.json()["limits"]["daily_limit"], 40);
    assert_eq!(
        server
            .edit_form(&capped, edit(1, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(balance().await, 50);

    // Six concurrent edits of 10 against a limit of 30: the holds count as they are taken,
    // so exactly three pass.
    let (racing, _) = create(&server, "alice", json!({"daily_limit": 30})).await;
    let edits = (0..6).map(|_| {
        let server = TestServer::at(server.addr);
        let key = racing.clone();
        tokio::spawn(async move { server.edit_form(&key, edit(1, "gpt-image-2")).await.status })
    });
    let mut passed = 0;
    for status in futures_util::future::join_all(edits).await {
        let status = status.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS);
        passed += usize::from(status == StatusCode::OK);
    }
    assert_eq!(passed, 3);
    assert_eq!(balance().await, 20);

    // A model outside the allow-list: 403 before anything is held.
    let (narrow, _) = create(&server, "alice", json!({"models": ["gpt-image-1"]})).await;
    let denied = server.edit_form(&narrow, edit(1, "gpt-image-2")).await;
    assert_eq!(
        denied.error(),
        (403, "MODEL_ACCESS_DENIED".into(), Some("model".into()))
    );
    assert_eq!(balance().await, 20);

    // Networks: the test connects from 127.0.0.1.
    let (elsewhere, _) = create(
        &server,
        "alice",
        json!({"ips": ["10.0.0.0/8", "2001:db8::/32"]}),
    )
    .await;
    let refused = server.edit_form(&elsewhere, edit(1, "gpt-image-2")).await;
    assert_eq!(refused.error(), (403, "ip_not_allowed".into(), None));
    assert_eq!(
        balance_status(&server, &elsewhere).await,
        StatusCode::FORBIDDEN
    );
    let (local, _) = create(&server, "alice", json!({"ips": ["127.0.0.0/8"]})).await;
    assert_eq!(
        server
            .edit_form(&local, edit(1, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(balance().await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_log_filters_by_key_model_and_time_and_the_admin_reads_any_user() {
    let dir = temp_dir("keys-usage");
    let port = 0;
    let gateway = start(&dir, port);
    let server = TestServer::at(gateway.addr);
    let started = now();
    let (first, first_id) = create(&server, "alice", json!({"name": "first"})).await;
    let (second, _) = create(&server, "alice", json!({"name": "second"})).await;
    assert_eq!(
        server
            .edit_form(&first, edit(2, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .edit_form(&second, edit(1, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .edit_form(ALICE_KEY, edit(1, "gpt-image-2"))
            .await
            .status,
        StatusCode::OK
    );
    // A size the model refuses: held, then released in full.
    let refused = server
        .edit_form(&first, edit(1, "gpt-image-2").text("size", "9000x9000"))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let usage = |key: String, query: String| {
        let server = TestServer::at(server.addr);
        async move {
            let reply = server
                .call(Method::GET, &format!("/api/v1/usage{query}"), &key)
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {:?}", reply.body);
            reply.json()["data"].as_array().unwrap().clone()
        }
    };
    let all = usage(first.clone(), String::new()).await;
    assert_eq!(all.len(), 3, "the charges, of every key of the user");
    let entry = &all[0];
    assert_eq!(entry["key_id"], first_id.as_str());
    assert_eq!(
        (
            &entry["n_requested"],
            &entry["n_returned"],
            &entry["held"],
            &entry["charged"],
            &entry["released"]
        ),
        (&json!(2), &json!(2), &json!(20), &json!(20), &json!(0))
    );
    assert_eq!(
        all[2]["key_id"],
        Value::Null,
        "the configured key is no managed key"
    );

    let by_key = usage(first.clone(), format!("?key={first_id}")).await;
    assert_eq!(by_key.len(), 1);
    let with_releases = usage(first.clone(), format!("?key={first_id}&status=all")).await;
    assert_eq!(with_releases.len(), 2);
    let released = &with_releases[1];
    assert_eq!(released["status"], "released");
    assert_eq!(
        (
            &released["held"],
            &released["charged"],
            &released["released"]
        ),
        (&json!(10), &json!(0), &json!(10))
    );
    assert!(usage(first.clone(), "?model=gpt-image-1".into())
        .await
        .is_empty());
    assert_eq!(
        usage(first.clone(), "?model=gpt-image-2&limit=2".into())
            .await
            .len(),
        2
    );
    assert!(usage(first.clone(), format!("?from={}", now() + 100))
        .await
        .is_empty());
    assert!(usage(first.clone(), format!("?to={started}"))
        .await
        .is_empty());
    assert_eq!(
        usage(first.clone(), format!("?from={started}&to={}", now() + 1))
            .await
            .len(),
        3
    );
    let bad = server
        .call(Method::GET, "/api/v1/usage?from=yesterday", &first)
        .await;
    assert_eq!(
        bad.error(),
        (400, "invalid_request".into(), Some("from".into()))
    );

    // The admin reads any user's log with the same filters; a user key cannot.
    let read = admin(
        &server,
        Method::GET,
        &format!("/admin/v1/users/alice/usage?key={first_id}&status=all"),
        json!({}),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json()["data"].as_array().unwrap().len(), 2);
    let nobody = admin(
        &server,
        Method::GET,
        "/admin/v1/users/nobody/usage",
        json!({}),
    )
    .await;
    assert_eq!(nobody.json()["data"].as_array().unwrap().len(), 0);
    let as_user = server
        .call(Method::GET, "/admin/v1/users/alice/usage", ALICE_KEY)
        .await;
    assert_eq!(as_user.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_edit_whose_client_leaves_after_the_hold_is_charged_to_the_day() {
    let dir = temp_dir("keys-leave");
    let port = 0;
    let gateway = Process::start_with(
        &gateway_binary(),
        &dir,
        port,
        &[
            ("GATEWAY_ADMIN_KEY", ADMIN_KEY),
            ("GATEWAY_REFERENCE_LATENCY_MS", "1500"),
        ],
    );
    let server = TestServer::at(gateway.addr);
    let balance = || async {
        let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
        let json = reply.json();
        (
            json["available"].as_i64().unwrap(),
            json["held"].as_i64().unwrap(),
        )
    };
    let (key, _) = create(&server, "alice", json!({"daily_limit": 20})).await;

    // Once its 10 is held (the render under way), the client of a streamed edit hangs up.
    let leaving = {
        let server = TestServer::at(server.addr);
        let key = key.clone();
        tokio::spawn(async move {
            server
                .edit_form(&key, edit(1, "gpt-image-2").text("stream", "true"))
                .await
        })
    };
    while balance().await.1 == 0 {
        assert!(
            !leaving.is_finished(),
            "the edit ended before its hold was seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leaving.abort();
    while balance().await.1 != 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(balance().await, (90, 0), "the begun render was charged");

    // Its 10 counts against the key's day: 10 can still be spent, not more.
    let done = server.edit_form(&key, edit(1, "gpt-image-2")).await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let over = server.edit_form(&key, edit(1, "gpt-image-2")).await;
    assert_eq!(over.error().1, "daily_limit_exceeded");
    assert_eq!(balance().await, (80, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_and_its_predecessor_share_one_days_spend() {
    rotated_keys_share_a_day(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_and_its_predecessor_share_one_days_spend_on_postgres() {
    if let Some(url) = common::services::fresh_postgres("rotated keys on PostgreSQL").await {
        rotated_keys_share_a_day(&[("GATEWAY_DATABASE_URL", &url)]).await;
    }
}

/// A chain of rotated keys spends one day's limit, on the binary's key store (`env` picks it).
async fn rotated_keys_share_a_day(env: &[(&str, &str)]) {
    let dir = temp_dir("keys-rotated-spend");
    let port = 0;
    let mut all = vec![("GATEWAY_ADMIN_KEY", ADMIN_KEY)];
    all.extend_from_slice(env);
    let gateway = Process::start_with(&gateway_binary(), &dir, port, &all);
    let server = TestServer::at(gateway.addr);
    // Price 10: a limit of 30 is three images a day, whichever keys of the chain ask.
    let (old, old_id) = create(&server, "alice", json!({"daily_limit": 30})).await;
    let first = server.edit_form(&old, edit(1, "gpt-image-2")).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let rotated = admin(
        &server,
        Method::POST,
        &format!("/admin/v1/keys/{old_id}/rotate"),
        json!({"grace_seconds": 3600}),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let rotated = rotated.json();
    let (new, new_id) = (
        rotated["key"].as_str().unwrap().to_owned(),
        rotated["id"].as_str().unwrap().to_owned(),
    );
    // The new key starts the day at the old key's 10, not at zero.
    let second = server.edit_form(&new, edit(1, "gpt-image-2")).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    let third = server.edit_form(&old, edit(1, "gpt-image-2")).await;
    assert_eq!(third.status, StatusCode::OK, "{:?}", third.body);
    for key in [&old, &new] {
        let over = server.edit_form(key, edit(1, "gpt-image-2")).await;
        assert_eq!(over.error().1, "daily_limit_exceeded");
    }
    // A second rotation joins the same chain.
    let again = admin(
        &server,
        Method::POST,
        &format!("/admin/v1/keys/{new_id}/rotate"),
        json!({"grace_seconds": 3600}),
    )
    .await;
    let newest = again.json()["key"].as_str().unwrap().to_owned();
    let over = server.edit_form(&newest, edit(1, "gpt-image-2")).await;
    assert_eq!(over.error().1, "daily_limit_exceeded");
    let balance = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
    assert_eq!(
        balance.json()["available"],
        70,
        "three images of 10 charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_keys_on_postgres_are_listed_revocable_and_end_when_removed() {
    let Some(url) = common::services::fresh_postgres("configured keys on PostgreSQL").await else {
        return;
    };
    const BOB: &str = "pk_live_bob_configured_0123456789";
    const CAROL: &str = "pk_live_carol_configured_012345678";
    let dir = temp_dir("keys-configured-pg");
    let start = |keys: String, port: u16| {
        Process::start_with(
            &gateway_binary(),
            &dir,
            port,
            &[
                ("GATEWAY_ADMIN_KEY", ADMIN_KEY),
                ("GATEWAY_DATABASE_URL", &url),
                ("GATEWAY_API_KEYS", &keys),
            ],
        )
    };
    let all = format!("alice:{ALICE_KEY},bob:{BOB},carol:{CAROL}");
    let gateway = start(all.clone(), 0);
    let server = TestServer::at(gateway.addr);
    // The restart below listens where this start did.
    let port = gateway.addr.port();
    // Listed like any managed key, with an id and a prefix, never the key.
    let listed = admin(
        &server,
        Method::GET,
        "/admin/v1/users/bob/keys",
        json!(null),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let listed = listed.json();
    let bob = &listed["data"][0];
    assert_eq!(bob["name"], "configured");
    assert_eq!(bob["prefix"], &BOB[..12]);
    assert!(
        !listed.to_string().contains(BOB),
        "the key itself is never shown"
    );
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    // Revocable like any other: at once, and it stays revoked across a restart.
    assert_eq!(balance_status(&server, BOB).await, StatusCode::OK);
    let revoked = admin(
        &server,
        Method::DELETE,
        &format!("/admin/v1/keys/{bob_id}"),
        json!(null),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);
    assert_eq!(balance_status(&server, BOB).await, StatusCode::UNAUTHORIZED);
    drop(gateway);
    // Carol taken out of the configuration: her key ends at this start.
    let gateway = start(format!("alice:{ALICE_KEY},bob:{BOB}"), port);
    assert_eq!(balance_status(&server, BOB).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        balance_status(&server, CAROL).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(balance_status(&server, ALICE_KEY).await, StatusCode::OK);
    let carol = admin(
        &server,
        Method::GET,
        "/admin/v1/users/carol/keys",
        json!(null),
    )
    .await;
    assert!(carol.json()["data"][0]["revoked_at"].is_u64());
    drop(gateway);
}
