use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{KeyStore, UserId};
use crate::BoxError;

/// What an issued key starts with, so a leaked key is recognisable in a scan.
pub const KEY_PREFIX: &str = "pk_live_";

/// How many characters of a key are kept for display (`pk_live_` and four more).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const SHOWN: usize = KEY_PREFIX.len() + 4;

/// How stale a key's `last_used` may be: it is written at most once a minute per key.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const LAST_USED_STEP: u64 = 60;

/// The id of a managed key: what the admin API names it by (never the key itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Uuid);

impl KeyId {
    /// A fresh random id.
    pub fn new() -> Self {
        KeyId(Uuid::new_v4())
    }

    /// Parses the text form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(KeyId)
    }

    /// The id as a UUID.
    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl Default for KeyId {
    fn default() -> Self {
        KeyId::new()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IP network, `address/prefix` (`203.0.113.0/24`, `2001:db8::/32`; a bare address is
/// one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address[/prefix]`; the prefix is at most 32 (IPv4) or 128 (IPv6).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|p| *p <= bits)?
            }
            Some(_) => return None,
        };
        Some(Cidr { network, prefix })
    }

    /// Whether `ip` is inside this network (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not address/prefix")))
    }
}

/// What one key may do. Every limit is optional; an empty key has none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// The most the key may spend in one UTC day, in the smallest unit. Holds count
    /// against it while they are open, so concurrent requests cannot pass it together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_limit: Option<u64>,
    /// The models the key may use; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// The networks the key may be used from; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<Cidr>>,
}

impl KeyLimits {
    /// Whether the key may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// Whether the key may be used from `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.ips
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|net| net.contains(ip)))
    }
}

/// The managed key a request came with: put into the [`Principal`](super::Principal) by the
/// key store, read by the layers that enforce its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGrant {
    /// The key's id.
    pub id: KeyId,
    /// Its limits, as they were when the request came in.
    pub limits: KeyLimits,
}

/// A managed key as the admin API lists it: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The key's id.
    pub id: KeyId,
    /// The user it opens.
    pub user: String,
    /// Its name, for people.
    pub name: String,
    /// Its first characters (`pk_live_` and four more), for people to tell keys apart.
    pub prefix: String,
    /// When it was made (unix seconds).
    pub created: u64,
    /// When it was last used (unix seconds, to the minute), if ever.
    pub last_used: Option<u64>,
    /// When it stops working (unix seconds), if ever.
    pub expires_at: Option<u64>,
    /// When it was revoked (unix seconds); a revoked key never works again.
    pub revoked_at: Option<u64>,
    /// What it may do.
    pub limits: KeyLimits,
}

/// A key to make.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewKey {
    /// Its name, for people (at most 100 characters).
    pub name: String,
    /// When it stops working (unix seconds).
    pub expires_at: Option<u64>,
    /// What it may do.
    pub limits: KeyLimits,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl NewKey {
    /// The key a rotation makes in place of `old`: its name, expiry and limits.
    pub(crate) fn succeeding(old: KeyRecord) -> NewKey {
        NewKey {
            name: old.name,
            expires_at: old.expires_at,
            limits: old.limits,
        }
    }
}

/// A key just made: the only time the key itself is shown.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct IssuedKey {
    /// The key; stored only as its SHA-256 digest.
    pub key: String,
    /// Its record.
    #[serde(flatten)]
    pub record: KeyRecord,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A fresh key: [`KEY_PREFIX`] and 32 random letters and digits (190 bits).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn fresh_key() -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + 32);
    key.push_str(KEY_PREFIX);
    use rand::distributions::{Alphanumeric, DistString};
    key.push_str(&Alphanumeric.sample_string(&mut rand::thread_rng(), 32));
    key
}

/// What a key shows of itself.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN).collect()
}

/// The UTC day a unix time falls on: what daily limits count by.
pub fn utc_day(unix: u64) -> u64 {
    unix / 86_400
}

/// Keys made, listed, limited, rotated and revoked while the gateway runs (the admin API's
/// `/admin/v1/.../keys` routes), with per-key daily spend.
///
/// # Contract
/// - [`KeyStore::principal`] finds a managed key until it is revoked or expires, and puts
///   its [`KeyGrant`] into the principal; from the call after [`revoke`](Self::revoke) or
///   past its expiry, it answers `None` (401), on every process sharing the store.
/// - Keys are stored as SHA-256 digests; [`IssuedKey::key`] is the only copy of a key.
/// - [`reserve`](Self::reserve) adds to a key's spend of a day only if the sum stays within
///   the limit, atomically against every other reservation on the store; every reservation
///   is later given back in full or in part by [`refund`](Self::refund), at most once.
/// - A key [`rotate`](Self::rotate) made spends the same day as the key it replaced (and
///   that key's predecessors): while both work, their spend is one sum under one limit, so
///   a rotation never gives a day's limit twice.
#[async_trait]
pub trait KeyRegistry: KeyStore {
    /// Makes a key for `user`.
    async fn create(&self, user: &UserId, new: NewKey) -> Result<IssuedKey, BoxError>;

    /// The user's keys, revoked ones included, oldest first.
    async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, BoxError>;

    /// One key's record.
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, BoxError>;

    /// Replaces a key's limits; `false` when there is no such live key.
    async fn set_limits(&self, id: KeyId, limits: KeyLimits) -> Result<bool, BoxError>;

