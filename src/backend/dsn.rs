//! `postgresql://user:password@host:port/database` -> [`Dsn`]. A host that is a
//! directory (`%2Fvar%2Frun%2Fpostgresql`, or `?host=/var/run/postgresql` as libpq
//! reads it) means the server's Unix-domain socket in that directory.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl fmt::Debug for Dsn {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgresql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl Dsn {
    pub fn parse(s: &str) -> Result<Dsn, String> {
        let url = url::Url::parse(s).map_err(|e| format!("\"{}\": {e}", redact(s)))?;
        if url.scheme() != "postgresql" && url.scheme() != "postgres" {
            return Err(format!("\"{}\": scheme must be postgresql://", redact(s)));
        }
        let query_host = url.query_pairs().find(|(k, _)| k == "host").map(|(_, v)| v);
        let host = match query_host {
            Some(h) => Some(h.into_owned()),
            None => url.host_str().filter(|h| !h.is_empty()).map(decode),
        };
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("\"{}\": no host", redact(s)))?;
        let port = match url.query_pairs().find(|(k, _)| k == "port") {
            Some((_, p)) => p
                .parse()
                .map_err(|_| format!("\"{}\": bad port \"{p}\"", redact(s)))?,
            None => url.port().unwrap_or(5432),
        };
        let user = decode(url.username());
        if user.is_empty() {
            return Err(format!("\"{}\": no user", redact(s)));
        }
        let database = decode(url.path().trim_start_matches('/'));
        Ok(Dsn {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            password: decode(url.password().unwrap_or("")),
            database: if database.is_empty() {
                user.clone()
            } else {
                database
            },
            user,
        })
    }

    /// `host:port`, or the socket's path for a socket directory.
    pub fn addr(&self) -> String {
        if self.host.starts_with('/') {
            let dir = self.host.trim_end_matches('/');
            format!("{dir}/.s.PGSQL.{}", self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

/// The DSN with its password replaced, for error messages.
fn redact(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ if s.contains('@') => "<dsn with credentials>".into(),
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let dsn = Dsn::parse("postgresql://app:s%40cret@127.0.0.1:5433/shop").unwrap();
        assert_eq!(dsn.user, "app");
        assert_eq!(dsn.password, "s@cret");
        assert_eq!(dsn.addr(), "127.0.0.1:5433");
        assert_eq!(dsn.database, "shop");
        assert!(!format!("{dsn:?}").contains("cret"));
        let dsn = Dsn::parse("postgres://app@localhost").unwrap();
        assert_eq!((dsn.port, dsn.database.as_str()), (5432, "app"));
        let err = Dsn::parse("mysql://a:secret@h/d").unwrap_err();
        assert!(err.contains("scheme") && !err.contains("secret"), "{err}");
        assert!(Dsn::parse("postgresql:///db")
            .unwrap_err()
            .contains("no host"));
        assert!(Dsn::parse("postgresql://h:5432/db")
            .unwrap_err()
            .contains("no user"));
        assert!(Dsn::parse("not a url").is_err());
        let dsn = Dsn::parse("postgresql://app@%2Ftmp%2Fpg:5433/shop").unwrap();
        assert_eq!(dsn.addr(), "/tmp/pg/.s.PGSQL.5433");
        let dsn = Dsn::parse("postgresql://app@localhost/shop?host=/run/pg/&port=7").unwrap();
        assert_eq!(dsn.addr(), "/run/pg/.s.PGSQL.7");
    }
}
