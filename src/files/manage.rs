use http::{header, HeaderValue, Response};

use crate::auth::Principal;
use crate::store::{content_type_of, FileKey, FileStore};
use crate::{GatewayError, ResponseBody};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// `GET /api/v1/files?limit=&after=`: the caller's files, a page at a time.
pub(super) async fn list(
    query: Option<&str>,
    store: &dyn FileStore,
    principal: &Principal,
) -> Result<Response<ResponseBody>, GatewayError> {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| {
            GatewayError::invalid_request("malformed percent-encoding in the query", None)
        })?;
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| {
                        GatewayError::invalid_request(
                            format!("limit must be an integer from 1 to {MAX_PAGE}"),
                            Some("limit"),
                        )
                    })?;
            }
            "after" => after = Some(FileKey::parse_owned(&value, principal.user_id())?),
            _ => {}
        }
    }
    let page = store
        .list(principal.user_id(), after.as_ref(), limit)
        .await?;
    let next_after = page
        .has_more
        .then(|| page.files.last().map(|f| f.key.to_string()))
        .flatten();
    let data: Vec<_> = page
        .files
        .iter()
        .map(|f| {
            serde_json::json!({
                "key": f.key.as_str(),
                "size": f.size,
                "created": f.created,
            })
        })
        .collect();
    let body = serde_json::json!({
        "data": data,
        "has_more": page.has_more,
        "next_after": next_after,
    });
    Ok(crate::response::json_ok(&body))
}

/// `GET /api/v1/files/{key}`: the file's bytes.
pub(super) async fn get(
    raw_key: &str,
    store: &dyn FileStore,
    principal: &Principal,
) -> Result<Response<ResponseBody>, GatewayError> {
    let key = own_key(raw_key, principal)?;
    let bytes = store.get(&key).await?.ok_or(GatewayError::ImageNotFound)?;
    let content_type = content_type_of(&bytes);
    let mut response = Response::new(ResponseBody::from(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// `DELETE /api/v1/files/{key}`.
pub(super) async fn delete(
    raw_key: &str,
    store: &dyn FileStore,
    principal: &Principal,
) -> Result<Response<ResponseBody>, GatewayError> {
    let key = own_key(raw_key, principal)?;
    if !store.delete(&key).await? {
        return Err(GatewayError::ImageNotFound);
    }
    let body = serde_json::json!({ "deleted": true, "key": key.as_str() });
    Ok(crate::response::json_ok(&body))
}

/// A key from the path: decoded once, then parsed. Another user's key is answered as if it
/// did not exist, so the API never tells a caller what others store.
fn own_key(raw: &str, principal: &Principal) -> Result<FileKey, GatewayError> {
    let decoded = percent_decode(raw).ok_or(GatewayError::InvalidImageKey)?;
    let key = FileKey::parse(&decoded).ok_or(GatewayError::InvalidImageKey)?;
    if key.owner() == principal.user_id() {
        Ok(key)
    } else {
        Err(GatewayError::ImageNotFound)
    }
}

/// One round of percent-decoding; `None` for a broken escape or a result that is not UTF-8.
/// `FileKey` refuses any `%` left over, so a double-encoded key never gets through.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_once() {
        assert_eq!(percent_decode("files%2Fa").as_deref(), Some("files/a"));
        assert_eq!(percent_decode("%252e").as_deref(), Some("%2e"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%C0%AE"), None);
    }
}
