// Its items are `pub` for the fuzz targets, which see the module only under `--cfg fuzzing`.
#![cfg_attr(not(fuzzing), allow(unreachable_pub))]

//! Reading an upstream's `text/event-stream` answer: bytes in, events out, within a bound.

use bytes::{Buf, BytesMut};

/// One server-sent event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` fields, joined by newlines.
    pub data: String,
}

/// Splits an event stream into [`SseEvent`]s as its bytes arrive. Lines may end in `\n`,
/// `\r\n` or `\r`; comments (`:`) and unknown fields are skipped. An event (or a line) that
/// grows past the bound is an error, so a stream that never ends its event cannot grow the
/// buffer without limit.
#[derive(Debug)]
pub struct SseReader {
    buffer: BytesMut,
    pending: SseEvent,
    max_event: usize,
}

/// An event over the reader's bound.
#[derive(Debug, PartialEq, Eq)]
pub struct SseTooLarge;

impl SseReader {
    /// A reader whose events (and unfinished lines) are at most `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        SseReader {
            buffer: BytesMut::new(),
            pending: SseEvent::default(),
            max_event,
        }
    }

    /// Takes `chunk` and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseTooLarge> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A `\r` that ends the buffer may be half of a `\r\n`: wait for the next byte.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let line = self.buffer.split_to(end);
            let crlf = self.buffer[0] == b'\r' && self.buffer.get(1) == Some(&b'\n');
            self.buffer.advance(if crlf { 2 } else { 1 });
            if line.is_empty() {
                if !self.pending.data.is_empty() || self.pending.event.is_some() {
                    events.push(std::mem::take(&mut self.pending));
                }
                continue;
            }
            self.field(&line)?;
        }
        if self.buffer.len() + self.pending.data.len() > self.max_event {
            return Err(SseTooLarge);
        }
        Ok(events)
    }

    fn field(&mut self, line: &[u8]) -> Result<(), SseTooLarge> {
        let text = String::from_utf8_lossy(line);
        let (name, value) = match text.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match name {
            "data" => {
                if self.pending.data.len() + value.len() + 1 > self.max_event {
                    return Err(SseTooLarge);
                }
                if !self.pending.data.is_empty() {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
            }
            "event" => self.pending.event = Some(value.chars().take(128).collect()),
            // Comments (an empty name), `id`, `retry` and unknown fields.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(stream: &[u8], chunk: usize) -> Vec<SseEvent> {
        let mut reader = SseReader::new(1024);
        stream
            .chunks(chunk)
            .flat_map(|c| reader.push(c).unwrap())
            .collect()
    }

    #[test]
    fn events_come_out_whole_in_any_chunking_and_line_ending() {
        let stream = b": keep-alive\n\nevent: image_edit.partial_image\ndata: {\"a\":1}\n\n\
                       event: x\r\ndata: line1\r\ndata:line2\r\n\r\ndata: last\r\r\n";
        for chunk in 1..stream.len() {
            let events = read_all(stream, chunk);
            assert_eq!(events.len(), 3, "chunk {chunk}");
            assert_eq!(events[0].event.as_deref(), Some("image_edit.partial_image"));
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].data, "line1\nline2");
            assert_eq!(
                events[2],
                SseEvent {
                    event: None,
                    data: "last".into()
                }
            );
        }
    }

    #[test]
    fn an_event_past_the_bound_is_an_error() {
        let mut reader = SseReader::new(16);
        assert_eq!(reader.push(b"data: 0123456789abcdef0123"), Err(SseTooLarge));
        let mut reader = SseReader::new(16);
        reader.push(b"data: 0123456789\n").unwrap();
        assert_eq!(reader.push(b"data: 0123456789\n"), Err(SseTooLarge));
    }
}
