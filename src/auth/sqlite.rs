use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::managed::{fresh_key, shown_prefix, LAST_USED_STEP};
use super::{
    ApiKey, IssuedKey, KeyGrant, KeyId, KeyLimits, KeyRecord, KeyRegistry, KeyStore, NewKey,
    Principal, UserId,
};
use crate::clock::unix_now;
use crate::BoxError;

/// Managed keys in a SQLite file, for one process.
///
/// Every key is also held in memory, so a request's key lookup reads no file; every change
/// is written to the file (fsynced: a revocation outlives a power loss) before memory, so
/// what a request sees is never ahead of what is stored. Daily spend is counted in the file
/// under the connection's lock: a reservation's check and add are one step.
#[derive(Clone)]
pub struct SqliteKeys {
    db: Arc<Mutex<Connection>>,
    keys: Arc<RwLock<Keys>>,
}

#[derive(Default)]
struct Keys {
    by_digest: HashMap<[u8; 32], Arc<Entry>>,
    by_id: HashMap<KeyId, [u8; 32]>,
}

struct Entry {
    record: KeyRecord,
    user: UserId,
    last_used: AtomicU64,
}

impl Keys {
    fn insert(&mut self, digest: [u8; 32], record: KeyRecord) -> Result<(), BoxError> {
        let user = UserId::new(&record.user).map_err(|_| "corrupt user id in api_keys")?;
        let last_used = AtomicU64::new(record.last_used.unwrap_or(0));
        self.by_id.insert(record.id, digest);
        self.by_digest.insert(
            digest,
            Arc::new(Entry {
                record,
                user,
                last_used,
            }),
        );
        Ok(())
    }

    fn record(&self, id: KeyId) -> Option<KeyRecord> {
        let entry = self.by_digest.get(self.by_id.get(&id)?)?;
        Some(entry.current())
    }
}

impl Entry {
    fn current(&self) -> KeyRecord {
        let mut record = self.record.clone();
        record.last_used = Some(self.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0);
        record
    }

    fn live(&self, now: u64) -> bool {
        self.record.revoked_at.is_none() && self.record.expires_at.is_none_or(|t| now < t)
    }
}

