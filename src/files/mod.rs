//! The upload and file-management API: `POST /api/v1/upload`, `GET /api/v1/files`,
//! `GET /api/v1/files/{key}` and `DELETE /api/v1/files/{key}`.
//!
//! # Guarantees
//! - An upload is the multipart field `files` (or `files[]`), one or several parts, each at
//!   most 25 MiB and a JPEG, PNG, GIF or WebP by its bytes. A batch is all or nothing: one bad
//!   part, or one failed write, and no file of that batch stays stored.
//! - Each file gets the key `files/{user_id}/{uuid}_{sanitised filename}`; the answer is
//!   `{"uploaded": [{"key", "size", "content_type", "filename"}]}`.
//! - A caller only ever lists, reads or deletes their own files. A key of another user, or
//!   one that does not exist, is `404 IMAGE_NOT_FOUND` for reads and deletes; a malformed
//!   key is `400 invalid_image_key`. Keys in the path may be percent-encoded once.
//! - Listing is paginated: `?limit=` (1 to 100, default 20) and `?after=<last key>`; the
//!   answer is `{"data": [...], "has_more", "next_after"}`.

mod manage;
mod service;
mod upload;

pub use service::FileApi;

/// Path of the upload endpoint.
pub const UPLOAD_PATH: &str = "/api/v1/upload";
/// Path of the file listing; a file is at `{FILES_PATH}/{key}`.
pub const FILES_PATH: &str = "/api/v1/files";
