//! Money: the [`Ledger`] contract and two shipped ledgers.
//!
//! # The contract
//! - [`Ledger::hold`] reserves the whole amount or nothing: it fails with
//!   [`LedgerError::OutstandingDebt`] when the account's available balance is negative, and
//!   with [`LedgerError::InsufficientBalance`] when it is below the amount. The check and the
//!   reservation are one atomic step, so two concurrent holds can never overdraw.
//! - [`Ledger::settle`] charges at most what was held and frees the rest;
//!   [`Ledger::release`] frees all. Both are idempotent: on a hold that already ended they
//!   change nothing and succeed ([`Settlement::AlreadyEnded`]). A hold id the ledger never
//!   issued is [`LedgerError::UnknownHold`].
//! - A hold not ended by its deadline is released by [`Ledger::expire`], which the gateway
//!   runs at start and periodically, so money held by a process that died comes back. A
//!   live request pushes its deadline out with [`Ledger::renew`], so a hold never expires
//!   under a request that is still working.
//! - Settling a hold that expired still charges: the charge is taken from the available
//!   balance, which may go negative (the account is then refused with `OUTSTANDING_DEBT`
//!   until it is paid), and the answer is [`Settlement::AfterExpiry`], which the caller
//!   logs. Images a backend returned are never free because a deadline passed.
//! - Conservation: for every account, `deposits = available + held + charged` at every moment.
//! - Amounts are integers in the smallest currency unit; nothing here is a float.
//! - Every movement is appended to a journal; nothing in it is ever rewritten.
//!
//! The trait assumes no single owner of the data: every operation is one transaction keyed
//! by account or hold id, so a PostgreSQL ledger can serve many gateway replicas at once.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use memory::MemoryLedger;

/// The contract's rule for a hold of `amount` against an `available` balance: refused with
/// `OutstandingDebt` when the balance is negative, `InsufficientBalance` when it is short.
pub(crate) fn hold_refusal(available: i64, amount: Amount) -> Result<(), LedgerError> {
    if available < 0 {
        return Err(LedgerError::OutstandingDebt);
    }
    if available < amount.signed() {
        return Err(LedgerError::InsufficientBalance {
            needed: amount,
            available,
        });
    }
    Ok(())
}

/// Unix seconds `ttl` after `now`, rounded up to the next second.
pub(crate) fn deadline(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(ttl.as_secs())
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
}
#[cfg(feature = "postgres")]
pub use postgres::PgLedger;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteLedger};

use crate::auth::UserId;
use crate::BoxError;

/// A non-negative amount of money in the smallest currency unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// `units` of the smallest currency unit. Amounts above `i64::MAX` are clamped there so
    /// every amount also fits a signed balance column.
    pub fn new(units: u64) -> Self {
        Amount(units.min(i64::MAX as u64))
    }

    /// The amount in units.
    pub fn get(self) -> u64 {
        self.0
    }

    /// `self x count`, or `None` on overflow.
    pub fn times(self, count: u32) -> Option<Amount> {
        self.0
            .checked_mul(u64::from(count))
            .filter(|v| *v <= i64::MAX as u64)
            .map(Amount)
    }

    pub(crate) fn signed(self) -> i64 {
        self.0 as i64
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of one hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(Uuid);

impl HoldId {
    /// A fresh id, time-ordered (a UUIDv7: 48 bits of time in ms, 74 random): the ledgers'
    /// hold tables take them in order, appended to their indexes instead of each landing on
    /// a random page, so a batch of holds writes a few pages, not one each.
    pub fn new() -> Self {
        HoldId(Uuid::now_v7())
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_uuid(id: Uuid) -> Self {
        HoldId(id)
    }

    /// The id [`Display`](fmt::Display) wrote.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(HoldId)
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl Default for HoldId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// What a hold is for, kept with it and in the journal (the usage report reads it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Memo {
    /// The request that took the hold.
    pub request_id: String,
    /// The model asked for.
    pub model: String,
    /// How many images were asked for.
    pub units_requested: u32,
    /// The id of the managed key the request came with, if any (the usage log's `key`).
    pub key: Option<String>,
}

impl Memo {
    /// The memo of a journal row from its nullable columns: all three or none (a deposit);
    /// anything else is a corrupt row.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_columns(
        request_id: Option<String>,
        model: Option<String>,
        units: Option<i64>,
    ) -> Result<Option<Memo>, LedgerError> {
        let corrupt = || LedgerError::Storage("corrupt journal row".into());
        match (request_id, model, units) {
            (Some(request_id), Some(model), Some(units)) => Ok(Some(Memo::new(
                request_id,
                model,
                u32::try_from(units).map_err(|_| corrupt())?,
            ))),
            (None, None, None) => Ok(None),
            _ => Err(corrupt()),
        }
    }

    /// A memo for one request.
    pub fn new(request_id: impl Into<String>, model: impl Into<String>, units: u32) -> Self {
        Memo {
            request_id: request_id.into(),
            model: model.into(),
            units_requested: units,
            key: None,
        }
    }

    /// The same memo naming the key the request came with.
    pub fn with_key(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }
}

/// A reservation of money, returned by [`Ledger::hold`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hold {
    /// Its id, for settle and release.
    pub id: HoldId,
    /// The account it draws on.
    pub account: UserId,
    /// How much is reserved.
    pub amount: Amount,
}

