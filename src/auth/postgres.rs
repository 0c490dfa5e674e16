use async_trait::async_trait;
use sha2::{Digest, Sha256};

use uuid::Uuid;

use super::managed::{fresh_key, shown_prefix, LAST_USED_STEP};
use super::{
    ApiKey, IssuedKey, KeyGrant, KeyId, KeyLimits, KeyRecord, KeyRegistry, KeyStore, NewKey,
    Principal, UserId,
};
use crate::clock::unix_now;
use crate::postgres::{seconds, Postgres};
use crate::BoxError;

/// API keys in PostgreSQL, shared by every replica, kept as SHA-256 digests only: the
/// configured keys ([`PgKeys::add`]) and the keys managed through the admin API
/// ([`KeyRegistry`]), whose revocation, expiry and limits every replica sees from its next
/// request (each request reads its key's row; nothing is cached).
///
/// A key is looked up by its digest (an index lookup: keys are long random tokens, so the
/// digest says nothing useful about a near guess). A key added on one replica is valid on
/// every replica from its next request.
#[derive(Clone, Debug)]
pub struct PgKeys {
    db: Postgres,
}

impl PgKeys {
    /// The keys in `db`.
    pub fn new(db: Postgres) -> Self {
        PgKeys { db }
    }

    /// Stores a key of the configuration, `key` for `user`, as a managed key named `origin`
    /// (`configured` for `GATEWAY_API_KEYS`, `demo` for a replica's demo key): listed and
    /// revocable like any other, without limits. `false` when it was stored already
    /// (several replicas adding the configured keys at start add each once); a key an
    /// admin revoked stays revoked. A key stored for another user is an error: one key
    /// never opens two accounts.
    pub async fn add(&self, user: &UserId, key: &str, origin: &str) -> Result<bool, BoxError> {
        let client = self.db.client().await?;
        let digest = Sha256::digest(key.as_bytes()).to_vec();
        let id = KeyId::new().as_uuid();
        let prefix = shown_prefix(key);
        let added = client
            .execute(
                "INSERT INTO api_keys (digest, user_id, name, created, id, prefix, configured)
                 VALUES ($1, $2, $3, $4, $5, $6, $3)
                 ON CONFLICT DO NOTHING",
                &[
                    &digest,
                    &user.as_str(),
                    &origin,
                    &seconds(unix_now()),
                    &id,
                    &prefix,
                ],
            )
            .await?;
        if added > 0 {
            return Ok(true);
        }
        let owner = client
            .query_one("SELECT user_id FROM api_keys WHERE digest = $1", &[&digest])
            .await?;
        if owner.get::<_, &str>(0) != user.as_str() {
            return Err(format!("the key given for `{user}` belongs to another user").into());
        }
        // A configured key stored by an earlier version, without an id, gets one now.
        client
            .execute(
                "UPDATE api_keys SET id = $2, prefix = $3, configured = $4
                 WHERE digest = $1 AND id IS NULL",
                &[&digest, &id, &prefix, &origin],
            )
            .await?;
        Ok(false)
    }

    /// Revokes every key of `GATEWAY_API_KEYS` origin (see [`add`](Self::add)) whose key is
    /// not among `kept`: a key taken out of the configuration stops working at the next
    /// start of any replica. Demo keys are each replica's own and are left alone. Answers
    /// how many were revoked.
    pub async fn retire_configured(&self, kept: &[&str]) -> Result<u64, BoxError> {
        let client = self.db.client().await?;
        let digests: Vec<Vec<u8>> = kept
            .iter()
            .map(|key| Sha256::digest(key.as_bytes()).to_vec())
            .collect();
        Ok(client
            .execute(
                "UPDATE api_keys SET revoked_at = $2
                 WHERE configured = 'configured' AND revoked_at IS NULL
                   AND NOT (digest = ANY($1))",
                &[&digests, &seconds(unix_now())],
            )
            .await?)
    }
}

