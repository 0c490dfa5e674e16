//! The PostgreSQL parts as two replicas use them: two pools (two processes' worth of
//! connections) on one database. Money, generation, idempotency and key rules hold across
//! them, and the schema migrates once however many replicas start at once.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::services::{fresh_postgres, query};
use futures_util::future::join_all;
use image_gateway::auth::{ApiKey, KeyStore, PgKeys, UserId};
use image_gateway::generations::{Generation, GenerationStatus, Generations, PgGenerations};
use image_gateway::id::GenerationId;
use image_gateway::idempotency::{Begin, IdempotencyRecords, PgIdempotency};
use image_gateway::ledger::{Amount, EntryKind, Ledger, LedgerError, Memo, PgLedger, Settlement};
use image_gateway::postgres::Postgres;
use image_gateway::store::FileKey;

/// Two replicas' databases: one schema, two pools.
async fn replicas(label: &str) -> Option<(String, Postgres, Postgres)> {
    let url = fresh_postgres(label).await?;
    let (a, b) = tokio::join!(Postgres::connect(&url), Postgres::connect(&url));
    Some((url, a.unwrap(), b.unwrap()))
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_restart_on_a_migrated_schema() {
    let Some(url) = fresh_postgres("migrations").await else {
        return;
    };
    let starts = (0..4).map(|_| Postgres::connect(&url));
    for started in join_all(starts).await {
        started.expect("every replica starts");
    }
    Postgres::connect(&url).await.expect("a restart");
    let rows = query(&url, "SELECT version FROM schema_migrations").await;
    assert_eq!(rows.len(), 9, "each migration applied once");
    let tables = query(
        &url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .await;
    assert_eq!(
        tables[0].get::<_, i64>(0),
        13,
        "twelve tables and the migrations table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_holds_over_two_replicas_take_exactly_the_balance() {
    let Some((_, a, b)) = replicas("overdraw").await else {
        return;
    };
    let ledgers = [PgLedger::new(a), PgLedger::new(b)];
    ledgers[0].deposit(&alice(), 100, "opening").await.unwrap();
    let price = Amount::new(10);
    let holds = (0..50).map(|i| {
        let ledger = ledgers[i % 2].clone();
        tokio::spawn(async move {
            let memo = Memo::new(format!("r{i}"), "gpt-image-2", 1);
            ledger
                .hold(&alice(), price, Duration::from_secs(60), memo)
                .await
        })
    });
    let mut taken = Vec::new();
    for hold in join_all(holds).await {
        match hold.unwrap() {
            Ok(hold) => taken.push(hold),
            Err(LedgerError::InsufficientBalance { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(taken.len(), 10, "the balance pays for ten, no more");
    for (i, hold) in taken.iter().enumerate() {
        let settled = ledgers[i % 2].settle(hold.id, price, 1).await.unwrap();
        assert_eq!(settled, Settlement::Settled);
        // A retried settle on the other replica changes nothing.
        let again = ledgers[(i + 1) % 2]
            .settle(hold.id, price, 1)
            .await
            .unwrap();
        assert_eq!(again, Settlement::AlreadyEnded);
    }
    let balance = ledgers[1].balance(&alice()).await.unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.charged),
        (0, 0, 100)
    );
    assert_eq!(balance.deposited, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_racing_the_other_replicas_expiry_charges_once() {
    let Some((_, a, b)) = replicas("settle-vs-expire").await else {
        return;
    };
    let (settler, sweeper) = (PgLedger::new(a), PgLedger::new(b));
    settler.deposit(&alice(), 1_000, "opening").await.unwrap();
    let price = Amount::new(10);
    let mut outcomes = Vec::new();
    for i in 0..40 {
        let memo = Memo::new(format!("r{i}"), "gpt-image-2", 1);
        let hold = settler
            .hold(&alice(), price, Duration::from_secs(1), memo)
            .await
            .unwrap();
        // The sweep sees the hold as long overdue while the settle comes in.
        let far = image_gateway::clock::unix_now() + 3_600;
        let (settled, _) = tokio::join!(settler.settle(hold.id, price, 1), sweeper.expire(far));
        outcomes.push(settled.unwrap());
    }
    assert!(outcomes
        .iter()
        .all(|s| matches!(s, Settlement::Settled | Settlement::AfterExpiry)));
    let balance = settler.balance(&alice()).await.unwrap();
    assert_eq!(
        balance.charged,
        40 * 10,
        "every hold charged once: {outcomes:?}"
    );
    assert_eq!(balance.held, 0);
    assert_eq!(
        balance.deposited,
        balance.available + balance.held as i64 + balance.charged as i64
    );
    let journal = sweeper.journal(&alice(), None, 1_000).await.unwrap();
    let charges = journal
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Settle | EntryKind::LateSettle))
        .count();
    assert_eq!(charges, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_hold_is_released_by_the_other_replicas_sweep() {
    let Some((_, a, b)) = replicas("sweep").await else {
        return;
    };
    let (dead, alive) = (PgLedger::new(a), PgLedger::new(b));
    dead.deposit(&alice(), 50, "opening").await.unwrap();
    let memo = Memo::new("r1", "gpt-image-2", 1);
    dead.hold(&alice(), Amount::new(30), Duration::from_secs(1), memo)
        .await
        .unwrap();
    drop(dead);
    let now = image_gateway::clock::unix_now();
    assert_eq!(alive.expire(now).await.unwrap(), 0, "not yet due");
    assert_eq!(alive.expire(now + 2).await.unwrap(), 1);
    let balance = alive.balance(&alice()).await.unwrap();
    assert_eq!((balance.available, balance.held), (50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_integers_once_per_reference_and_never_overflow() {
    let Some((_, a, b)) = replicas("deposits").await else {
        return;
    };
    let (a, b) = (PgLedger::new(a), PgLedger::new(b));
    let user = alice();
    let (first, second) = tokio::join!(
        a.deposit(&user, 70, "invoice-1"),
        b.deposit(&user, 70, "invoice-1")
    );
    assert!(first.unwrap() ^ second.unwrap(), "one of the two credits");
    assert!(a.deposit(&alice(), i64::MAX - 70, "big").await.unwrap());
    assert!(matches!(
        b.deposit(&alice(), 1, "one-more").await,
        Err(LedgerError::Overflow)
    ));
    let balance = b.balance(&alice()).await.unwrap();
    assert_eq!(
        balance.available,
        i64::MAX,
        "the failed deposit left nothing behind"
    );
    assert!(b.deposit(&alice(), 1, "one-more").await.is_err());
}

/// A connection holding `account`'s row locked until [`unlock`]; a hold on it waits.
struct RowLock {
    client: tokio_postgres::Client,
    /// The server process of `client`.
    pid: i32,
}

async fn lock_account(url: &str, account: &str) -> RowLock {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM accounts WHERE account = '{account}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let pid = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    RowLock { client, pid }
}

async fn unlock(lock: RowLock) {
    lock.client.batch_execute("COMMIT").await.unwrap();
}

/// Waits until a statement waits for `lock`; the server process running it.
async fn until_one_waits_for(url: &str, lock: &RowLock) -> i32 {
    let waiting = format!(
        "SELECT pid FROM pg_stat_activity WHERE {} = ANY(pg_blocking_pids(pid))",
        lock.pid
    );
    for _ in 0..200 {
        if let Some(row) = query(url, &waiting).await.first() {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no hold waited for the account's row");
}

/// Takes a hold of 10 for `alice` on its own task, with the request id `request`.
fn spawn_hold(
    ledger: &PgLedger,
    request: &str,
) -> tokio::task::JoinHandle<Result<image_gateway::ledger::Hold, LedgerError>> {
    let (ledger, memo) = (ledger.clone(), Memo::new(request, "gpt-image-2", 1));
    tokio::spawn(async move {
        ledger
            .hold(&alice(), Amount::new(10), Duration::from_secs(60), memo)
            .await
    })
}

/// The distinct transactions that wrote the open holds, and how many holds there are.
async fn hold_commits(url: &str) -> (i64, i64) {
    let rows = query(
        url,
        "SELECT count(DISTINCT xmin::text), count(*) FROM holds",
    )
    .await;
    (rows[0].get(0), rows[0].get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_records_that_wait_together_commit_together() {
    let Some((url, a, _)) = replicas("group commit").await else {
        return;
    };
    let (ledger, records) = (PgLedger::new(a.clone()), PgGenerations::new(a));
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    // The first hold waits on the row while seven more and three generation records queue
    // behind it.
    let lock = lock_account(&url, "alice").await;
    let first = spawn_hold(&ledger, "r0");
    until_one_waits_for(&url, &lock).await;
    let rest: Vec<_> = (1..8)
        .map(|i| spawn_hold(&ledger, &format!("r{i}")))
        .collect();
    let inserts: Vec<_> = (0..3)
        .map(|_| {
            let records = records.clone();
            tokio::spawn(async move {
                let id = GenerationId::new();
                let key = FileKey::new(&alice(), id.as_uuid(), "generation.png");
                let generation = Generation::new(id, key, GenerationStatus::Pending, 1);
                records.insert(&generation).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    unlock(lock).await;
    let mut holds = vec![first.await.unwrap().unwrap()];
    for hold in join_all(rest).await {
        holds.push(hold.unwrap().unwrap());
    }
    for inserted in join_all(inserts).await {
        inserted.unwrap().unwrap();
    }
    assert_eq!(
        hold_commits(&url).await,
        (2, 8),
        "the first hold alone, the seven that queued behind it in one commit"
    );
    let shared = query(
        &url,
        "SELECT count(*) FROM generations WHERE xmin::text IN
             (SELECT xmin::text FROM holds WHERE request_id <> 'r0')",
    )
    .await;
    assert_eq!(
        shared[0].get::<_, i64>(0),
        3,
        "the records in the holds' commit"
    );
    let settles = holds
        .iter()
        .map(|h| ledger.settle(h.id, Amount::new(10), 1));
    for settled in join_all(settles).await {
        assert_eq!(settled.unwrap(), Settlement::Settled);
    }
    let balance = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.charged),
        (920, 0, 80)
    );
    let journal = ledger.journal(&alice(), None, 100).await.unwrap();
    let count = |kind| journal.iter().filter(|e| e.kind == kind).count();
    assert_eq!((count(EntryKind::Hold), count(EntryKind::Settle)), (8, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_fails_in_a_batch_fails_alone() {
    let Some((url, a, _)) = replicas("group commit failure").await else {
        return;
    };
    let ledger = PgLedger::new(a);
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    let lock = lock_account(&url, "alice").await;
    let first = spawn_hold(&ledger, "r0");
    until_one_waits_for(&url, &lock).await;
    // PostgreSQL refuses a NUL byte in text, so this hold's statement fails in the batch.
    let rest: Vec<_> = (1..8)
        .map(|i| spawn_hold(&ledger, &format!("r{i}{}", if i == 4 { "\0" } else { "" })))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    unlock(lock).await;
    first.await.unwrap().unwrap();
    let outcomes: Vec<_> = join_all(rest)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, outcome) in (1..8).zip(&outcomes) {
        match outcome {
            Err(LedgerError::Storage(_)) if i == 4 => {}
            Ok(_) if i != 4 => {}
            other => panic!("hold r{i}: {other:?}"),
        }
    }
    assert_eq!(
        hold_commits(&url).await,
        (7, 7),
        "the batch rolled back, and its six good holds committed each on its own"
    );
    let balance = ledger.balance(&alice()).await.unwrap();
    assert_eq!((balance.available, balance.held), (930, 70));
    let journal = ledger.journal(&alice(), None, 100).await.unwrap();
    assert_eq!(
        journal.iter().filter(|e| e.kind == EntryKind::Hold).count(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_connection_dies_is_answered_and_the_next_batch_reconnects() {
    let Some((url, a, _)) = replicas("committer reconnects").await else {
        return;
    };
    let ledger = PgLedger::new(a);
    ledger.deposit(&alice(), 1_000, "opening").await.unwrap();
    let lock = lock_account(&url, "alice").await;
    let first = spawn_hold(&ledger, "r0");
    let waiting = until_one_waits_for(&url, &lock).await;
    let rest: Vec<_> = (1..8)
        .map(|i| spawn_hold(&ledger, &format!("r{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The server ends the committer's connection while its statement waits.
    let ended = query(&url, &format!("SELECT pg_terminate_backend({waiting})")).await;
    assert!(ended[0].get::<_, bool>(0));
    let lost = first.await.unwrap();
    assert!(matches!(lost, Err(LedgerError::Storage(_))), "{lost:?}");
    unlock(lock).await;
    for hold in join_all(rest).await {
        hold.unwrap().unwrap();
    }
    let balance = ledger.balance(&alice()).await.unwrap();
    assert_eq!(
        (balance.available, balance.held),
        (930, 70),
        "the lost hold took nothing; the seven behind it took theirs"
    );
    assert_eq!(
        hold_commits(&url).await,
        (1, 7),
        "one commit on a new connection"
    );
}

/// Two replicas batch holds and ends over two accounts at once, each ending on one replica
/// what the other held: their batches take the accounts' rows in whatever order their ends
/// find them, so PostgreSQL may abort one as a deadlock, whose statements then run alone.
/// Every operation still succeeds once and the money adds up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_batching_over_two_accounts_keep_the_money_exact() {
    let Some((_, a, b)) = replicas("crossed batches").await else {
        return;
    };
    let ledgers = [PgLedger::new(a), PgLedger::new(b)];
    let users = [alice(), UserId::new("bob").unwrap()];
    for user in &users {
        ledgers[0].deposit(user, 100_000, "opening").await.unwrap();
    }
    let workers = (0..16).map(|w| {
        let (ledgers, users) = (ledgers.clone(), users.clone());
        tokio::spawn(async move {
            let mut charged = [0u64; 2];
            for i in 0..12 {
                let account = (w + i) % 2;
                let memo = Memo::new(format!("w{w}-{i}"), "gpt-image-2", 1);
                let hold = ledgers[w % 2]
                    .hold(
                        &users[account],
                        Amount::new(10),
                        Duration::from_secs(60),
                        memo,
                    )
                    .await
                    .unwrap();
                let other = &ledgers[(w + 1) % 2];
                if i % 3 == 2 {
                    other.release(hold.id).await.unwrap();
                } else {
                    let settled = other.settle(hold.id, Amount::new(7), 1).await.unwrap();
                    assert_eq!(settled, Settlement::Settled);
                    charged[account] += 7;
                }
            }
            charged
        })
    });
    let mut charged = [0u64; 2];
    for worker in join_all(workers).await {
        let worker = worker.unwrap();
        charged[0] += worker[0];
        charged[1] += worker[1];
    }
    for (user, charged) in users.iter().zip(charged) {
        let balance = ledgers[1].balance(user).await.unwrap();
        assert_eq!(balance.held, 0, "{user}");
        assert_eq!(balance.charged, charged, "{user}");
        assert_eq!(balance.available, 100_000 - charged as i64, "{user}");
        let journal = ledgers[0].journal(user, None, 1_000).await.unwrap();
        let count = |kind| journal.iter().filter(|e| e.kind == kind).count();
        assert_eq!(count(EntryKind::Hold), 96, "{user}");
        assert_eq!(count(EntryKind::Settle) + count(EntryKind::Release), 96);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_keys_made_on_one_replica_are_seen_by_the_other() {
    let Some((url, a, b)) = replicas("records").await else {
        return;
    };
    // A generation recorded on A is chained on B, pending until A stores it.
    let (made, seen) = (PgGenerations::new(a.clone()), PgGenerations::new(b.clone()));
    let id = GenerationId::new();
    let key = FileKey::new(&alice(), id.as_uuid(), "generation.png");
    made.insert(&Generation::new(
        id,
        key.clone(),
        GenerationStatus::Pending,
        1,
    ))
    .await
    .unwrap();
    let pending = seen.get(id).await.unwrap().unwrap();
    assert_eq!(
        (pending.status, pending.owner),
        (GenerationStatus::Pending, alice())
    );
    made.set_status(id, GenerationStatus::Ready).await.unwrap();
    assert_eq!(
        seen.get(id).await.unwrap().unwrap().status,
        GenerationStatus::Ready
    );
    assert!(seen.get(GenerationId::new()).await.unwrap().is_none());

    // One Idempotency-Key sent to both replicas at once: exactly one runs.
    let records: [Arc<dyn IdempotencyRecords>; 2] = [
        Arc::new(PgIdempotency::new(a.clone())),
        Arc::new(PgIdempotency::new(b.clone())),
    ];
    let now = image_gateway::clock::unix_now();
    let user = alice();
    let begins = (0..8).map(|i| records[i % 2].begin(&user, "key-1", "fp", now));
    let begun = join_all(begins).await;
    let new = begun.iter().filter(|b| matches!(b, Ok(Begin::New))).count();
    let running = begun
        .iter()
        .filter(|b| matches!(b, Ok(Begin::InProgress)))
        .count();
    assert_eq!((new, running), (1, 7), "{begun:?}");
    records[0]
        .complete(&alice(), "key-1", 42, &[id])
        .await
        .unwrap();
    let done = records[1]
        .begin(&alice(), "key-1", "fp", now)
        .await
        .unwrap();
    assert_eq!(
        done,
        Begin::Done {
            created: 42,
            generations: vec![id]
        }
    );
    let other = records[1]
        .begin(&alice(), "key-1", "other", now)
        .await
        .unwrap();
    assert_eq!(other, Begin::Mismatch);

    // A key added on A opens B's door; nothing else does.
    let (keys_a, keys_b) = (PgKeys::new(a), PgKeys::new(b));
    assert!(keys_a
        .add(&alice(), "pk_live_shared_0123", "ci")
        .await
        .unwrap());
    assert!(!keys_b
        .add(&alice(), "pk_live_shared_0123", "ci")
        .await
        .unwrap());
    let headers = |key: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
        ApiKey::from_headers(&headers).unwrap()
    };
    let found = keys_b
        .principal(&headers("pk_live_shared_0123"))
        .await
        .unwrap();
    assert_eq!(found.unwrap().user_id(), &alice());
    assert!(keys_b
        .principal(&headers("pk_live_other"))
        .await
        .unwrap()
        .is_none());
    assert!(keys_b.knows_user(&alice()).await.unwrap());
    assert!(!keys_b
        .knows_user(&UserId::new("bob").unwrap())
        .await
        .unwrap());
    let rows = query(
        &url,
        "SELECT encode(digest, 'escape') || user_id || name FROM api_keys",
    )
    .await;
    let stored: String = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert!(
        !stored.contains("pk_live_shared"),
        "only digests are stored: {stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_one_bucket_are_shared_listed_newest_first_and_counted_by_quota() {
    use bytes::Bytes;
    use image_gateway::store::{
        FileCursor, FileStore, Quota, QuotaStore, S3Config, S3FileStore, Usage,
    };
    let Some((_, a, b)) = replicas("s3 files").await else {
        return;
    };
    let Some((endpoint, bucket)) = common::services::fresh_bucket("s3 files").await else {
        return;
    };
    let mut config = S3Config::new(bucket, "us-east-1");
    config.endpoint = Some(endpoint);
    config.access_key_id = Some("test".into());
    config.secret_access_key = Some("test".into());
    // Times are whole seconds: the stores' clock, moved by the test, dates later files a
    // second newer.
    let time = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let clock = image_gateway::clock::Clock::manual(time.clone());
    let (store_a, store_b) = (
        S3FileStore::s3(&config, a)
            .unwrap()
            .with_clock(clock.clone()),
        S3FileStore::s3(&config, b).unwrap().with_clock(clock),
    );
    let key = |name: &str| FileKey::new(&alice(), uuid::Uuid::new_v4(), name);
    let first = key("first.png");
    store_a
        .put(&first, Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(
        store_b.get(&first).await.unwrap(),
        Some(Bytes::from_static(b"one")),
        "stored on A, read on B"
    );
    assert!(store_b.get(&key("missing.png")).await.unwrap().is_none());
    time.store(1_001, std::sync::atomic::Ordering::Release);
    let mut newer = Vec::new();
    for i in 0..3 {
        let k = key(&format!("{i}.png"));
        store_b.put(&k, Bytes::from(vec![7; 10])).await.unwrap();
        newer.push(k);
    }
    let page = store_a.list(&alice(), None, 2).await.unwrap();
    assert_eq!(page.files.len(), 2);
    let rest = store_a
        .list(&alice(), page.next().as_ref(), 2)
        .await
        .unwrap();
    assert!(rest.next().is_none());
    let listed: Vec<FileKey> = page
        .files
        .iter()
        .chain(&rest.files)
        .map(|f| f.key.clone())
        .collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[3], first, "the oldest file last");
    let cursors: Vec<FileCursor> = page
        .files
        .iter()
        .chain(&rest.files)
        .map(FileCursor::of)
        .collect();
    let mut sorted = cursors.clone();
    sorted.sort();
    assert_eq!(cursors, sorted, "newest first, then by key");
    assert_eq!(store_b.usage(&alice()).await.unwrap(), Usage::new(33, 4));
    assert!(store_a
        .list(&UserId::new("bob").unwrap(), None, 10)
        .await
        .unwrap()
        .files
        .is_empty());

    // A quota over the shared index holds whichever replica writes, to the byte: 33 stored,
    // 7 more reach the 40 allowed, one more is refused.
    let quota = QuotaStore::new(Arc::new(store_b.clone()), Quota::new(40, 0));
    let last = key("last.png");
    quota.put(&last, Bytes::from(vec![0; 7])).await.unwrap();
    let refused = quota.put(&key("big.png"), Bytes::from(vec![0; 1])).await;
    assert!(refused.is_err(), "40 + 1 bytes is over 40");
    assert!(store_a.delete(&last).await.unwrap());

    assert!(store_b.delete(&first).await.unwrap());
    assert!(!store_a.delete(&first).await.unwrap());
    assert!(store_a.get(&first).await.unwrap().is_none());
    assert_eq!(store_a.usage(&alice()).await.unwrap(), Usage::new(30, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_holds_charge_and_the_pending_generations_are_read_back_from_either_replica() {
    use image_gateway::ledger::Charge;
    let Some((_, a, b)) = replicas("charged").await else {
        return;
    };
    let (settler, reader) = (PgLedger::new(a.clone()), PgLedger::new(b.clone()));
    settler.deposit(&alice(), 100, "opening").await.unwrap();
    let ttl = Duration::from_secs(600);
    let hold = |memo: &'static str| {
        let settler = &settler;
        async move {
            let memo = Memo::new(memo, "gpt-image-2", 3);
            settler
                .hold(&alice(), Amount::new(30), ttl, memo)
                .await
                .unwrap()
                .id
        }
    };
    let settled = hold("settled").await;
    settler
        .settle_from(settled, Amount::new(20), 2, Some("gpt-image-2#1"))
        .await
        .unwrap();
    let released = hold("released").await;
    settler.release(released).await.unwrap();
    let open = hold("open").await;
    assert_eq!(
        reader.charged(settled).await.unwrap(),
        Some(Charge::new(Amount::new(20), 2))
    );
    assert_eq!(reader.charged(released).await.unwrap(), None);
    assert_eq!(reader.charged(open).await.unwrap(), None);
    // A hold that expired and was then settled late: its late charge.
    settler.expire(u64::MAX).await.unwrap();
    settler
        .settle_from(open, Amount::new(10), 1, Some("gpt-image-2#0"))
        .await
        .unwrap();
    assert_eq!(
        reader.charged(open).await.unwrap(),
        Some(Charge::new(Amount::new(10), 1))
    );
    // Each settle names the deployment that rendered, in time (the batched statement) or
    // late (the transaction); a release names none.
    let journal = reader.journal(&alice(), None, 100).await.unwrap();
    let upstreams: Vec<(EntryKind, Option<&str>)> = journal
        .iter()
        .filter(|e| e.kind != EntryKind::Deposit && e.kind != EntryKind::Hold)
        .map(|e| (e.kind, e.upstream.as_deref()))
        .collect();
    assert_eq!(
        upstreams,
        vec![
            (EntryKind::Settle, Some("gpt-image-2#1")),
            (EntryKind::Release, None),
            (EntryKind::Expire, None),
            (EntryKind::LateSettle, Some("gpt-image-2#0")),
        ]
    );

    let (writer, records) = (PgGenerations::new(a), PgGenerations::new(b));
    let id = GenerationId::new();
    let key = FileKey::new(&alice(), id.as_uuid(), "generation.png");
    let record =
        Generation::new(id, key, GenerationStatus::Pending, 1_000).charged_under(Some(settled));
    writer.insert(&record).await.unwrap();
    assert_eq!(records.pending(999, 10).await.unwrap(), vec![]);
    assert_eq!(
        records.pending(1_000, 10).await.unwrap(),
        vec![record.clone()]
    );
    assert_eq!(records.get(id).await.unwrap(), Some(record.clone()));
    assert_eq!(records.under_hold(settled).await.unwrap(), vec![record]);
    assert_eq!(records.under_hold(released).await.unwrap(), vec![]);
    writer
        .set_status(id, GenerationStatus::Ready)
        .await
        .unwrap();
    assert_eq!(records.pending(u64::MAX, 10).await.unwrap(), vec![]);
}
