//! A job's events as OpenAI's image stream writes them, and the log a running job keeps of
//! them so a client whose stream broke can attach again and lose nothing.

use std::sync::Mutex;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use tokio::sync::watch;

use super::record::{Echo, JobRecord};
use crate::answer::usage;
use crate::clock::unix_now;
use crate::job::{EditParams, Operation};
use crate::{GatewayError, ResponseBody};

/// A `text/event-stream` answer with `body`, which proxies are asked not to buffer.
pub(crate) fn event_stream(body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Asks nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The frame of a job that failed once its stream had started: `data: {"error": {...}}`,
/// which the SDKs raise.
pub(crate) fn error_frame(error: &GatewayError) -> Bytes {
    error_frame_of(&String::from_utf8_lossy(&error.to_json()))
}

fn error_frame_of(envelope: &str) -> Bytes {
    Bytes::from(format!("data: {envelope}\n\n"))
}

/// What every event of one job repeats: its names and the parameters it echoes.
pub(crate) struct Names {
    prefix: &'static str,
    echo: Echo,
}

impl Names {
    pub(crate) fn of(operation: Operation, params: &EditParams) -> Names {
        Names {
            prefix: operation.event_prefix(),
            echo: Echo::of(params),
        }
    }

    pub(crate) fn of_record(record: &JobRecord) -> Names {
        Names {
            prefix: record.operation.event_prefix(),
            echo: record.echo.clone(),
        }
    }

    pub(crate) fn partial(&self, index: u8, bytes: &[u8]) -> Bytes {
        self.event(
            "partial_image",
            bytes,
            &format!(",\"partial_image_index\":{index}"),
        )
    }

    /// A completed image, billed as one image ([`usage`]).
    pub(crate) fn completed(&self, generation_id: String, bytes: &[u8]) -> Bytes {
        let extra = format!(
            ",\"usage\":{},\"picklyone_generation_id\":\"{generation_id}\"",
            usage(1)
        );
        self.event("completed", bytes, &extra)
    }

    /// One event: the JSON is written by hand, as every value in it is base64, a number,
    /// a UUID or one of the gateway's own words, none of which need escaping.
    fn event(&self, kind: &str, bytes: &[u8], extra: &str) -> Bytes {
        use base64::Engine;
        use std::fmt::Write;
        let prefix = self.prefix;
        let encoded = base64::encoded_len(bytes.len(), true).unwrap_or(0);
        let mut frame = String::with_capacity(encoded + 256 + extra.len());
        // Writing to a String cannot fail.
        let _ = write!(
            frame,
            "event: {prefix}.{kind}\ndata: {{\"type\":\"{prefix}.{kind}\",\"b64_json\":\""
        );
        // Encoded straight into the frame: the image's base64 is made once, not copied.
        base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut frame);
        let echo = &self.echo;
        let _ = write!(
            frame,
            "\",\"created_at\":{},\"size\":\"{}\",\"quality\":\"{}\",\"background\":\"{}\",\
             \"output_format\":\"{}\"{extra}}}\n\n",
            unix_now(),
            echo.size,
            echo.quality,
            echo.background,
            echo.output_format,
        );
        Bytes::from(frame)
    }
}

/// The SSE id of one event of a job. Ids order the events the same way in every process:
/// partial images, then completed images, then the error frame, so `Last-Event-ID` resumes
/// after the same event whether the job still runs here or its events are rebuilt from
/// its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EventId {
    Partial(u8),
    Completed(u32),
    Error,
}

impl EventId {
    /// The id as a `Last-Event-ID` header names it; anything else resumes from the start.
    pub(crate) fn parse(raw: &str) -> Option<EventId> {
        let (kind, index) = raw.split_once('-').unwrap_or((raw, ""));
        match kind {
            "partial" => index.parse().ok().map(EventId::Partial),
            "completed" => index.parse().ok().map(EventId::Completed),
            "error" if index.is_empty() => Some(EventId::Error),
            _ => None,
        }
    }

    /// The frame with its `id:` line first.
    pub(crate) fn frame(self, frame: &[u8]) -> Bytes {
        let id = match self {
            EventId::Partial(i) => format!("id: partial-{i}\n"),
            EventId::Completed(i) => format!("id: completed-{i}\n"),
            EventId::Error => "id: error\n".to_owned(),
        };
        let mut out = Vec::with_capacity(id.len() + frame.len());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(frame);
        Bytes::from(out)
    }
}