/// The columns a [`KeyRecord`] is read from, in [`record_of`]'s order.
const RECORD: &str =
    "id, user_id, name, prefix, created, last_used, expires_at, revoked_at, limits";

/// A managed key's row; `None` for a configured key's (it has no id).
/// The key whose day the key `$1` spends: the first of its rotation chain.
const SPENDS_AS: &str = "COALESCE((SELECT spends_as FROM key_lineage WHERE key_id = $1), $1::uuid)";

fn record_of(row: &tokio_postgres::Row) -> Result<Option<KeyRecord>, BoxError> {
    let Some(id) = row.try_get::<_, Option<Uuid>>(0)? else {
        return Ok(None);
    };
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Some(KeyRecord {
        id: KeyId::parse(&id.to_string()).ok_or("corrupt key id")?,
        user: row.try_get(1)?,
        name: row.try_get(2)?,
        prefix: row.try_get(3)?,
        created: unsigned(row.try_get(4)?),
        last_used: row.try_get::<_, Option<i64>>(5)?.map(unsigned),
        expires_at: row.try_get::<_, Option<i64>>(6)?.map(unsigned),
        revoked_at: row.try_get::<_, Option<i64>>(7)?.map(unsigned),
        limits: serde_json::from_str(row.try_get(8)?)?,
    }))
}

/// The condition of a live managed key, with the time as `$2`.
const LIVE: &str = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)";

impl PgKeys {
    async fn insert(&self, user: &UserId, new: NewKey) -> Result<IssuedKey, BoxError> {
        let key = fresh_key();
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
        let client = self.db.client().await?;
        client
            .execute(
                "INSERT INTO api_keys (digest, user_id, name, created, id, prefix, expires_at, limits)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &Sha256::digest(key.as_bytes()).to_vec(),
                    &record.user,
                    &record.name,
                    &seconds(record.created),
                    &record.id.as_uuid(),
                    &record.prefix,
                    &record.expires_at.map(seconds),
                    &serde_json::to_string(&record.limits)?,
                ],
            )
            .await?;
        Ok(IssuedKey { key, record })
    }

    /// Sets one column of a live managed key; `false` when there is none with this id.
    async fn set(
        &self,
        id: KeyId,
        column: &'static str,
        value: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<bool, BoxError> {
        let client = self.db.client().await?;
        let sql = format!("UPDATE api_keys SET {column} = $3 WHERE id = $1 AND {LIVE}");
        let changed = client
            .execute(&sql, &[&id.as_uuid(), &seconds(unix_now()), value])
            .await?;
        Ok(changed > 0)
    }
}

#[async_trait]
impl KeyStore for PgKeys {
    async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, BoxError> {
        let client = self.db.client().await?;
        let digest = Sha256::digest(key.expose().as_bytes()).to_vec();
        let select = client
            .prepare_cached(&format!("SELECT {RECORD} FROM api_keys WHERE digest = $1"))
            .await?;
        let row = client.query_opt(&select, &[&digest]).await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = UserId::new(row.get::<_, &str>(1)).map_err(|_| "corrupt user id in api_keys")?;
        let Some(record) = record_of(&row)? else {
            return Ok(Some(Principal::new(user)));
        };
        let now = unix_now();
        if record.revoked_at.is_some() || record.expires_at.is_some_and(|t| t <= now) {
            return Ok(None);
        }
        if record.last_used.is_none_or(|t| t + LAST_USED_STEP <= now) {
            // At most once a minute per key, off the request's path; several replicas may
            // each write it once.
            let db = self.db.clone();
            let id = record.id.as_uuid();
            tokio::spawn(async move {
                let written = match db.client().await {
                    Ok(client) => client
                        .execute(
                            "UPDATE api_keys SET last_used = $2 WHERE id = $1
                             AND (last_used IS NULL OR last_used < $2 - 60)",
                            &[&id, &seconds(now)],
                        )
                        .await
                        .map(drop)
                        .map_err(BoxError::from),
                    Err(error) => Err(error),
                };
                if let Err(error) = written {
                    tracing::warn!(%error, "recording a key's last use failed");
                }
            });
        }
        Ok(Some(Principal::new(user).with_grant(KeyGrant {
            id: record.id,
            limits: record.limits,
        })))
    }

