use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{ApiKey, InvalidUserId, Principal, UserId};
use crate::BoxError;

/// Answers whose an API key is.
///
/// Implement it over your own user database; [`StaticKeys`] serves a fixed list.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The principal the key belongs to, `Ok(None)` for an unknown key, `Err` when the store
    /// itself failed (answered 500, never 401, so an outage does not look like a bad key).
    async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, BoxError>;

    /// Whether `user` holds a key. The admin API credits only such accounts, so a mistyped
    /// user id is refused rather than given money no key can spend.
    async fn knows_user(&self, user: &UserId) -> Result<bool, BoxError>;
}

#[async_trait]
impl<K: KeyStore + ?Sized> KeyStore for Arc<K> {
    async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, BoxError> {
        (**self).principal(key).await
    }

    async fn knows_user(&self, user: &UserId) -> Result<bool, BoxError> {
        (**self).knows_user(user).await
    }
}

/// A fixed list of keys, kept only as SHA-256 digests.
///
/// API keys are long random tokens, so a fast digest is the right tool: it hides the key
/// from a memory dump without a password hash's deliberate slowness on every request.
/// Lookup compares the presented digest with every stored digest in constant time, so the
/// time taken says nothing about how close a guess was. That is O(number of keys), made for
/// lists of up to a few thousand keys.
#[derive(Clone, Default)]
pub struct StaticKeys {
    entries: Vec<([u8; 32], Principal)>,
}

impl StaticKeys {
    /// An empty list: every key is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` for `user_id`. Fails when the user id is outside [`UserId`]'s alphabet.
    pub fn with_key(mut self, user_id: &str, key: &str) -> Result<Self, InvalidUserId> {
        let user_id = UserId::new(user_id)?;
        self.entries.push((digest(key), Principal::new(user_id)));
        Ok(self)
    }

    /// Adds a key whose SHA-256 digest is already known (so the plain key need never be
    /// configured on the server).
    pub fn with_digest(mut self, user_id: UserId, digest: [u8; 32]) -> Self {
        self.entries.push((digest, Principal::new(user_id)));
        self
    }

    /// The SHA-256 digest of a key, as [`StaticKeys::with_digest`] takes it.
    pub fn digest_of(key: &str) -> [u8; 32] {
        digest(key)
    }

    /// Every user id that has at least one key.
    pub fn users(&self) -> impl Iterator<Item = &UserId> {
        self.entries.iter().map(|(_, p)| p.user_id())
    }
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("keys", &self.entries.len())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[async_trait]
impl KeyStore for StaticKeys {
    async fn principal(&self, key: &ApiKey) -> Result<Option<Principal>, BoxError> {
        let presented = digest(key.expose());
        // Walk every entry whatever matches, selecting the match's index without a branch.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (stored, _)) in self.entries.iter().enumerate() {
            let hit = stored.ct_eq(&presented);
            index = u64::conditional_select(&index, &(i as u64), hit);
            found |= hit;
        }
        if bool::from(found) {
            Ok(self.entries.get(index as usize).map(|(_, p)| p.clone()))
        } else {
            Ok(None)
        }
    }

    async fn knows_user(&self, user: &UserId) -> Result<bool, BoxError> {
        Ok(self.users().any(|known| known == user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_each_key_and_nothing_else() {
        let keys = StaticKeys::new()
            .with_key("alice", "pk_a")
            .unwrap()
            .with_key("bob", "pk_b")
            .unwrap();
        let who = |k: &str| {
            let keys = keys.clone();
            let k = ApiKey::parse(k).unwrap();
            async move {
                keys.principal(&k)
                    .await
                    .unwrap()
                    .map(|p| p.user_id.to_string())
            }
        };
        assert_eq!(who("pk_a").await.as_deref(), Some("alice"));
        assert_eq!(who("pk_b").await.as_deref(), Some("bob"));
        assert_eq!(who("pk_c").await, None);
    }

    #[test]
    fn debug_lists_no_digest() {
        let keys = StaticKeys::new().with_key("alice", "pk_a").unwrap();
        assert_eq!(format!("{keys:?}"), "StaticKeys { keys: 1 }");
    }
}