    /// Ends a key now; `false` when there is no such live key.
    async fn revoke(&self, id: KeyId, now: u64) -> Result<bool, BoxError>;

    /// Makes a key with the same user, name and limits, and has the old one expire at
    /// `old_until` (or keep an earlier expiry); `None` when there is no such live key.
    async fn rotate(&self, id: KeyId, old_until: u64) -> Result<Option<IssuedKey>, BoxError>;

    /// Adds `amount` to the key's spend of `day` if it stays within `limit`; `false`
    /// (nothing added) otherwise.
    async fn reserve(&self, id: KeyId, day: u64, amount: u64, limit: u64)
        -> Result<bool, BoxError>;

    /// Takes `amount` back off the key's spend of `day` (never below zero).
    async fn refund(&self, id: KeyId, day: u64, amount: u64) -> Result<(), BoxError>;

    /// The key's spend of `day`.
    async fn spent(&self, id: KeyId, day: u64) -> Result<u64, BoxError>;
}

#[async_trait]
impl<K: KeyRegistry + ?Sized> KeyRegistry for Arc<K> {
    async fn create(&self, user: &UserId, new: NewKey) -> Result<IssuedKey, BoxError> {
        (**self).create(user, new).await
    }
    async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, BoxError> {
        (**self).list(user).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, BoxError> {
        (**self).get(id).await
    }
    async fn set_limits(&self, id: KeyId, limits: KeyLimits) -> Result<bool, BoxError> {
        (**self).set_limits(id, limits).await
    }
    async fn revoke(&self, id: KeyId, now: u64) -> Result<bool, BoxError> {
        (**self).revoke(id, now).await
    }
    async fn rotate(&self, id: KeyId, old_until: u64) -> Result<Option<IssuedKey>, BoxError> {
        (**self).rotate(id, old_until).await
    }
    async fn reserve(
        &self,
        id: KeyId,
        day: u64,
        amount: u64,
        limit: u64,
    ) -> Result<bool, BoxError> {
        (**self).reserve(id, day, amount, limit).await
    }
    async fn refund(&self, id: KeyId, day: u64, amount: u64) -> Result<(), BoxError> {
        (**self).refund(id, day, amount).await
    }
    async fn spent(&self, id: KeyId, day: u64) -> Result<u64, BoxError> {
        (**self).spent(id, day).await
    }
}

/// Fixed keys (the operator's configuration) in front of managed ones: a fixed key is found
/// first and carries no limits; everything the admin API does goes to the managed store.
/// Taking a key out of the configuration ends it at the next start, since fixed keys are
/// never written to the managed store.
#[derive(Clone)]
pub struct WithFixedKeys {
    fixed: super::StaticKeys,
    managed: Arc<dyn KeyRegistry>,
}

impl WithFixedKeys {
    /// `fixed` in front of `managed`.
    pub fn new(fixed: super::StaticKeys, managed: Arc<dyn KeyRegistry>) -> Self {
        WithFixedKeys { fixed, managed }
    }
}

impl fmt::Debug for WithFixedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithFixedKeys")
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyStore for WithFixedKeys {
    async fn principal(&self, key: &super::ApiKey) -> Result<Option<super::Principal>, BoxError> {
        match self.fixed.principal(key).await? {
            Some(principal) => Ok(Some(principal)),
            None => self.managed.principal(key).await,
        }
    }

    async fn knows_user(&self, user: &UserId) -> Result<bool, BoxError> {
        Ok(self.fixed.knows_user(user).await? || self.managed.knows_user(user).await?)
    }
}

#[async_trait]
impl KeyRegistry for WithFixedKeys {
    async fn create(&self, user: &UserId, new: NewKey) -> Result<IssuedKey, BoxError> {
        self.managed.create(user, new).await
    }
    async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, BoxError> {
        self.managed.list(user).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, BoxError> {
        self.managed.get(id).await
    }
    async fn set_limits(&self, id: KeyId, limits: KeyLimits) -> Result<bool, BoxError> {
        self.managed.set_limits(id, limits).await
    }
    async fn revoke(&self, id: KeyId, now: u64) -> Result<bool, BoxError> {
        self.managed.revoke(id, now).await
    }
    async fn rotate(&self, id: KeyId, old_until: u64) -> Result<Option<IssuedKey>, BoxError> {
        self.managed.rotate(id, old_until).await
    }
    async fn reserve(
        &self,
        id: KeyId,
        day: u64,
        amount: u64,
        limit: u64,
    ) -> Result<bool, BoxError> {
        self.managed.reserve(id, day, amount, limit).await
    }
    async fn refund(&self, id: KeyId, day: u64, amount: u64) -> Result<(), BoxError> {
        self.managed.refund(id, day, amount).await
    }
    async fn spent(&self, id: KeyId, day: u64) -> Result<u64, BoxError> {
        self.managed.spent(id, day).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_what_they_should() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains("203.0.113.7".parse().unwrap()));
        assert!(net.contains("::ffff:203.0.113.7".parse().unwrap()));
        assert!(!net.contains("203.0.114.7".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("198.51.100.1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        for bad in [
            "",
            "1.2.3.4/33",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "::/129",
            "host/8",
            "1.2.3/8",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn fresh_keys_are_long_and_distinct() {
        let (a, b) = (fresh_key(), fresh_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 40);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(shown_prefix(&a).len(), 12);
    }
}