/// The events of a job running in this process, kept until it ends (at most its partial
/// images and its `n` completed images), so any number of readers can attach at any time.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: Mutex<(Vec<(EventId, Bytes)>, bool)>,
    /// Bumped at every change; readers wait on it.
    changed: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            events: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl EventLog {
    fn events(&self) -> std::sync::MutexGuard<'_, (Vec<(EventId, Bytes)>, bool)> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an event (already framed, without its id).
    pub(crate) fn push(&self, id: EventId, frame: Bytes) {
        self.events().0.push((id, frame));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether any reader follows the log now.
    pub(crate) fn followed(&self) -> bool {
        self.changed.receiver_count() > 0
    }

    /// Marks the log complete: readers end once they have read it all.
    pub(crate) fn end(&self) {
        self.events().1 = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// The events after `after`, and whether the log is complete.
    fn after(&self, after: Option<EventId>) -> (Vec<(EventId, Bytes)>, bool) {
        let events = self.events();
        let newer = events
            .0
            .iter()
            .filter(|(id, _)| after.is_none_or(|after| *id > after))
            .cloned()
            .collect();
        (newer, events.1)
    }

    /// Sends the events after `after`, then every later one as it comes, to `frames` until
    /// the log is complete or the reader leaves; a comment goes out whenever nothing else
    /// has for `keepalive`. Answers the last event sent, once the log is complete (the
    /// completed images of a job nobody followed at its end are not in it: the caller
    /// sends those from the record), or `Err` when the reader left.
    pub(crate) async fn follow(
        &self,
        mut after: Option<EventId>,
        frames: &tokio::sync::mpsc::Sender<Bytes>,
        keepalive: std::time::Duration,
    ) -> Result<Option<EventId>, ()> {
        let mut changed = self.changed.subscribe();
        loop {
            changed.mark_unchanged();
            let (events, complete) = self.after(after);
            for (id, frame) in events {
                frames.send(id.frame(&frame)).await.map_err(drop)?;
                after = Some(id);
            }
            if complete {
                return Ok(after);
            }
            loop {
                tokio::select! {
                    moved = changed.changed() => {
                        moved.map_err(drop)?;
                        break;
                    }
                    () = tokio::time::sleep(keepalive) => {
                        let comment = Bytes::from_static(b": keep-alive\n\n");
                        frames.send(comment).await.map_err(drop)?;
                    }
                    () = frames.closed() => return Err(()),
                }
            }
        }
    }
}

/// The events of an ended job, rebuilt from its record: one completed event per image
/// (`images`, in order), or its error frame.
pub(crate) fn ended_events(
    record: &JobRecord,
    images: &[(String, Bytes)],
) -> Vec<(EventId, Bytes)> {
    let names = Names::of_record(record);
    let mut events: Vec<(EventId, Bytes)> = (0u32..)
        .zip(images)
        .map(|(i, (id, bytes))| (EventId::Completed(i), names.completed(id.clone(), bytes)))
        .collect();
    if let Some(error) = &record.error {
        events.push((EventId::Error, error_frame_of(error)));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_partials_before_completed_before_the_error() {
        let ids = [
            "partial-0",
            "partial-2",
            "completed-0",
            "completed-1",
            "error",
        ];
        let parsed: Vec<EventId> = ids.iter().map(|i| EventId::parse(i).unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{parsed:?}");
        for bad in ["", "partial", "partial-x", "error-1", "completed--1", "x-1"] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_reader_attached_late_gets_what_it_missed_then_the_rest() {
        let log = std::sync::Arc::new(EventLog::default());
        log.push(EventId::Partial(0), Bytes::from_static(b"a\n\n"));
        log.push(EventId::Partial(1), Bytes::from_static(b"b\n\n"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let follower = {
            let log = log.clone();
            tokio::spawn(async move {
                let keepalive = std::time::Duration::from_secs(60);
                log.follow(Some(EventId::Partial(0)), &tx, keepalive).await
            })
        };
        assert_eq!(rx.recv().await.unwrap(), "id: partial-1\nb\n\n");
        log.push(EventId::Completed(0), Bytes::from_static(b"c\n\n"));
        assert_eq!(rx.recv().await.unwrap(), "id: completed-0\nc\n\n");
        log.end();
        let last = follower.await.unwrap();
        assert_eq!(last, Ok(Some(EventId::Completed(0))), "the last event sent");
        assert!(rx.recv().await.is_none(), "the reader ends with the log");
    }
}
