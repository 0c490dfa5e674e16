//! Storage of source images and outputs, by [`FileKey`].
//!
//! Every key that comes from a request is parsed into a [`FileKey`] before it reaches a store,
//! so a store only ever sees keys of the shape `files/{user_id}/{uuid}_{name}`.

mod key;

pub use key::{sanitize_name, FileKey};
