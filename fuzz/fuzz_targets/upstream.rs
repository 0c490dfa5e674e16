//! What an upstream answers: the first byte is the chunk size, the rest an event stream.
//! The reader never panics, never holds more than its bound, and every event's data is
//! read as OpenAI's image events or refused. The same bytes are read as a Gemini
//! `generateContent` answer, of a success and of a failure status: images, a refusal or an
//! error, never a panic.
#![no_main]

use image_gateway::backend::sse::SseReader;
use image_gateway::backend::{gemini, StreamEvent};
use libfuzzer_sys::fuzz_target;

const BOUND: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    for status in [200, 429] {
        if let Ok(images) = gemini::parse(status, stream) {
            assert!(!images.is_empty() && status == 200);
        }
    }
    let mut reader = SseReader::new(BOUND);
    for piece in stream.chunks(usize::from(chunk).max(1)) {
        let Ok(events) = reader.push(piece) else {
            return;
        };
        for event in events {
            assert!(event.data.len() <= BOUND);
            let _ = StreamEvent::parse(&event.data);
        }
    }
});
