//! Which connections are open, which are idle, and who may open another.
//!
//! Every connection registers here for as long as it lives. The accept loop asks the
//! registry two things: whether the peer may open another connection, and, at the global
//! cap, which connection to close to make room. Each connection's watchdog asks the other:
//! has it been quiet too long.
//!
//! Room is made by closing the worst offender, never by making a newcomer wait while one
//! exists: first the connection idle for longest (silent, a head not finished, kept alive
//! between requests), then the one reading a request body at the lowest rate. A connection
//! whose request is being worked on (its body read) is never closed to make room: that
//! work may be paid.

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
    /// The peer it came from.
    peer: IpAddr,
    /// Milliseconds after the epoch at which a request body began to be read, or
    /// [`NO_BODY`] while none is.
    body_since: AtomicU64,
    /// Bytes of that body read so far.
    body_read: AtomicU64,
    /// Closed to make room: dropped at once, even with a request in flight.
    cut: AtomicBool,
}

/// [`Conn::body_since`] while no body is being read.
const NO_BODY: u64 = u64::MAX;

/// How a connection ranks as a candidate to close for room; lower goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Offence {
    /// No request in flight, since the given millisecond.
    Idle(u64),
    /// Reading a body at the given bytes per second.
    SlowBody(u64),
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

    /// Closes it to make room for another: politely if idle, cut at once if reading a body.
    fn evict(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.tell();
    }

    /// How it ranks as a candidate to close for room at `now`; `None` when it is not one
    /// (already told, or its request is being worked on).
    fn offence(&self, now: u64) -> Option<Offence> {
        if self.told.load(Ordering::Relaxed) {
            return None;
        }
        if self.active.load(Ordering::Acquire) == 0 {
            return Some(Offence::Idle(self.idle_since.load(Ordering::Relaxed)));
        }
        let since = self.body_since.load(Ordering::Relaxed);
        if since == NO_BODY {
            return None;
        }
        let read = self.body_read.load(Ordering::Relaxed);
        let millis = now.saturating_sub(since).max(1);
        Some(Offence::SlowBody(read.saturating_mul(1000) / millis))
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

    /// Registers a connection from `peer`. When that peer already holds `per_peer`
    /// connections (`None`: no bound, a trusted proxy), its worst offender is closed to make
    /// room, so a silent socket never keeps an answering client of its own address out; with
    /// none to close (every one at work), `None`.
    pub(super) fn register(
        self: &Arc<Self>,
        peer: IpAddr,
        per_peer: Option<usize>,
    ) -> Option<Registered> {
        let now = self.millis();
        let mut open = self.open();
        let count = open.per_peer.get(&peer).copied().unwrap_or(0);
        if per_peer.is_some_and(|cap| count >= cap) {
            let worst = open
                .conns
                .values()
                .filter(|c| c.peer == peer)
                .filter_map(|c| Some((c.offence(now)?, c)))
                .min_by_key(|(offence, _)| *offence);
            // The closed one leaves the count when its task ends; until then the peer
            // holds one more than its share.
            worst?.1.evict();
        }
        *open.per_peer.entry(peer).or_insert(0) += 1;
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
            peer,
            body_since: AtomicU64::new(NO_BODY),
            body_read: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        });
        open.conns.insert(id, conn.clone());
        Some(Registered {
            registry: self.clone(),
            id,
            peer,
            conn,
        })
    }

    /// Closes the worst offender other than `newcomer` (the one that needs the room): the
    /// connection idle for longest, else the one reading a body at the lowest rate; `false`
    /// when every other connection is at work.
    pub(super) fn make_room(&self, newcomer: &Registered) -> bool {
        let now = self.millis();
        let open = self.open();
        let worst = open
            .conns
            .iter()
            .filter(|(id, _)| **id != newcomer.id)
            .filter_map(|(_, c)| Some((c.offence(now)?, c)))
            .min_by_key(|(offence, _)| *offence);
        match worst {
            Some((_, conn)) => {
                conn.evict();
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

    /// Whether it was closed to make room (and so is dropped at once).
    pub(super) fn cut(&self) -> bool {
        self.conn.cut.load(Ordering::Relaxed)
    }

    /// What a request body reports its reading to, so a slow one can be found.
    pub(super) fn body_watch(&self) -> BodyWatch {
        BodyWatch {
            registry: self.registry.clone(),
            conn: self.conn.clone(),
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

/// A request body's reading, as the registry ranks it: begun, bytes read, ended.
#[derive(Debug)]
pub(crate) struct BodyWatch {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl BodyWatch {
    /// The body began to be read now.
    pub(super) fn begin(&self) {
        self.conn.body_read.store(0, Ordering::Relaxed);
        self.conn
            .body_since
            .store(self.registry.millis(), Ordering::Relaxed);
    }

    /// `bytes` more were read.
    pub(super) fn read(&self, bytes: u64) {
        self.conn.body_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The body was read to its end (or given up).
    pub(super) fn end(&self) {
        self.conn.body_since.store(NO_BODY, Ordering::Relaxed);
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
        let a = registry.register(LOCAL, Some(2)).unwrap();
        let b = registry.register(LOCAL, Some(2)).unwrap();
        let (_ra, _rb) = (a.begin(), b.begin());
        assert!(
            registry.register(LOCAL, Some(2)).is_none(),
            "both at work: none is closed for a third"
        );
        drop(a);
        assert!(registry.register(LOCAL, Some(2)).is_some());
    }

    #[tokio::test]
    async fn at_its_share_a_peer_loses_its_worst_connection_not_a_newcomer() {
        let registry = Registry::new();
        let silent = registry.register(LOCAL, Some(2)).unwrap();
        let working = registry.register(LOCAL, Some(2)).unwrap();
        let _request = working.begin();
        let newcomer = registry.register(LOCAL, Some(2));
        assert!(newcomer.is_some(), "the silent one made room");
        assert!(silent.cut() && !working.cut());
        // A trusted proxy has no share.
        let many: Vec<_> = (0..10)
            .map(|_| registry.register(LOCAL, None).unwrap())
            .collect();
        assert!(many.iter().all(|c| !c.cut()));
    }

    #[test]
    fn the_slowest_body_is_closed_when_none_is_idle() {
        let registry = Registry::new();
        let newcomer = registry.register(LOCAL, None).unwrap();
        let _n = newcomer.begin();
        let fast = registry.register(LOCAL, None).unwrap();
        let slow = registry.register(LOCAL, None).unwrap();
        let (_f, _s) = (fast.begin(), slow.begin());
        let (fast_body, slow_body) = (fast.body_watch(), slow.body_watch());
        fast_body.begin();
        slow_body.begin();
        fast_body.read(1 << 20);
        slow_body.read(1);
        assert!(registry.make_room(&newcomer));
        assert!(slow.cut() && !fast.cut());
        fast_body.end();
        assert!(
            !registry.make_room(&newcomer),
            "a request at work (its body read) is never closed for room"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_evicted_before_a_busy_one() {
        let registry = Registry::new();
        let busy = registry.register(LOCAL, Some(8)).unwrap();
        let _request = busy.begin();
        let newcomer = registry.register(LOCAL, Some(8)).unwrap();
        assert!(
            !registry.make_room(&newcomer),
            "the only other connection is busy"
        );
        let idle = registry.register(LOCAL, Some(8)).unwrap();
        assert!(registry.make_room(&newcomer));
        // The idle one was told; its closing resolves at once.
        let why = tokio::time::timeout(
            Duration::from_secs(1),
            idle.closing(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .await
        .unwrap();
        assert_eq!(why, Close::Told);
        assert!(
            !registry.make_room(&newcomer),
            "an evicted connection is not evicted twice"
        );
    }
}
