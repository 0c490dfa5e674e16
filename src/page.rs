//! The `?limit=&after=` query of the paginated endpoints (files, usage).

use crate::GatewayError;

/// The page size when a query names none.
pub(crate) const DEFAULT_PAGE: usize = 20;
/// The largest page a query may ask for.
pub(crate) const MAX_PAGE: usize = 100;

/// A parsed page query: `limit` checked, `after` percent-decoded and left to its endpoint.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PageQuery {
    pub(crate) limit: usize,
    pub(crate) after: Option<String>,
}

impl PageQuery {
    /// Reads `limit` (1 to 100, default 20) and `after`; other parameters are ignored.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, GatewayError> {
        let mut page = PageQuery {
            limit: DEFAULT_PAGE,
            after: None,
        };
        for pair in query_pairs(query) {
            let (name, value) = pair?;
            match name {
                "limit" => {
                    page.limit = value
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
                "after" => page.after = Some(value),
                _ => {}
            }
        }
        Ok(page)
    }
}

/// A query's `name=value` pairs, each value percent-decoded once (a broken escape is a 400).
pub(crate) fn query_pairs(
    query: Option<&str>,
) -> impl Iterator<Item = Result<(&str, String), GatewayError>> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| {
                GatewayError::invalid_request("malformed percent-encoding in the query", None)
            })?;
            Ok((name, value))
        })
}

/// One round of percent-decoding; `None` for a broken escape or a result that is not UTF-8.
/// `FileKey` refuses any `%` left over, so a double-encoded key never gets through.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
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
    use super::*;

    #[test]
    fn page_queries() {
        assert_eq!(
            PageQuery::parse(Some("limit=5&after=files%2Fa&x=1")).unwrap(),
            PageQuery {
                limit: 5,
                after: Some("files/a".into())
            }
        );
        assert_eq!(PageQuery::parse(None).unwrap().limit, DEFAULT_PAGE);
        for bad in ["limit=0", "limit=101", "limit=x", "after=%zz"] {
            assert!(PageQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn decodes_once() {
        assert_eq!(percent_decode("files%2Fa").as_deref(), Some("files/a"));
        assert_eq!(percent_decode("%252e").as_deref(), Some("%2e"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%C0%AE"), None);
    }
}