/// An account's money right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Balance {
    /// Spendable; negative when the account is in debt.
    pub available: i64,
    /// Reserved by open holds.
    pub held: u64,
    /// Charged so far, in total.
    pub charged: u64,
    /// Deposited so far, in total (negative corrections included).
    pub deposited: i64,
}

/// The kind of a journal entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Money added (or, negative, taken away by an operator's correction).
    Deposit,
    /// Money reserved.
    Hold,
    /// A hold ended with a charge (possibly zero) and the rest freed.
    Settle,
    /// A hold ended with nothing charged.
    Release,
    /// A hold past its deadline released by the sweep.
    Expire,
    /// A charge for a hold that had expired, taken from the available balance.
    LateSettle,
}

impl EntryKind {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EntryKind::Deposit => "deposit",
            EntryKind::Hold => "hold",
            EntryKind::Settle => "settle",
            EntryKind::Release => "release",
            EntryKind::Expire => "expire",
            EntryKind::LateSettle => "late_settle",
        }
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            EntryKind::Deposit,
            EntryKind::Hold,
            EntryKind::Settle,
            EntryKind::Release,
            EntryKind::Expire,
            EntryKind::LateSettle,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One movement of money, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalEntry {
    /// Position in the journal, increasing.
    pub seq: u64,
    /// The account moved.
    pub account: UserId,
    /// What happened.
    pub kind: EntryKind,
    /// Deposited, held, or charged amount (signed for deposits).
    pub amount: i64,
    /// The hold concerned, if any.
    pub hold: Option<HoldId>,
    /// The deposit reference, if any.
    pub reference: Option<String>,
    /// The hold's memo, if any.
    pub memo: Option<Memo>,
    /// Images returned (on settle).
    pub units_returned: Option<u32>,
    /// On the end of a hold (settle, release, expiry, late settle): what it held.
    pub held: Option<u64>,
    /// On a settle: the upstream deployment that rendered the job, when its backend named
    /// one ([`Ledger::settle_from`]).
    pub upstream: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// Why a ledger refused or failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LedgerError {
    /// The available balance is below the amount.
    InsufficientBalance {
        /// The amount asked for.
        needed: Amount,
        /// What was available.
        available: i64,
    },
    /// The available balance is negative.
    OutstandingDebt,
    /// A settle asked to charge more than was held.
    ChargeExceedsHold,
    /// The hold id was never issued by this ledger.
    UnknownHold,
    /// A settle found the hold ended already (settled or released by someone else).
    HoldEnded,
    /// A deposit would take the balance beyond what an `i64` holds.
    Overflow,
    /// The ledger's storage failed.
    Storage(BoxError),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::InsufficientBalance { needed, available } => {
                write!(
                    f,
                    "insufficient balance: {needed} needed, {available} available"
                )
            }
            LedgerError::OutstandingDebt => f.write_str("outstanding debt"),
            LedgerError::ChargeExceedsHold => f.write_str("charge exceeds the hold"),
            LedgerError::UnknownHold => f.write_str("no such hold"),
            LedgerError::HoldEnded => f.write_str("the hold was ended already"),
            LedgerError::Overflow => f.write_str("the amount would overflow the balance"),
            LedgerError::Storage(e) => write!(f, "ledger storage failed: {e}"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<LedgerError> for crate::GatewayError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::InsufficientBalance { needed, available } => {
                crate::GatewayError::InsufficientBalance {
                    needed: needed.get(),
                    available,
                }
            }
            LedgerError::OutstandingDebt => crate::GatewayError::OutstandingDebt,
            LedgerError::HoldEnded => crate::GatewayError::JobTakenOver,
            LedgerError::Overflow => crate::GatewayError::invalid_request(
                "the deposit would take the balance beyond 9223372036854775807 units",
                Some("amount"),
            ),
            // Its words say what failed: the ledger's storage, or a hold.
            other => crate::GatewayError::internal(other.to_string()),
        }
    }
}

/// How a [`Ledger::settle`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The open hold was charged; the rest was freed.
    Settled,
    /// The hold had already been settled or released: nothing changed.
    AlreadyEnded,
    /// The hold had expired (its money was already freed); the charge was taken from the
    /// available balance, possibly into debt. The caller logs it: a hold outlived by its
    /// request means the TTL or the renewal was too short.
    AfterExpiry,
}

