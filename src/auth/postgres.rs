use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{ApiKey, KeyStore, Principal, UserId};
use crate::clock::unix_now;
use crate::postgres::{seconds, Postgres};
use crate::BoxError;

/// API keys in PostgreSQL, shared by every replica, kept as SHA-256 digests only.
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

    /// Stores `key` for `user` under `name`; `false` when it was stored for `user` already
    /// (several replicas adding the configured keys at start add each once). A key stored
    /// for another user is an error: one key never opens two accounts.
    pub async fn add(&self, user: &UserId, key: &str, name: &str) -> Result<bool, BoxError> {
        let client = self.db.client().await?;
        let digest = Sha256::digest(key.as_bytes()).to_vec();
        let added = client
            .execute(
                "INSERT INTO api_keys (digest, user_id, name, created) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&digest, &user.as_str(), &name, &seconds(unix_now())],
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
        Ok(false)
    }
}

#[async_trait]
impl KeyStore for PgKeys {
    async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, BoxError> {
        let client = self.db.client().await?;
        let digest = Sha256::digest(key.expose().as_bytes()).to_vec();
        let row = client
            .query_opt("SELECT user_id FROM api_keys WHERE digest = $1", &[&digest])
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = UserId::new(row.get::<_, &str>(0)).map_err(|_| "corrupt user id in api_keys")?;
        Ok(Some(Principal::new(user)))
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
