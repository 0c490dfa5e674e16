use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{sleep, Instant, Sleep};

use super::conn::BodyWatch;
use crate::body::BodyTimeout;

/// How long a body is given before its rate is judged.
const RATE_GRACE: Duration = Duration::from_secs(10);

/// How often a body that is waited for is judged again.
const RATE_EVERY: Duration = Duration::from_secs(5);

pin_project! {
    /// A request body that must be read to its end within a deadline, and (when a minimum
    /// rate is set) arrive at that rate once its first seconds are over; past either,
    /// reading fails with [`BodyTimeout`]. It bounds how long a client trickling its body
    /// can hold a connection and the memory behind it.
    ///
    /// The rate counts only the time spent waiting for the client: a reader that pauses
    /// between frames (to write what it read) is not the client's slowness.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        #[pin]
        judged: Sleep,
        pace: Pace,
    }

    impl<B> PinnedDrop for TimedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(watch) = &this.project().pace.watch {
                watch.end();
            }
        }
    }
}

/// What a [`TimedBody`] knows of its client's pace.
struct Pace {
    /// Bytes per second the client must keep up once [`RATE_GRACE`] of waiting is over; 0
    /// for none.
    min_rate: u64,
    read: u64,
    /// Time spent waiting for frames, not counting the wait under way.
    waited: Duration,
    /// Since when the reader waits for the next frame.
    waiting_since: Option<Instant>,
    begun: bool,
    watch: Option<BodyWatch>,
}

impl Pace {
    fn waited_now(&self, now: Instant) -> Duration {
        self.waited + self.waiting_since.map_or(Duration::ZERO, |t| now - t)
    }

    /// Whether the client, waited for this long, fell below the minimum rate.
    fn too_slow(&self, now: Instant) -> bool {
        let waited = self.waited_now(now);
        self.min_rate > 0
            && waited >= RATE_GRACE
            && u128::from(self.read) * 1000 < u128::from(self.min_rate) * waited.as_millis()
    }
}

impl<B> TimedBody<B> {
    /// `inner`, to be read within `limit` from now.
    pub fn new(inner: B, limit: Duration) -> Self {
        TimedBody {
            inner,
            deadline: sleep(limit),
            judged: sleep(RATE_GRACE),
            pace: Pace {
                min_rate: 0,
                read: 0,
                waited: Duration::ZERO,
                waiting_since: None,
                begun: false,
                watch: None,
            },
        }
    }

    /// The same body, failing once its client, after 10 s of waiting for it, has sent
    /// fewer than `bytes_per_sec` on average over the time waited (0: no minimum).
    pub fn min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.pace.min_rate = bytes_per_sec;
        self
    }

    /// The same body, reporting its reading to its connection's place in the registry.
    pub(super) fn watched(mut self, watch: BodyWatch) -> Self {
        self.pace.watch = Some(watch);
        self
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body,
    B::Error: Into<crate::BoxError>,
{
    type Data = B::Data;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let pace = &mut *this.pace;
        if !pace.begun {
            pace.begun = true;
            if let Some(watch) = &pace.watch {
                watch.begin();
            }
        }
        let now = Instant::now();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            pace.waited = pace.waited_now(now);
            pace.waiting_since = None;
            match &frame {
                Some(Ok(frame)) => {
                    let bytes = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                    pace.read += bytes;
                    if let Some(watch) = &pace.watch {
                        watch.read(bytes);
                    }
                }
                _ => {
                    if let Some(watch) = &pace.watch {
                        watch.end();
                    }
                }
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        pace.waiting_since.get_or_insert(now);
        if this.deadline.poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout::new()))));
        }
        if pace.min_rate > 0 {
            while this.judged.as_mut().poll(cx).is_ready() {
                if pace.too_slow(Instant::now()) {
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout::new()))));
                }
                this.judged.as_mut().reset(Instant::now() + RATE_EVERY);
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    /// A body whose client sends `chunk` bytes every second, `chunks` times, read through a
    /// `TimedBody` with a minimum rate of 1000 B/s: `Ok(bytes read)`, or `Err(seconds)` when
    /// it was cut, on the paused clock.
    async fn read_paced(chunk: usize, chunks: usize) -> Result<usize, u64> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for _ in 0..chunks {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.send(Bytes::from(vec![0u8; chunk])).await.is_err() {
                    return;
                }
            }
        });
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(data)), rx))
        });
        let started = Instant::now();
        let body = TimedBody::new(StreamBody::new(frames), Duration::from_secs(120)).min_rate(1000);
        let mut body = std::pin::pin!(body);
        let mut read = 0;
        while let Some(frame) = body.as_mut().frame().await {
            match frame {
                Ok(frame) => read += frame.into_data().map_or(0, |d| d.len()),
                Err(error) => {
                    assert!(error.is::<BodyTimeout>(), "{error}");
                    return Err(started.elapsed().as_secs());
                }
            }
        }
        Ok(read)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_just_over_the_minimum_rate_is_read_and_one_just_under_is_cut() {
        assert_eq!(read_paced(1200, 30).await, Ok(36_000));
        let cut = read_paced(800, 30).await.unwrap_err();
        assert!((10..=16).contains(&cut), "cut after {cut} s");
    }

    #[test]
    fn a_client_is_judged_on_the_time_it_was_waited_for() {
        let mut pace = Pace {
            min_rate: 1000,
            read: 5_000,
            waited: Duration::from_secs(9),
            waiting_since: None,
            begun: true,
            watch: None,
        };
        let now = Instant::now();
        assert!(!pace.too_slow(now), "still in its grace");
        pace.waited = Duration::from_secs(10);
        assert!(pace.too_slow(now), "5,000 bytes in 10 s waited is 500 B/s");
        pace.read = 10_000;
        assert!(!pace.too_slow(now));
        pace.min_rate = 0;
        pace.read = 0;
        assert!(!pace.too_slow(now), "no minimum");
    }
}