impl std::fmt::Debug for SqliteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeys").finish_non_exhaustive()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    PRAGMA busy_timeout = 5000;
    -- Keys by the SHA-256 of the key; the key itself is never stored.
    CREATE TABLE IF NOT EXISTS api_keys (
        id         TEXT PRIMARY KEY,
        digest     BLOB NOT NULL UNIQUE,
        user_id    TEXT NOT NULL,
        name       TEXT NOT NULL,
        prefix     TEXT NOT NULL,
        created    INTEGER NOT NULL,
        last_used  INTEGER,
        expires_at INTEGER,
        revoked_at INTEGER,
        limits     TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS key_spend (
        key_id TEXT NOT NULL,
        day    INTEGER NOT NULL,
        spent  INTEGER NOT NULL CHECK (spent >= 0),
        PRIMARY KEY (key_id, day)
    );
    -- A rotated key's successor spends the day of the key it replaced: the first key of
    -- the chain counts the whole chain's daily spend.
    CREATE TABLE IF NOT EXISTS key_lineage (
        key_id    TEXT PRIMARY KEY,
        spends_as TEXT NOT NULL
    );";

/// The key whose day the key `?1` spends: the first of its rotation chain.
const SPENDS_AS: &str = "COALESCE((SELECT spends_as FROM key_lineage WHERE key_id = ?1), ?1)";

impl SqliteKeys {
    /// Opens (or creates) the key file at `path` and reads every key into memory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BoxError> {
        SqliteKeys::from_connection(Connection::open(path)?)
    }

    /// Keys in memory only (tests, examples): lost on exit.
    pub fn in_memory() -> Result<Self, BoxError> {
        SqliteKeys::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(db: Connection) -> Result<Self, BoxError> {
        db.execute_batch(SCHEMA)?;
        let mut keys = Keys::default();
        {
            let mut rows = db.prepare(
                "SELECT digest, id, user_id, name, prefix, created, last_used, expires_at,
                        revoked_at, limits FROM api_keys",
            )?;
            let mut rows = rows.query([])?;
            while let Some(row) = rows.next()? {
                let digest: [u8; 32] = row
                    .get::<_, Vec<u8>>(0)?
                    .try_into()
                    .map_err(|_| "corrupt digest in api_keys")?;
                let record = KeyRecord {
                    id: KeyId::parse(&row.get::<_, String>(1)?).ok_or("corrupt key id")?,
                    user: row.get(2)?,
                    name: row.get(3)?,
                    prefix: row.get(4)?,
                    created: unsigned(row.get(5)?),
                    last_used: row.get::<_, Option<i64>>(6)?.map(unsigned),
                    expires_at: row.get::<_, Option<i64>>(7)?.map(unsigned),
                    revoked_at: row.get::<_, Option<i64>>(8)?.map(unsigned),
                    limits: serde_json::from_str(&row.get::<_, String>(9)?)?,
                };
                keys.insert(digest, record)?;
            }
        }
        Ok(SqliteKeys {
            db: Arc::new(Mutex::new(db)),
            keys: Arc::new(RwLock::new(keys)),
        })
    }

    /// Stores `key` for `user` under `name`, with no limits; `false` when it was stored for
    /// `user` already (the configured keys are added on every start). A key stored for
    /// another user is an error: one key never opens two accounts.
    pub async fn add(&self, user: &UserId, key: &str, name: &str) -> Result<bool, BoxError> {
        let digest = digest(key);
        if let Some(entry) = self.read().by_digest.get(&digest) {
            if entry.user != *user {
                return Err(format!("the key given for `{user}` belongs to another user").into());
            }
            return Ok(false);
        }
        let new = NewKey {
            name: name.to_owned(),
            ..NewKey::default()
        };
        self.insert(user, key.to_owned(), new).await?;
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, BoxError> + Send + 'static,
    ) -> Result<T, BoxError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut db)
        })
        .await?
    }

    async fn insert(&self, user: &UserId, key: String, new: NewKey) -> Result<IssuedKey, BoxError> {
        let digest = digest(&key);
        let record = KeyRecord {
            id: KeyId::new(),
            user: user.as_str().to_owned(),
            name: new.name,
            prefix: shown_prefix(&key),
            created: unix_now(),
            last_used: None,
            expires_at: new.expires_at,
            revoked_at: None,
            limits: new.limits,
        };
        let row = record.clone();
        self.with_db(move |db| {
            db.execute(
                "INSERT INTO api_keys (id, digest, user_id, name, prefix, created, expires_at, limits)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    row.id.to_string(),
                    &digest[..],
                    row.user,
                    row.name,
                    row.prefix,
                    signed(row.created),
                    row.expires_at.map(signed),
                    serde_json::to_string(&row.limits)?,
                ],
            )?;
            Ok(())
        })
        .await?;
        self.write().insert(digest, record.clone())?;
        Ok(IssuedKey { key, record })
    }

    /// Writes `change` to a live key's row, then to memory; `false` when no live key has
    /// that id.
    async fn change(
        &self,
        id: KeyId,
        sql: &'static str,
        value: rusqlite::types::Value,
        apply: impl FnOnce(&mut KeyRecord),
    ) -> Result<bool, BoxError> {
        let now = unix_now();
        let Some(digest) = self.read().by_id.get(&id).copied() else {
            return Ok(false);
        };
        if !self
            .read()
            .by_digest
            .get(&digest)
            .is_some_and(|e| e.live(now))
        {
            return Ok(false);
        }
        self.with_db(move |db| {
            db.execute(sql, params![id.to_string(), value])?;
            Ok(())
        })
        .await?;
        let mut keys = self.write();
        if let Some(entry) = keys.by_digest.get(&digest) {
            let mut record = entry.current();
            apply(&mut record);
            keys.insert(digest, record)?;
        }
        Ok(true)
    }

    /// Records a use at most once a minute per key, off the request's path.
    fn touch(&self, entry: &Entry, now: u64) {
        let last = entry.last_used.load(Ordering::Relaxed);
        if now < last + LAST_USED_STEP {
            return;
        }
        if entry
            .last_used
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another request of this key is writing it
        }
        let id = entry.record.id.to_string();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let db = db.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(error) = db.execute(
                "UPDATE api_keys SET last_used = ?2 WHERE id = ?1",
                params![id, signed(now)],
            ) {
                tracing::warn!(%error, "recording a key's last use failed");
            }
        });
    }
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl KeyStore for SqliteKeys {
    async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, BoxError> {
        let now = unix_now();
        let entry = self.read().by_digest.get(&digest(key.expose())).cloned();
        let Some(entry) = entry.filter(|e| e.live(now)) else {
            return Ok(None);
        };
        self.touch(&entry, now);
        Ok(Some(Principal::new(entry.user.clone()).with_grant(
            KeyGrant {
                id: entry.record.id,
                limits: entry.record.limits.clone(),
            },
        )))
    }

    async fn knows_user(&self, user: &UserId) -> Result<bool, BoxError> {
        Ok(self.read().by_digest.values().any(|e| e.user == *user))
    }
}

