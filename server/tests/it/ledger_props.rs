//! A property-based state machine over every shipped ledger (memory, SQLite, PostgreSQL):
//! random deposits, holds, settles, releases, expiries and repeated calls keep every money
//! rule at every step.

use crate::common;

use std::time::Duration;

use image_gateway::auth::UserId;
use image_gateway::clock::unix_now as unix_time;
use image_gateway::ledger::{
    Amount, Balance, HoldId, Ledger, LedgerError, Memo, MemoryLedger, SqliteLedger,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Deposit {
        account: usize,
        amount: i64,
        reference: u8,
    },
    Hold {
        account: usize,
        amount: u64,
        ttl: u64,
    },
    Settle {
        hold: usize,
        percent: u64,
    },
    Release {
        hold: usize,
    },
    Expire {
        ahead: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, -60..200i64, 0..6u8).prop_map(|(account, amount, reference)| Op::Deposit {
            account,
            amount,
            reference
        }),
        (0..3usize, 0..150u64, 0..4u64).prop_map(|(account, amount, ttl)| Op::Hold {
            account,
            amount,
            ttl
        }),
        (0..12usize, 0..=130u64).prop_map(|(hold, percent)| Op::Settle { hold, percent }),
        (0..12usize).prop_map(|hold| Op::Release { hold }),
        (0..6u64).prop_map(|ahead| Op::Expire { ahead }),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Known {
    Open,
    Ended,
    /// An expiry ran since it was opened: it may or may not be open.
    Maybe,
}

struct HoldModel {
    id: HoldId,
    account: usize,
    amount: u64,
    known: Known,
}

fn users() -> [UserId; 3] {
    ["ann", "ben", "cat"].map(|u| UserId::new(u).unwrap())
}

fn conserved(b: &Balance) -> bool {
    b.deposited == b.available + b.held as i64 + b.charged as i64
}

async fn run(ledger: &dyn Ledger, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let users = users();
    let mut holds: Vec<HoldModel> = Vec::new();
    for op in ops {
        let before: Vec<Balance> = {
            let mut v = Vec::new();
            for u in &users {
                v.push(ledger.balance(u).await.unwrap());
            }
            v
        };
        match op.clone() {
            Op::Deposit {
                account,
                amount,
                reference,
            } => {
                ledger
                    .deposit(&users[account], amount, &format!("ref-{reference}"))
                    .await
                    .unwrap();
            }
            Op::Hold {
                account,
                amount,
                ttl,
            } => {
                let b = before[account];
                match ledger
                    .hold(
                        &users[account],
                        Amount::new(amount),
                        Duration::from_secs(ttl),
                        Memo::default(),
                    )
                    .await
                {
                    Ok(hold) => {
                        prop_assert!(b.available >= amount as i64, "held beyond the balance");
                        holds.push(HoldModel {
                            id: hold.id,
                            account,
                            amount,
                            known: Known::Open,
                        });
                    }
                    Err(LedgerError::OutstandingDebt) => prop_assert!(b.available < 0),
                    Err(LedgerError::InsufficientBalance { .. }) => {
                        prop_assert!(b.available >= 0 && b.available < amount as i64)
                    }
                    Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
                }
            }
            Op::Settle { hold, .. } | Op::Release { hold } if hold >= holds.len() => {}
            Op::Settle { hold, percent } => {
                let h = &mut holds[hold];
                let charge = h.amount * percent / 100;
                let result = ledger.settle(h.id, Amount::new(charge), 1).await;
                let after = ledger.balance(&users[h.account]).await.unwrap();
                let b = before[h.account];
                let unchanged = after == b;
                // A hold the sweep expired is still charged, from the available balance.
                let late = after.held == b.held
                    && after.charged == b.charged + charge
                    && after.available == b.available - charge as i64;
                let settled = after.held == b.held - h.amount.min(b.held)
                    && after.charged == b.charged + charge
                    && after.available == b.available + h.amount as i64 - charge as i64;
                if charge > h.amount && h.known == Known::Open {
                    prop_assert!(matches!(result, Err(LedgerError::ChargeExceedsHold)));
                    prop_assert!(unchanged);
                } else {
                    match h.known {
                        Known::Open if charge <= h.amount => {
                            prop_assert!(settled, "{b:?} -> {after:?}")
                        }
                        Known::Ended => prop_assert!(unchanged, "a second end changed money"),
                        // Open or expired by the sweep: either way it is charged, never left
                        // free ("unchanged" is a late settle of nothing).
                        Known::Maybe if charge <= h.amount => {
                            prop_assert!(settled || late, "{b:?} -> {after:?}")
                        }
                        _ => prop_assert!(unchanged, "{b:?} -> {after:?}"),
                    }
                    if charge <= h.amount {
                        h.known = Known::Ended;
                    }
                }
            }
            Op::Release { hold } => {
                let h = &mut holds[hold];
                ledger.release(h.id).await.unwrap();
                let after = ledger.balance(&users[h.account]).await.unwrap();
                let b = before[h.account];
                let released = after.held + h.amount == b.held
                    && after.available == b.available + h.amount as i64
                    && after.charged == b.charged;
                match h.known {
                    Known::Open => prop_assert!(released),
                    Known::Ended => prop_assert!(after == b, "a second end changed money"),
                    Known::Maybe => prop_assert!(after == b || released),
                }
                h.known = Known::Ended;
            }
            Op::Expire { ahead } => {
                ledger.expire(unix_time() + ahead).await.unwrap();
                for h in holds.iter_mut().filter(|h| h.known == Known::Open) {
                    h.known = Known::Maybe;
                }
            }
        }
        for u in &users {
            let b = ledger.balance(u).await.unwrap();
            prop_assert!(conserved(&b), "{op:?}: {b:?}");
        }
    }
    // Every hold can be ended, and then nothing is held anywhere.
    for h in &holds {
        ledger.release(h.id).await.unwrap();
    }
    for u in &users {
        let b = ledger.balance(u).await.unwrap();
        prop_assert_eq!(b.held, 0);
        prop_assert!(conserved(&b));
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn memory_ledger_keeps_the_money_rules(ops in prop::collection::vec(op(), 1..40)) {
        runtime().block_on(run(&MemoryLedger::new(), ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sqlite_ledger_keeps_the_money_rules(ops in prop::collection::vec(op(), 1..30)) {
        let path = std::env::temp_dir().join(format!("igw-ledger-{}.db", uuid::Uuid::new_v4()));
        let ledger = SqliteLedger::open(&path).unwrap();
        let result = runtime().block_on(run(&ledger, ops));
        drop(ledger);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        result?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn postgres_ledger_keeps_the_money_rules(ops in prop::collection::vec(op(), 1..30)) {
        use image_gateway::ledger::PgLedger;
        use image_gateway::postgres::Postgres;
        let runtime = runtime();
        let url = runtime.block_on(common::services::fresh_postgres("postgres ledger properties"));
        if let Some(url) = url {
            let ledger = PgLedger::new(runtime.block_on(Postgres::connect(&url)).unwrap());
            runtime.block_on(run(&ledger, ops))?;
        }
    }
}

/// A settle of a hold the sweep already expired charges, from the available balance (into
/// debt if need be), and answers `AfterExpiry`; a second settle changes nothing.
async fn settle_after_expiry_charges(ledger: &dyn Ledger) {
    use image_gateway::ledger::Settlement;
    let ann = UserId::new("ann").unwrap();
    ledger.deposit(&ann, 50, "late-settle").await.unwrap();
    let hold = ledger
        .hold(&ann, Amount::new(40), Duration::ZERO, Memo::default())
        .await
        .unwrap();
    assert_eq!(ledger.expire(unix_time() + 5).await.unwrap(), 1);
    let freed = ledger.balance(&ann).await.unwrap();
    assert_eq!((freed.available, freed.held, freed.charged), (50, 0, 0));
    // Meanwhile the account spent most of what the expiry freed.
    let other = ledger
        .hold(
            &ann,
            Amount::new(30),
            Duration::from_secs(60),
            Memo::default(),
        )
        .await
        .unwrap();
    let late = ledger.settle(hold.id, Amount::new(40), 1).await.unwrap();
    assert_eq!(late, Settlement::AfterExpiry);
    let b = ledger.balance(&ann).await.unwrap();
    assert_eq!((b.available, b.held, b.charged), (-20, 30, 40));
    assert!(conserved(&b));
    let again = ledger.settle(hold.id, Amount::new(40), 1).await.unwrap();
    assert_eq!(again, Settlement::AlreadyEnded);
    assert_eq!(ledger.balance(&ann).await.unwrap(), b);
    ledger.release(other.id).await.unwrap();
}

#[test]
fn a_settle_after_expiry_charges_on_every_ledger() {
    let path = std::env::temp_dir().join(format!("igw-late-{}.db", uuid::Uuid::new_v4()));
    runtime().block_on(async {
        settle_after_expiry_charges(&MemoryLedger::new()).await;
        settle_after_expiry_charges(&SqliteLedger::open(&path).unwrap()).await;
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
fn a_settle_after_expiry_charges_on_postgres() {
    use image_gateway::ledger::PgLedger;
    use image_gateway::postgres::Postgres;
    let runtime = runtime();
    let url = runtime.block_on(common::services::fresh_postgres("late settle"));
    if let Some(url) = url {
        runtime.block_on(async {
            let ledger = PgLedger::new(Postgres::connect(&url).await.unwrap());
            settle_after_expiry_charges(&ledger).await;
        });
    }
}

#[test]
fn journal_is_append_only_and_persists() {
    let path = std::env::temp_dir().join(format!("igw-journal-{}.db", uuid::Uuid::new_v4()));
    let ann = UserId::new("ann").unwrap();
    runtime().block_on(async {
        let ledger = SqliteLedger::open(&path).unwrap();
        assert!(ledger.deposit(&ann, 50, "a").await.unwrap());
        assert!(
            !ledger.deposit(&ann, 50, "a").await.unwrap(),
            "same reference twice"
        );
        let hold = ledger
            .hold(
                &ann,
                Amount::new(30),
                Duration::from_secs(60),
                Memo::new("r1", "m", 3),
            )
            .await
            .unwrap();
        ledger.settle(hold.id, Amount::new(10), 1).await.unwrap();
        ledger.settle(hold.id, Amount::new(30), 3).await.unwrap();
    });
    runtime().block_on(async {
        let ledger = SqliteLedger::open(&path).unwrap();
        let b = ledger.balance(&ann).await.unwrap();
        assert_eq!(
            (b.available, b.held, b.charged, b.deposited),
            (40, 0, 10, 50)
        );
        let kinds: Vec<String> = ledger
            .journal(&ann, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| format!("{:?}", e.kind))
            .collect();
        assert_eq!(kinds, ["Deposit", "Hold", "Settle"]);
        let entries = ledger.journal(&ann, None, 10).await.unwrap();
        // Paging after an entry's seq starts right behind it.
        let after_hold = ledger
            .journal(&ann, Some(entries[1].seq), 10)
            .await
            .unwrap();
        assert_eq!(after_hold, entries[2..].to_vec());
        let settle = &entries[2];
        assert_eq!((settle.amount, settle.units_returned), (10, Some(1)));
        assert_eq!(settle.memo.as_ref().unwrap().request_id, "r1");
    });
}

/// Many operations at once, so the SQLite writer commits them in shared batches: refusals,
/// unknown holds and deposits mixed in with holds and settles. A failed operation is rolled
/// back alone; every other one commits, and the money adds up exactly.
#[test]
fn concurrent_operations_share_commits_and_a_failure_rolls_back_alone() {
    let path = std::env::temp_dir().join(format!("igw-batch-{}.db", uuid::Uuid::new_v4()));
    let ann = UserId::new("ann").unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on(async {
        let ledger = std::sync::Arc::new(SqliteLedger::open(&path).unwrap());
        ledger.deposit(&ann, 100, "opening").await.unwrap();
        let tasks = (0..40).map(|i| {
            let (ledger, ann) = (ledger.clone(), ann.clone());
            tokio::spawn(async move {
                if i % 10 == 9 {
                    // A deposit (fsynced on its own) and a settle of a hold that never was.
                    ledger
                        .deposit(&ann, 5, &format!("top-up-{i}"))
                        .await
                        .unwrap();
                    let unknown = ledger.settle(HoldId::new(), Amount::new(1), 1).await;
                    assert!(
                        matches!(unknown, Err(LedgerError::UnknownHold)),
                        "{unknown:?}"
                    );
                    return 0;
                }
                let memo = Memo::new(format!("r{i}"), "m", 2);
                let hold = match ledger
                    .hold(&ann, Amount::new(10), Duration::from_secs(60), memo)
                    .await
                {
                    Ok(hold) => hold,
                    Err(LedgerError::InsufficientBalance { .. }) => return 0,
                    Err(other) => panic!("{other:?}"),
                };
                if i % 2 == 0 {
                    let over = ledger.settle(hold.id, Amount::new(11), 2).await;
                    assert!(matches!(over, Err(LedgerError::ChargeExceedsHold)));
                    ledger.settle(hold.id, Amount::new(5), 1).await.unwrap();
                    5
                } else {
                    ledger.release(hold.id).await.unwrap();
                    0
                }
            })
        });
        let mut charged = 0;
        for task in futures_util::future::join_all(tasks).await {
            charged += task.unwrap();
        }
        let b = ledger.balance(&ann).await.unwrap();
        assert_eq!(b.held, 0);
        assert_eq!(b.deposited, 100 + 4 * 5);
        assert_eq!(b.charged, charged as u64);
        assert_eq!(b.available, b.deposited - b.charged as i64);
        let journal = ledger.journal(&ann, None, 1000).await.unwrap();
        let holds = journal
            .iter()
            .filter(|e| format!("{:?}", e.kind) == "Hold")
            .count();
        let ends = journal
            .iter()
            .filter(|e| matches!(format!("{:?}", e.kind).as_str(), "Settle" | "Release"))
            .count();
        assert_eq!(holds, ends, "every hold that was taken ended once");
        assert!(holds >= 10, "the opening balance alone pays for ten holds");
    });
}
