//! [`FileKey`]: a storage key that was checked once, before it touches any store.

use std::fmt;

use uuid::Uuid;

use crate::auth::UserId;
use crate::GatewayError;

/// The longest file name part of a key.
const MAX_NAME: usize = 200;
/// Longer than any valid key (`files/` + 64 + `/` + 36 + `_` + 200), so oversize input is
/// refused before it is scanned.
const MAX_KEY: usize = 320;

/// A key of the shape `files/{user_id}/{uuid}_{name}`.
///
/// A `FileKey` only exists if it is ASCII, holds no `..`, `\`, `%`, control or NUL byte, no
/// leading `/` and no empty segment, has exactly three segments, its uuid is a hyphenated
/// UUID and its name uses only `A-Z a-z 0-9 . _ -` (1 to 200 characters, not `.` or `..`).
/// So a `FileKey` joined under a store's root can never leave `files/{user_id}/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    key: String,
    owner: UserId,
}

impl FileKey {
    /// Parses a key sent by `owner`. Anything malformed, and any key of another user, is
    /// `400 invalid_image_key` with one message that never says whether a file exists.
    pub fn parse_owned(raw: &str, owner: &UserId) -> Result<FileKey, GatewayError> {
        let key = FileKey::parse(raw).ok_or(GatewayError::InvalidImageKey)?;
        if key.owner() == owner {
            Ok(key)
        } else {
            Err(GatewayError::InvalidImageKey)
        }
    }

    /// Parses a key without an ownership check; `None` when it breaks any rule.
    pub fn parse(raw: &str) -> Option<FileKey> {
        if raw.len() > MAX_KEY
            || raw.contains("..")
            || !raw
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'%')
        {
            return None;
        }
        let mut segments = raw.split('/');
        let (Some("files"), Some(user), Some(file), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return None;
        };
        let owner = UserId::new(user).ok()?;
        let (uuid, name) = file.split_at_checked(36)?;
        let name = name.strip_prefix('_')?;
        let uuid_ok = uuid.as_bytes().get(8) == Some(&b'-') && Uuid::try_parse(uuid).is_ok();
        if !uuid_ok || !valid_name(name) {
            return None;
        }
        Some(FileKey {
            key: raw.to_owned(),
            owner,
        })
    }

    /// A fresh key for a file `owner` uploads, its name passed through [`sanitize_name`].
    pub fn new(owner: &UserId, id: Uuid, filename: &str) -> FileKey {
        FileKey {
            key: format!(
                "files/{owner}/{}_{}",
                id.as_hyphenated(),
                sanitize_name(filename)
            ),
            owner: owner.clone(),
        }
    }

    /// The key as text, e.g. `files/alice/0b7e..._anchor.jpg`.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The user the key belongs to.
    pub fn owner(&self) -> &UserId {
        &self.owner
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileKey({})", self.key)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Maps a client's file name into the key alphabet: every other character becomes `_`, runs
/// of dots become one dot, the result is cut to 200 characters, and an empty or dot-only
/// result becomes `file`.
pub fn sanitize_name(raw: &str) -> String {
    // Only the last path component counts: clients send `C:\photos\a.jpg` or `dir/a.jpg`.
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name = String::with_capacity(base.len().min(MAX_NAME));
    for c in base.chars() {
        if name.len() == MAX_NAME {
            break;
        }
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
            c
        } else {
            '_'
        };
        if !(c == '.' && name.ends_with('.')) {
            name.push(c);
        }
    }
    if valid_name(&name) {
        name
    } else {
        "file".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11";

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn accepts_the_upload_shape() {
        let raw = format!("files/alice/{ID}_anchor.jpg");
        let key = FileKey::parse_owned(&raw, &alice()).unwrap();
        assert_eq!(key.as_str(), raw);
    }

    #[test]
    fn refuses_traversal_and_foreign_keys() {
        let bad = [
            format!("files/bob/{ID}_a.jpg"),
            format!("/files/alice/{ID}_a.jpg"),
            format!("files/alice/../{ID}_a.jpg"),
            format!("files/alice/{ID}_.."),
            format!("files/alice/{ID}_a/b.jpg"),
            format!("files/alice/{ID}_a%2e.jpg"),
            format!("files/alice/{ID}_a\\b.jpg"),
            format!("files/alice/{ID}_a\0.jpg"),
            format!("files//alice/{ID}_a.jpg"),
            format!("files/alice/{ID}_a.jpg/"),
            format!("files/alice/{ID}_"),
            format!("files/alice/{}_a.jpg", ID.replace('-', "")),
            format!("files/alice/{ID}_ａ.jpg"),
            "files/alice/x_a.jpg".to_owned(),
            "files/alice".to_owned(),
            String::new(),
        ];
        for raw in bad {
            assert_eq!(
                FileKey::parse_owned(&raw, &alice()).unwrap_err(),
                GatewayError::InvalidImageKey,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn sanitized_names_always_parse() {
        for raw in [
            "",
            ".",
            "..",
            "a b.jpg",
            "../../etc/passwd",
            "C:\\x\\y.png",
            "é.png",
            "....",
            &"x".repeat(500),
        ] {
            let key = FileKey::new(&alice(), Uuid::new_v4(), raw);
            assert!(FileKey::parse(key.as_str()).is_some(), "{raw:?} -> {key:?}");
        }
        assert_eq!(sanitize_name("my photo (1).JPG"), "my_photo__1_.JPG");
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("a..b"), "a.b");
    }
}