    async fn knows_user(&self, user: &UserId) -> Result<bool, BoxError> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM api_keys WHERE user_id = $1 LIMIT 1",
                &[&user.as_str()],
            )
            .await?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl KeyRegistry for PgKeys {
    async fn create(&self, user: &UserId, new: NewKey) -> Result<IssuedKey, BoxError> {
        self.insert(user, new).await
    }

    async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, BoxError> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {RECORD} FROM api_keys WHERE user_id = $1 AND id IS NOT NULL
                     ORDER BY created, id"
                ),
                &[&user.as_str()],
            )
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            records.extend(record_of(row)?);
        }
        Ok(records)
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, BoxError> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {RECORD} FROM api_keys WHERE id = $1"),
                &[&id.as_uuid()],
            )
            .await?;
        Ok(match row {
            Some(row) => record_of(&row)?,
            None => None,
        })
    }

    async fn set_limits(&self, id: KeyId, limits: KeyLimits) -> Result<bool, BoxError> {
        self.set(id, "limits", &serde_json::to_string(&limits)?)
            .await
    }

    async fn revoke(&self, id: KeyId, now: u64) -> Result<bool, BoxError> {
        self.set(id, "revoked_at", &seconds(now)).await
    }

    async fn rotate(&self, id: KeyId, old_until: u64) -> Result<Option<IssuedKey>, BoxError> {
        let Some(old) = self.get(id).await? else {
            return Ok(None);
        };
        // The old key's end is set only while it is live: a rotation racing a revoke makes
        // no new key for a revoked one.
        let until = old.expires_at.map_or(old_until, |t| t.min(old_until));
        if !self.set(id, "expires_at", &seconds(until)).await? {
            return Ok(None);
        }
        let user = UserId::new(&old.user).map_err(|_| "corrupt user id in api_keys")?;
        let issued = self.insert(&user, NewKey::succeeding(old)).await?;
        // Written before the new key is shown to anyone, so its first request already
        // spends the chain's day.
        let client = self.db.client().await?;
        client
            .execute(
                &format!("INSERT INTO key_lineage (key_id, spends_as) VALUES ($2, {SPENDS_AS})"),
                &[&id.as_uuid(), &issued.record.id.as_uuid()],
            )
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
        if amount > limit {
            return Ok(false);
        }
        let client = self.db.client().await?;
        // One statement: the row lock makes the check and the add one step on every replica.
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO key_spend (key_id, day, spent) VALUES ({SPENDS_AS}, $2, $3)
                     ON CONFLICT (key_id, day) DO UPDATE SET spent = key_spend.spent + EXCLUDED.spent
                     WHERE key_spend.spent + EXCLUDED.spent <= $4
                     RETURNING spent"
                ),
                &[
                    &id.as_uuid(),
                    &seconds(day),
                    &seconds(amount),
                    &seconds(limit),
                ],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn refund(&self, id: KeyId, day: u64, amount: u64) -> Result<(), BoxError> {
        let client = self.db.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE key_spend SET spent = GREATEST(spent - $3, 0)
                     WHERE key_id = {SPENDS_AS} AND day = $2"
                ),
                &[&id.as_uuid(), &seconds(day), &seconds(amount)],
            )
            .await?;
        Ok(())
    }

    async fn spent(&self, id: KeyId, day: u64) -> Result<u64, BoxError> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT spent FROM key_spend WHERE key_id = {SPENDS_AS} AND day = $2"),
                &[&id.as_uuid(), &seconds(day)],
            )
            .await?;
        Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }
}
