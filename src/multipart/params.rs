//! Header values of the form `type; key=value; key="quoted value"` (`Content-Type`,
//! `Content-Disposition`).

/// The value's leading token (lowercased) and its parameters, keys lowercased, in order.
/// Quoted values may hold `;` and backslash escapes; a parameter without `=` is skipped.
pub(crate) fn parameters(value: &str) -> (String, Vec<(String, String)>) {
    let (essence, mut rest) = value.split_once(';').unwrap_or((value, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let key_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let key = rest[..key_end].trim().to_ascii_lowercase();
        if !rest[key_end..].starts_with('=') {
            rest = &rest[key_end..];
            continue;
        }
        rest = rest[key_end + 1..].trim_start_matches([' ', '\t']);
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '"' => {
                        end = at + 1;
                        break;
                    }
                    '\\' => text.extend(chars.next().map(|(_, c)| c)),
                    c => text.push(c),
                }
            }
            value = text;
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.push((key, value));
    }
    (essence.trim().to_ascii_lowercase(), params)
}

/// The first value of `key` (lowercase) among `params`.
pub(crate) fn parameter(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tokens_quoted_values_and_escapes() {
        let (essence, params) =
            parameters(r#"Form-Data; name="a;b"; filename="x\"y.png" ; flag; size=12"#);
        assert_eq!(essence, "form-data");
        assert_eq!(parameter(&params, "name").as_deref(), Some("a;b"));
        assert_eq!(parameter(&params, "filename").as_deref(), Some("x\"y.png"));
        assert_eq!(parameter(&params, "size").as_deref(), Some("12"));
        assert_eq!(parameter(&params, "flag"), None);
    }

    #[test]
    fn an_unclosed_quote_takes_the_rest() {
        let (_, params) = parameters("form-data; name=\"abc");
        assert_eq!(parameter(&params, "name").as_deref(), Some("abc"));
    }

    #[test]
    fn content_type_boundaries_as_clients_send_them() {
        for (header, boundary) in [
            ("multipart/form-data; boundary=abc123", "abc123"),
            ("multipart/form-data;boundary=\"--x y\"", "--x y"),
            (
                "Multipart/Form-Data; charset=utf-8; BOUNDARY=----WebKitFormBoundary7",
                "----WebKitFormBoundary7",
            ),
        ] {
            let (essence, params) = parameters(header);
            assert_eq!(essence, "multipart/form-data");
            assert_eq!(parameter(&params, "boundary").as_deref(), Some(boundary));
        }
    }
}
