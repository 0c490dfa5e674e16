//! Two `image-gateway` processes on one PostgreSQL database (`GATEWAY_DATABASE_URL`): the
//! money rules hold across them, and a replica killed while it holds money has the hold
//! released by the other's sweep.
#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use common::binary::{gateway_binary, Process};
use common::services::fresh_postgres;
use common::*;
use http::Method;

/// Replica `i` on `url`, with the test settings (alice, a balance of 100, 10 per image, holds
/// of 2 s) and `env` over them.
fn replica(url: &str, env: &[(&str, &str)]) -> (Process, TestServer) {
    let port = free_port();
    let mut all = vec![("GATEWAY_DATABASE_URL", url)];
    all.extend_from_slice(env);
    let process = Process::start_with(&gateway_binary(), &temp_dir("replica"), port, &all);
    let server = TestServer::at(format!("127.0.0.1:{port}").parse().unwrap());
    (process, server)
}

async fn balance(server: &TestServer) -> (i64, i64) {
    let reply = server
        .call(Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .json();
    (
        reply["available"].as_i64().unwrap(),
        reply["held"].as_i64().unwrap(),
    )
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
    assert_eq!(balance(&a).await, (100, 0));
    assert_eq!(balance(&b).await, (100, 0));

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
    assert_eq!(balance(&a).await, (0, 0));
    assert_eq!(balance(&b).await, (0, 0));
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
    while balance(&b).await.1 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no hold was taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        balance(&b).await,
        (90, 10),
        "replica A holds the price of one image"
    );
    a_process.kill();
    let _ = pending.await;
    // Holds live 2 s and replica B sweeps every second: the money is back within seconds.
    let started = Instant::now();
    while balance(&b).await != (100, 0) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the dead replica's hold was never released: {:?}",
            balance(&b).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
