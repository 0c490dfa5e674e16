//! Hold + settle pairs per second on the SQLite and PostgreSQL ledgers: one writer, and 8
//! concurrent (on one account, the hottest case: every pair takes its row).
//!
//! `cargo bench --bench ledger`. Each pair is two transactions: on SQLite with both
//! durabilities of `SqliteLedger` (`synchronous = FULL` and `NORMAL`), on PostgreSQL (at
//! `IMAGE_GATEWAY_TEST_DATABASE_URL`, default the local `test` database, in a schema of its
//! own) as the server is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image_gateway::auth::UserId;
use image_gateway::ledger::{Amount, Durability, Ledger, Memo, MemoryLedger, SqliteLedger};

async fn pair(ledger: &dyn Ledger, account: &UserId) {
    let hold = ledger
        .hold(
            account,
            Amount::new(10),
            Duration::from_secs(60),
            Memo::new("bench", "m", 1),
        )
        .await
        .expect("hold");
    ledger
        .settle(hold.id, Amount::new(10), 1)
        .await
        .expect("settle");
}

fn sqlite_ledger(durability: Durability) -> Arc<dyn Ledger> {
    let path = std::env::temp_dir().join(format!("igw-bench-{}.db", uuid::Uuid::new_v4()));
    Arc::new(SqliteLedger::open_with(path, durability).expect("open"))
}

/// A `PgLedger` in a fresh schema of the test database, or `None` when it is not reachable.
#[cfg(feature = "postgres")]
async fn postgres_ledger() -> Option<Arc<dyn Ledger>> {
    let base = std::env::var("IMAGE_GATEWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("schema");
    let url = format!("{base}?options=-csearch_path%3D{schema}");
    let db = image_gateway::postgres::Postgres::connect(&url)
        .await
        .expect("connect");
    Some(Arc::new(image_gateway::ledger::PgLedger::new(db)))
}

fn concurrent(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    ledger: &Arc<dyn Ledger>,
    account: &UserId,
) {
    c.bench_function(name, |b| {
        b.to_async(runtime).iter_custom(|iters| {
            let ledger = ledger.clone();
            let account = account.clone();
            async move {
                let start = Instant::now();
                let per_task = iters.div_ceil(8);
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let (ledger, account) = (ledger.clone(), account.clone());
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                pair(&*ledger, &account).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * 8) as f64)
            }
        })
    });
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("ledger_hold_settle");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));

    let account = UserId::new("bench").expect("user");
    for (label, durability) in [
        ("fsync_every_commit", Durability::PowerLoss),
        ("process_crash_safe", Durability::ProcessCrash),
    ] {
        let ledger = sqlite_ledger(durability);
        runtime
            .block_on(ledger.deposit(&account, i64::MAX / 2, "bench"))
            .expect("deposit");
        group.bench_function(format!("sqlite_{label}_single"), |b| {
            b.to_async(&runtime).iter(|| pair(&*ledger, &account))
        });
        concurrent(
            &mut group,
            &runtime,
            &format!("sqlite_{label}_8_concurrent"),
            &ledger,
            &account,
        );
    }

    #[cfg(feature = "postgres")]
    match runtime.block_on(postgres_ledger()) {
        Some(ledger) => {
            runtime
                .block_on(ledger.deposit(&account, i64::MAX / 2, "bench"))
                .expect("deposit");
            group.bench_function("postgres_single", |b| {
                b.to_async(&runtime).iter(|| pair(&*ledger, &account))
            });
            concurrent(
                &mut group,
                &runtime,
                "postgres_8_concurrent",
                &ledger,
                &account,
            );
        }
        None => eprintln!("*** postgres ledger not measured: PostgreSQL is not reachable ***"),
    }

    let memory: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    runtime
        .block_on(memory.deposit(&account, i64::MAX / 2, "bench"))
        .expect("deposit");
    group.bench_function("memory", |b| {
        b.to_async(&runtime).iter(|| pair(&*memory, &account))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
