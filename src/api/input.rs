//! Validation of untrusted request input: query parameters, usernames, text bodies.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::{AppError, Result};
use crate::domain::Username;
use crate::reports::idempotency::{MAX_KEY_LEN, valid_key};

/// The decoded query string, kept as pairs so repeated parameters can be refused.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        let raw = parts.uri.query().unwrap_or("");
        Ok(Query(
            form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

impl Query {
    /// The value of `name`, `None` when absent; 400 when given more than once.
    pub fn single(&self, name: &str) -> Result<Option<&str>> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(AppError::BadRequest(format!(
                "query parameter '{name}' must be given only once"
            )));
        }
        Ok(first)
    }

    /// The value of `name`; 400 when absent, empty or repeated.
    pub fn required(&self, name: &str) -> Result<&str> {
        match self.single(name)? {
            None => Err(AppError::BadRequest(format!(
                "missing query parameter '{name}'"
            ))),
            Some("") => Err(AppError::BadRequest(format!(
                "query parameter '{name}' must not be empty"
            ))),
            Some(v) => Ok(v),
        }
    }

    /// The `username` parameter, validated.
    pub fn username(&self) -> Result<Username> {
        Username::parse(self.required("username")?).map_err(AppError::BadRequest)
    }
}

/// Reads a non-empty UTF-8 text body of at most `limit` bytes. A body announced larger than
/// the limit is refused before it is read; one that turns out larger stops being read at the
/// limit. Either way 413.
pub async fn text_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<String> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit) {
        return Err(AppError::PayloadTooLarge { limit });
    }
    let bytes = Limited::new(body, limit as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                AppError::PayloadTooLarge { limit }
            } else {
                AppError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Err(AppError::BadRequest(
            "request body must not be empty".to_owned(),
        ));
    }
    String::from_utf8(bytes.into()).map_err(|e| {
        AppError::BadRequest(format!(
            "request body must be UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The `Idempotency-Key` header, if any: a structured-field string (`"abc"`, with `\"` and
/// `\\` escapes) or the bare key; 1 to [`MAX_KEY_LEN`] printable ASCII characters once
/// unquoted. 400 when repeated, empty, too long or not of that form.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        AppError::BadRequest(format!(
            "Idempotency-Key {why}: expected 1 to {MAX_KEY_LEN} printable ASCII characters, \
             bare or as a quoted string"
        ))
    };
    if values.next().is_some() {
        return Err(bad("given more than once"));
    }
    let raw = value
        .to_str()
        .map_err(|_| bad("is not ASCII"))?
        .trim_matches([' ', '\t']);
    let key = match raw.strip_prefix('"') {
        Some(quoted) => unquote(quoted).ok_or_else(|| bad("is not a valid quoted string"))?,
        None if raw.contains('"') => return Err(bad("has a stray quote")),
        None => raw.to_owned(),
    };
    if !valid_key(&key) {
        return Err(bad("is empty, too long or not printable"));
    }
    Ok(Some(key))
}

/// The content of a structured-field string after its opening quote; `None` unless it ends
/// with the closing quote and escapes only `"` and `\`.
fn unquote(quoted: &str) -> Option<String> {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => out.push(escaped),
                _ => return None,
            },
            '"' => return chars.next().is_none().then_some(out),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(values: &[&[u8]]) -> Result<Option<String>> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        idempotency_key(&headers)
    }

    #[test]
    fn idempotency_keys_bare_or_quoted() {
        assert_eq!(key_of(&[]).unwrap(), None);
        assert_eq!(key_of(&[b"abc-1"]).unwrap().as_deref(), Some("abc-1"));
        assert_eq!(key_of(&[b"\"abc 1\""]).unwrap().as_deref(), Some("abc 1"));
        assert_eq!(
            key_of(&[br#""a\"b\\c""#]).unwrap().as_deref(),
            Some(r#"a"b\c"#)
        );
        assert_eq!(key_of(&[b" k "]).unwrap().as_deref(), Some("k"));
        let long = "k".repeat(MAX_KEY_LEN);
        assert_eq!(key_of(&[long.as_bytes()]).unwrap(), Some(long.clone()));
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"abc",
            b"\"a\"b\"",
            b"a\"b",
            br#""a\nb""#,
            "\u{e9}t\u{e9}".as_bytes(),
            format!("{long}k").as_bytes(),
        ] {
            let err = key_of(&[bad]).unwrap_err();
            assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(key_of(&[b"a", b"b"]).unwrap_err().status(), 400);
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let q = Query(vec![
            ("username".into(), "a".into()),
            ("username".into(), "b".into()),
        ]);
        assert!(q.single("username").is_err());
        assert!(q.single("event").unwrap().is_none());
        let q = Query(vec![("username".into(), String::new())]);
        assert!(q.required("username").is_err());
    }
}
