//! Keyset pagination shared by every list RPC: a page size (default 100, at most 1,000), an
//! opaque token (the hex of the last key returned), and trimming the one extra row a query
//! fetches to know whether another page exists.

use crate::status::RequestError;

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1_000;

/// The page size asked for; 0 means the default.
pub fn page_size(asked: u32) -> Result<i64, RequestError> {
    match asked {
        0 => Ok(i64::from(DEFAULT_PAGE)),
        n if n <= MAX_PAGE => Ok(i64::from(n)),
        _ => Err(RequestError::invalid(
            "page_size",
            format!("page_size must be 1..{MAX_PAGE}"),
        )),
    }
}

/// The key to continue after; empty for the first page.
pub fn after(token: &str) -> Result<String, RequestError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            RequestError::invalid("page_token", "page_token is not one this service issued")
        })
}

/// Trims rows fetched with `LIMIT size + 1` to `size`, and gives the next page's token (empty
/// on the last page).
pub fn paginate<T>(mut rows: Vec<T>, size: i64, key: impl Fn(&T) -> &str) -> (Vec<T>, String) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let more = rows.len() > size;
    rows.truncate(size);
    let token = match (more, rows.last()) {
        (true, Some(last)) => hex::encode(key(last)),
        _ => String::new(),
    };
    (rows, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_tokens_and_trimming() {
        assert_eq!(page_size(0).ok(), Some(100));
        assert_eq!(page_size(1_000).ok(), Some(1_000));
        assert!(page_size(1_001).is_err());
        assert_eq!(after("").ok(), Some(String::new()));
        assert!(after("zz").is_err());
        let (rows, token) = paginate(vec!["a", "b", "c"], 2, |s| s);
        assert_eq!(
            (rows, after(&token).ok()),
            (vec!["a", "b"], Some("b".to_owned()))
        );
        let (rows, token) = paginate(vec!["a"], 2, |s| s);
        assert_eq!((rows, token), (vec!["a"], String::new()));
    }
}