/// What a settled hold charged, as [`Ledger::charged`] reads it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Charge {
    /// The amount charged.
    pub amount: Amount,
    /// The images it was charged for.
    pub units: u32,
}

impl Charge {
    /// `amount` charged for `units` images.
    pub fn new(amount: Amount, units: u32) -> Self {
        Charge { amount, units }
    }

    /// What one of its images cost: the charge is a whole price per image, so this is that
    /// price (`None` for a charge of no images).
    pub fn per_unit(self) -> Option<Amount> {
        self.amount
            .get()
            .checked_div(u64::from(self.units))
            .map(Amount::new)
    }
}

/// Holds, settles and releases money per account. See the module docs for the contract.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Reserves `amount` on `account` until settled, released, or `ttl` passes.
    async fn hold(
        &self,
        account: &UserId,
        amount: Amount,
        ttl: Duration,
        memo: Memo,
    ) -> Result<Hold, LedgerError>;

    /// Ends an open hold charging `charge` (at most the held amount) for `units_returned`
    /// images, and frees the rest. On a settled or released hold: nothing changes. On an
    /// expired hold: charges `charge` from the available balance, once.
    async fn settle(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
    ) -> Result<Settlement, LedgerError>;

    /// [`settle`](Self::settle), naming `upstream`, the deployment that rendered the job, in
    /// the settle's journal entry (the usage log's `upstream`). The gateway settles through
    /// this. The default forgets the name and settles.
    async fn settle_from(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
        upstream: Option<&str>,
    ) -> Result<Settlement, LedgerError> {
        let _ = upstream;
        self.settle(hold, charge, units_returned).await
    }

    /// Ends an open hold charging nothing. On an ended hold: nothing changes, `Ok`.
    async fn release(&self, hold: HoldId) -> Result<(), LedgerError>;

    /// Moves an open hold's deadline to `ttl` from now. `false` when the hold is no longer
    /// open (ended or expired); nothing changes then.
    async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError>;

    /// The account's balance (all zero for an account never seen).
    async fn balance(&self, account: &UserId) -> Result<Balance, LedgerError>;

    /// Adds `amount` (negative: an operator's correction) to `account`. `reference` makes
    /// it idempotent: a second deposit with the same reference on the same account changes
    /// nothing and returns `false`. A deposit that would take the balance (or the total
    /// deposited) beyond an `i64` is [`LedgerError::Overflow`] and changes nothing.
    async fn deposit(
        &self,
        account: &UserId,
        amount: i64,
        reference: &str,
    ) -> Result<bool, LedgerError>;

    /// Releases every open hold whose deadline is at or before `now` (Unix seconds);
    /// returns how many.
    async fn expire(&self, now: u64) -> Result<usize, LedgerError>;

    /// Up to `limit` journal entries of `account` after `after_seq`, oldest first.
    async fn journal(
        &self,
        account: &UserId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError>;

    /// What `hold` was charged when it was settled (in time or late); `None` while it is
    /// open, when it ended without a charge (released, expired), or was never issued.
    ///
    /// The gateway asks it of a settled job whose images never reached the store (its
    /// process died between the settle and their storage, or the store failed), to refund
    /// each lost image's share. The default answers `None`: such charges then stand, and
    /// each one is logged.
    async fn charged(&self, hold: HoldId) -> Result<Option<Charge>, LedgerError> {
        let _ = hold;
        Ok(None)
    }
}

/// A shared ledger is a ledger: keep an `Arc` to credit accounts and hand the builder a clone.
#[async_trait]
impl<L: Ledger + ?Sized> Ledger for Arc<L> {
    async fn hold(
        &self,
        account: &UserId,
        amount: Amount,
        ttl: Duration,
        memo: Memo,
    ) -> Result<Hold, LedgerError> {
        (**self).hold(account, amount, ttl, memo).await
    }

    async fn settle(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
    ) -> Result<Settlement, LedgerError> {
        (**self).settle(hold, charge, units_returned).await
    }

    async fn settle_from(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
        upstream: Option<&str>,
    ) -> Result<Settlement, LedgerError> {
        (**self)
            .settle_from(hold, charge, units_returned, upstream)
            .await
    }

    async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
        (**self).release(hold).await
    }

    async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError> {
        (**self).renew(hold, ttl).await
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, LedgerError> {
        (**self).balance(account).await
    }

    async fn deposit(
        &self,
        account: &UserId,
        amount: i64,
        reference: &str,
    ) -> Result<bool, LedgerError> {
        (**self).deposit(account, amount, reference).await
    }

    async fn expire(&self, now: u64) -> Result<usize, LedgerError> {
        (**self).expire(now).await
    }

    async fn journal(
        &self,
        account: &UserId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        (**self).journal(account, after_seq, limit).await
    }

    async fn charged(&self, hold: HoldId) -> Result<Option<Charge>, LedgerError> {
        (**self).charged(hold).await
    }
}
