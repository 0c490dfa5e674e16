//! The limits kept in Redis, so that they hold across replicas.

use std::num::NonZeroU32;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::auth::UserId;
use crate::BoxError;

/// How long an in-flight slot lives in Redis unless given back: the bound on how long a
/// replica that died keeps its callers' slots taken. Work that runs longer than this (far
/// past any request deadline) stops counting against its caller.
const SLOT_LEASE: Duration = Duration::from_secs(15 * 60);

/// One request's admission, atomically: the rate (GCRA, on Redis's own clock, so replicas'
/// clocks do not matter) and then an in-flight slot (a sorted set of slot ids by expiry).
/// A request refused for either takes nothing.
///
/// KEYS: rate key, slots key. ARGV: emission interval ms (0: no rate), burst tolerance ms,
/// most slots (0: no bound), slot id, slot lease ms.
/// Returns `{1}` when admitted, `{0, wait ms}` when refused.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local new_tat = nil
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local tolerance = tonumber(ARGV[2])
  if tat - now > tolerance then
    return {0, tat - tolerance - now}
  end
  new_tat = tat + interval
end
local most = tonumber(ARGV[3])
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= most then
    return {0, 1000}
  end
  local lease = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease)
end
if new_tat then
  redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
end
return {1}
";

/// Rate and in-flight counters in Redis, shared by every replica that uses the same Redis
/// and key prefix. Cheap to clone.
///
/// When Redis cannot be reached the gateway refuses requests (`503`), since admitting them
/// would lift every limit at once; see
/// [`RateLimitLayer::redis`](super::RateLimitLayer::redis).
#[derive(Clone)]
pub struct RedisLimits {
    connection: ConnectionManager,
    prefix: String,
    admit: Script,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix` (several
    /// gateways may share one Redis under different prefixes). The connection reconnects
    /// by itself after a failure.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLimits, BoxError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(RedisLimits {
            connection,
            prefix: prefix.to_owned(),
            admit: Script::new(ADMIT),
        })
    }

    /// Admits one request of `user`: `Ok(Ok(slot))` with the slot's id when it took one,
    /// `Ok(Err(wait))` when it is over a limit, `Err` when Redis failed.
    pub(super) async fn admit(
        &self,
        user: &UserId,
        per_minute: Option<NonZeroU32>,
        max_in_flight: Option<usize>,
    ) -> Result<Result<Option<String>, Duration>, BoxError> {
        let (interval, tolerance) = match per_minute {
            // Bursts of `per_minute`, refilled evenly over the minute, as in-process.
            Some(rate) => {
                let interval = 60_000 / u64::from(rate.get()).max(1);
                (interval, interval * (u64::from(rate.get()) - 1))
            }
            None => (0, 0),
        };
        let most = max_in_flight.unwrap_or(0);
        let slot = uuid::Uuid::new_v4().simple().to_string();
        let mut connection = self.connection.clone();
        let answer: Vec<u64> = self
            .admit
            .key(self.key("rate", user))
            .key(self.key("slots", user))
            .arg(interval)
            .arg(tolerance)
            .arg(most)
            .arg(&slot)
            .arg(SLOT_LEASE.as_millis() as u64)
            .invoke_async(&mut connection)
            .await?;
        match answer.as_slice() {
            [1] => Ok(Ok((most > 0).then_some(slot))),
            [0, wait] => Ok(Err(Duration::from_millis(*wait))),
            _ => Err("unexpected answer from the rate limit script".into()),
        }
    }

    /// Gives back `slot` of `user`, on a task of its own (called from a drop).
    pub(super) fn leave(&self, user: &UserId, slot: String) {
        let key = self.key("slots", user);
        let mut connection = self.connection.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (shut down): the slot's lease ends it.
            return;
        };
        runtime.spawn(async move {
            let removed: Result<i64, _> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&slot)
                .query_async(&mut connection)
                .await;
            if let Err(error) = removed {
                // The lease ends it instead.
                tracing::warn!(%error, "giving back an in-flight slot failed");
            }
        });
    }

    fn key(&self, kind: &str, user: &UserId) -> String {
        format!("{}:{kind}:{user}", self.prefix)
    }
}