#[async_trait]
impl KeyRegistry for SqliteKeys {
    async fn create(&self, user: &UserId, new: NewKey) -> Result<IssuedKey, BoxError> {
        self.insert(user, fresh_key(), new).await
    }

    async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, BoxError> {
        let mut records: Vec<KeyRecord> = self
            .read()
            .by_digest
            .values()
            .filter(|e| e.user == *user)
            .map(|e| e.current())
            .collect();
        records.sort_by_key(|r| (r.created, r.id.as_uuid()));
        Ok(records)
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, BoxError> {
        Ok(self.read().record(id))
    }

    async fn set_limits(&self, id: KeyId, limits: KeyLimits) -> Result<bool, BoxError> {
        let text = serde_json::to_string(&limits)?;
        self.change(
            id,
            "UPDATE api_keys SET limits = ?2 WHERE id = ?1",
            text.into(),
            move |r| r.limits = limits,
        )
        .await
    }

    async fn revoke(&self, id: KeyId, now: u64) -> Result<bool, BoxError> {
        self.change(
            id,
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
            signed(now).into(),
            move |r| r.revoked_at = Some(now),
        )
        .await
    }

    async fn rotate(&self, id: KeyId, old_until: u64) -> Result<Option<IssuedKey>, BoxError> {
        let Some(old) = self.read().record(id) else {
            return Ok(None);
        };
        let until = old.expires_at.map_or(old_until, |t| t.min(old_until));
        let ended = self
            .change(
                id,
                "UPDATE api_keys SET expires_at = ?2 WHERE id = ?1",
                signed(until).into(),
                move |r| r.expires_at = Some(until),
            )
            .await?;
        if !ended {
            return Ok(None);
        }
        let user = UserId::new(&old.user).map_err(|_| "corrupt user id in api_keys")?;
        let issued = self.create(&user, NewKey::succeeding(old)).await?;
        // Written before the new key is shown to anyone, so its first request already
        // spends the chain's day.
        let new = issued.record.id;
        self.with_db(move |db| {
            db.execute(
                &format!("INSERT INTO key_lineage (key_id, spends_as) VALUES (?2, {SPENDS_AS})"),
                params![id.to_string(), new.to_string()],
            )?;
            Ok(())
        })
        .await?;
        Ok(Some(issued))
    }

    async fn reserve(
        &self,
        id: KeyId,
        day: u64,
        amount: u64,
        limit: u64,
    ) -> Result<bool, BoxError> {
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let spent: u64 = tx
                .query_row(
                    &format!("SELECT spent FROM key_spend WHERE key_id = {SPENDS_AS} AND day = ?2"),
                    params![id.to_string(), signed(day)],
                    |row| row.get::<_, i64>(0),
                )
                .optional()?
                .map_or(0, unsigned);
            let total = spent.checked_add(amount).ok_or("spend overflow")?;
            if total > limit {
                return Ok(false);
            }
            tx.execute(
                &format!(
                    "INSERT INTO key_spend (key_id, day, spent) VALUES ({SPENDS_AS}, ?2, ?3)
                     ON CONFLICT (key_id, day) DO UPDATE SET spent = ?3"
                ),
                params![id.to_string(), signed(day), signed(total)],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn refund(&self, id: KeyId, day: u64, amount: u64) -> Result<(), BoxError> {
        self.with_db(move |db| {
            db.execute(
                &format!(
                    "UPDATE key_spend SET spent = MAX(spent - ?3, 0)
                     WHERE key_id = {SPENDS_AS} AND day = ?2"
                ),
                params![id.to_string(), signed(day), signed(amount)],
            )?;
            Ok(())
        })
        .await
    }

    async fn spent(&self, id: KeyId, day: u64) -> Result<u64, BoxError> {
        self.with_db(move |db| {
            Ok(db
                .query_row(
                    &format!("SELECT spent FROM key_spend WHERE key_id = {SPENDS_AS} AND day = ?2"),
                    params![id.to_string(), signed(day)],
                    |row| row.get::<_, i64>(0),
                )
                .optional()?
                .map_or(0, unsigned))
        })
        .await
    }
}
