use std::fmt;
use std::sync::Arc;

/// A user id: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
///
/// The alphabet is narrow because the id is a segment of every file key
/// (`files/{user_id}/...`), so it must never carry a separator or a dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

/// The error of [`UserId::new`] for an id outside the alphabet or length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUserId(());

impl fmt::Display for InvalidUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user id is 1 to 64 characters of A-Z a-z 0-9 _ -")
    }
}

impl std::error::Error for InvalidUserId {}

impl UserId {
    /// Checks the alphabet and length.
    pub fn new(id: &str) -> Result<Self, InvalidUserId> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(UserId(Arc::from(id)))
        } else {
            Err(InvalidUserId(()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
