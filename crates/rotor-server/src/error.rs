//! The server crate's one error type, and how an error is told to a person (with its causes).

/// Errors of the server crate.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] rotor_core::CoreError),
    #[error(transparent)]
    Postgres(#[from] rotor_store_postgres::PgError),
    #[error("redis {addresses}")]
    Redis {
        /// The addresses tried, passwords redacted.
        addresses: String,
        #[source]
        source: rotor_broker_redis::RedisError,
    },
    #[error("{0}")]
    Cli(String),
}

/// An error with its causes, `outer: cause: root cause`, for a person to read (a cause
/// that its outer error already spells out is not repeated).
pub fn report(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_carry_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner: refused")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped: {0}")]
        struct Repeats(#[source] Inner);
        assert_eq!(report(&Outer(Inner)), "cannot connect: inner: refused");
        assert_eq!(report(&Repeats(Inner)), "wrapped: inner: refused");
    }
}
