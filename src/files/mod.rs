//! The upload and file-management API: `POST /api/v1/upload`, `GET /api/v1/files`,
//! `GET /api/v1/files/{key}` and `DELETE /api/v1/files/{key}`.
//!
//! # Guarantees
//! - An upload is the multipart field `files` (or `files[]`), one to 5 parts, each at most
//!   10 MB by default ([`FileApi::max_file`]) and a JPEG, PNG, GIF or WebP by its bytes. A
//!   file that fails those checks is refused alone and listed in `errors`
//!   (`[{"filename", "code", "message"}]`) beside the stored ones; when every file fails,
//!   the first one's error is the answer. The files that pass are written all or nothing:
//!   a failed write or the quota stores none of them.
//! - Each file gets the key `files/{user_id}/{uuid}_{sanitised filename}`; the answer is
//!   `{"success": true, "uploaded": [{"key", "filename", "mimeType", "size", "isImage"}]}`.
//! - A caller only ever lists, reads or deletes their own files. A key of another user, or
//!   one that does not exist, is `404 IMAGE_NOT_FOUND` for reads and deletes; a malformed
//!   key is `400 invalid_image_key`. Keys in the path may be percent-encoded once.
//! - Listing is paginated: `?limit=` (1 to 100, default 20) and `?after=<last key>`; the
//!   answer is `{"data": [...], "has_more", "next_after"}`.

mod manage;
mod service;
mod upload;

pub use service::FileApi;
pub use upload::{DEFAULT_MAX_FILE_BYTES, MAX_FILES};

/// Path of the upload endpoint.
pub const UPLOAD_PATH: &str = "/api/v1/upload";
/// Path of the file listing; a file is at `{FILES_PATH}/{key}`.
pub const FILES_PATH: &str = "/api/v1/files";
