//! [`error_chain`]: an error with all its sources, for the log. Apart from
//! [`error`](crate::error) so that the engines (relay, health, scaler) can log
//! without depending on the HTTP layer.

/// The error with all its sources, `outer: inner: ...`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
