//! `FileKey::parse`: never panics, and an accepted key never leaves `files/{user}/`. The files
//! list's cursor (`after`) is parsed from the same input: never a panic, and an accepted
//! cursor names one of its owner's keys and prints back as it was read.
#![no_main]

use image_gateway::auth::UserId;
use image_gateway::store::{sanitize_name, FileCursor, FileKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = FileKey::parse(raw) {
        let parts: Vec<&str> = key.as_str().split('/').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "files");
        assert_eq!(parts[1], key.owner().as_str());
        assert!(parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".."));
        assert!(key
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'%'));
    }
    let owner = UserId::new("fuzz").unwrap();
    if let Ok(cursor) = FileCursor::parse_owned(raw, &owner) {
        assert_eq!(cursor.key().owner(), &owner);
        let reread = FileCursor::parse_owned(&cursor.to_string(), &owner).unwrap();
        assert_eq!(reread, cursor);
    }
    // Any file name sanitizes into a name a key accepts.
    let name = sanitize_name(raw);
    let key = format!("files/fuzz/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_{name}");
    assert!(FileKey::parse(&key).is_some(), "{raw:?} -> {name:?}");
});
