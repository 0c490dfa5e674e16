//! Which connections are open, which are idle, and who may open another.
//!
//! Every connection registers here for as long as it lives. The accept loop asks the
//! registry two things: whether the peer already holds its share of connections, and, at the
//! global cap, which idle connection to close to make room. Each connection's watchdog
//! asks the other: has it been quiet too long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The open connections; shared by the accept loop and every connection task.
#[derive(Debug)]
pub(super) struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    conns: HashMap<u64, Arc<Conn>>,
    per_peer: HashMap<IpAddr, usize>,
}

/// One connection's activity, as its requests and its watchdog see it.
#[derive(Debug)]
pub(super) struct Conn {
    accepted: Instant,
    /// Requests being served right now.
    active: AtomicUsize,
    /// Requests served so far, finished or not.
    started: AtomicU64,
    /// Milliseconds after the registry's epoch at which the last request ended.
    idle_since: AtomicU64,
    /// Told to close: evicted to make room, or the server is shutting down.
    close: Notify,
    /// A request began or ended: the watchdog computes its deadline again.
    activity: Notify,
    /// Whether it was told, so one connection is never evicted twice.
    told: AtomicBool,
    /// Requests whose client broke off the body (reset streams, mostly).
    aborted: AtomicU64,
}

/// Why a connection's watchdog fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Close {
    /// Evicted to make room, or the server is shutting down.
    Told,
    /// No first request in time, or idle too long.
    Quiet,
}

impl Conn {
    fn tell(&self) {
        self.told.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }
}

/// A connection's place in the registry; leaving it (on drop) frees the place.
#[derive(Debug)]
pub(super) struct Registered {
    registry: Arc<Registry>,
    id: u64,
    peer: IpAddr,
    pub(super) conn: Arc<Conn>,
}

impl Registry {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection from `peer`, or `None` when that peer already holds
    /// `per_peer` connections.
    pub(super) fn register(self: &Arc<Self>, peer: IpAddr, per_peer: usize) -> Option<Registered> {
        let mut open = self.open();
        let count = open.per_peer.entry(peer).or_insert(0);
        if *count >= per_peer {
            return None;
        }
        *count += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            accepted: Instant::now(),
            active: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(self.millis()),
            close: Notify::new(),
            activity: Notify::new(),
            told: AtomicBool::new(false),
            aborted: AtomicU64::new(0),
        });
        open.conns.insert(id, conn.clone());
        Some(Registered {
            registry: self.clone(),
            id,
            peer,
            conn,
        })
    }

    /// Tells the connection idle for longest, other than `newcomer` (the one that needs the
    /// room), to close; `false` when none is idle.
    pub(super) fn evict_idle(&self, newcomer: &Registered) -> bool {
        let open = self.open();
        let oldest = open
            .conns
            .iter()
            .filter(|(id, c)| {
                **id != newcomer.id
                    && c.active.load(Ordering::Acquire) == 0
                    && !c.told.load(Ordering::Relaxed)
            })
            .map(|(_, c)| c)
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match oldest {
            Some(conn) => {
                conn.tell();
                true
            }
            None => false,
        }
    }

    /// Tells every connection to close once its requests are answered.
    pub(super) fn close_all(&self) {
        for conn in self.open().conns.values() {
            conn.tell();
        }
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut open = self.registry.open();
        open.conns.remove(&self.id);
        if let Some(count) = open.per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

impl Registered {
    /// Marks a request begun; the returned guard marks it ended when dropped.
    pub(super) fn begin(&self) -> InRequest {
        self.conn.active.fetch_add(1, Ordering::AcqRel);
        self.conn.started.fetch_add(1, Ordering::Relaxed);
        self.conn.activity.notify_one();
        InRequest {
            registry: self.registry.clone(),
            conn: self.conn.clone(),
        }
    }

    /// Resolves when the connection should close, and why: told to, no request within
    /// `first_request` of the accept, or no request in flight for `idle`.
    pub(super) async fn closing(&self, first_request: Duration, idle: Duration) -> Close {
        let conn = &self.conn;
        loop {
            let now = self.registry.millis();
            let wait = if conn.active.load(Ordering::Acquire) > 0 {
                // Re-checked later: while a request runs, the connection is not idle.
                idle
            } else if conn.started.load(Ordering::Relaxed) == 0 {
                match first_request.checked_sub(conn.accepted.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Close::Quiet,
                }
            } else {
                let quiet = Duration::from_millis(
                    now.saturating_sub(conn.idle_since.load(Ordering::Relaxed)),
                );
                match idle.checked_sub(quiet) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Close::Quiet,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = conn.close.notified() => return Close::Told,
                // Without it, a watchdog asleep on the first-request deadline would keep an
                // idle connection open that long after its last request.
                () = conn.activity.notified() => {}
            }
        }
    }

    /// Resolves when the connection is told to close.
    pub(super) async fn told_to_close(&self) {
        self.conn.close.notified().await;
    }

    /// Counts a request whose client broke off its body.
    pub(super) fn aborted(&self) {
        self.conn.aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests' clients broke off their bodies.
    pub(super) fn aborted_count(&self) -> u64 {
        self.conn.aborted.load(Ordering::Relaxed)
    }

    /// Requests in flight on this connection.
    pub(super) fn active(&self) -> usize {
        self.conn.active.load(Ordering::Acquire)
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub(super) struct InRequest {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.registry.millis(), Ordering::Relaxed);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
        self.conn.activity.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_peer_gets_its_share_and_no_more_and_a_closed_place_is_free_again() {
        let registry = Registry::new();
        let a = registry.register(LOCAL, 2).unwrap();
        let _b = registry.register(LOCAL, 2).unwrap();
        assert!(registry.register(LOCAL, 2).is_none());
        drop(a);
        assert!(registry.register(LOCAL, 2).is_some());
    }

    #[tokio::test]
    async fn only_an_idle_connection_is_evicted() {
        let registry = Registry::new();
        let busy = registry.register(LOCAL, 8).unwrap();
        let _request = busy.begin();
        let newcomer = registry.register(LOCAL, 8).unwrap();
        assert!(
            !registry.evict_idle(&newcomer),
            "the only other connection is busy"
        );
        let idle = registry.register(LOCAL, 8).unwrap();
        assert!(registry.evict_idle(&newcomer));
        // The idle one was told; its closing resolves at once.
        let why = tokio::time::timeout(
            Duration::from_secs(1),
            idle.closing(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .await
        .unwrap();
        assert_eq!(why, Close::Told);
        assert!(
            !registry.evict_idle(&newcomer),
            "an evicted connection is not evicted twice"
        );
    }
}
