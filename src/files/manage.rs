use http::{header, HeaderValue, Response};

use crate::auth::Principal;
use crate::page::{percent_decode, PageQuery};
use crate::store::{content_type_of, FileCursor, FileKey, FileStore, Quota};
use crate::{GatewayError, ResponseBody};

/// `GET /api/v1/files?limit=&after=`: the caller's files, newest first, a page at a time;
/// `after` is the previous page's `next_after`. The first page also says what the caller
/// stores in all and its quota (`null` where unlimited).
pub(super) async fn list(
    query: Option<&str>,
    store: &dyn FileStore,
    quota: Quota,
    principal: &Principal,
) -> Result<Response<ResponseBody>, GatewayError> {
    let query = PageQuery::parse(query)?;
    let after = query
        .after
        .map(|after| FileCursor::parse_owned(&after, principal.user_id()))
        .transpose()?;
    let page = store
        .list(principal.user_id(), after.as_ref(), query.limit)
        .await?;
    let next_after = page.next().map(|cursor| cursor.to_string());
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
    let mut body = serde_json::json!({
        "data": data,
        "has_more": page.has_more,
        "next_after": next_after,
    });
    if after.is_none() {
        let used = store.usage(principal.user_id()).await?;
        body["usage"] = serde_json::json!({"bytes": used.bytes, "files": used.files});
        body["quota"] = serde_json::json!({"bytes": quota.bytes, "files": quota.files});
    }
    Ok(crate::body::json_ok(&body))
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
    Ok(crate::body::json_ok(&body))
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
