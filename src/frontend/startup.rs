//! Connection start: SSL/GSS negotiation (declined), CancelRequest, StartupMessage and
//! client authentication (SCRAM-SHA-256, md5, trust).

use bytes::Buf;

use super::auth::{md5, scram};
use super::conn::{ClientConn, ConnError};
use crate::app::App;
use crate::config::{AuthMethod, User, ADMIN_DATABASE};
use crate::error::ClientError;
use crate::protocol::frame::{cstr, read_i32};
use crate::protocol::messages;
use crate::protocol::startup::{self, StartupPacket};

/// A client that passed authentication.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub database: String,
    /// Parameters from the startup packet, as sent.
    pub params: Vec<(String, String)>,
    pub admin: bool,
}

impl Login {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupFailure {
    /// Sent to the client as a FATAL ErrorResponse, then the connection closes.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Conn(#[from] ConnError),
}

/// Runs the start of a connection. `Ok(None)`: the connection was a CancelRequest
/// and is done.
pub async fn handshake(app: &App, conn: &mut ClientConn) -> Result<Option<Login>, StartupFailure> {
    let mut declined_ssl = false;
    let mut declined_gss = false;
    let params = loop {
        let (packet, len) = read_packet(conn).await?;
        conn.rbuf.advance(len);
        match packet {
            StartupPacket::SslRequest if !declined_ssl => declined_ssl = true,
            StartupPacket::GssEncRequest if !declined_gss => declined_gss = true,
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err(ClientError::Protocol("repeated encryption request".into()).into())
            }
            StartupPacket::Cancel { pid, secret } => {
                app.clients.cancel(pid, secret).await;
                return Ok(None);
            }
            StartupPacket::Startup(params) => break params,
        }
        // Encryption is not offered: answer 'N' and the client goes on in plain text.
        conn.wbuf.extend_from_slice(b"N");
        conn.flush().await?;
    };
    let login = login(app, params)?;
    authenticate(app, conn, &login).await?;
    Ok(Some(login))
}

async fn read_packet(conn: &mut ClientConn) -> Result<(StartupPacket, usize), StartupFailure> {
    loop {
        match startup::parse(&conn.rbuf) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => conn.read_more().await?,
            Err(e) => return Err(ClientError::Protocol(e.to_string()).into()),
        }
    }
}

fn login(app: &App, params: Vec<(String, String)>) -> Result<Login, ClientError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        ClientError::Protocol("no PostgreSQL user name specified in startup packet".into())
    })?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(ClientError::Unsupported(
            "replication connections are not supported".into(),
        ));
    }
    let admin = database == ADMIN_DATABASE;
    if !admin && database != app.config.database {
        return Err(ClientError::UnknownDatabase(database));
    }
    Ok(Login {
        user,
        database,
        params,
        admin,
    })
}

async fn authenticate(
    app: &App,
    conn: &mut ClientConn,
    login: &Login,
) -> Result<(), StartupFailure> {
    let failed = || ClientError::AuthFailed(login.user.clone());
    let user = app.config.user(&login.user);
    // An unknown user goes through the same exchange as a known one and fails at the
    // end, so a client cannot tell which user names exist.
    let method = user.map_or(AuthMethod::ScramSha256, |u| u.auth);
    let ok = match method {
        AuthMethod::Trust => true,
        AuthMethod::Md5 => md5_exchange(conn, user, &login.user).await?,
        AuthMethod::ScramSha256 => scram_exchange(app, conn, user, &login.user).await?,
    };
    if !ok || user.is_none() || (login.admin && !user.is_some_and(|u| u.admin)) {
        return Err(failed().into());
    }
    messages::authentication_ok(&mut conn.wbuf);
    Ok(())
}

/// Waits for a PasswordMessage-family ('p') message and returns its payload.
async fn password_message(conn: &mut ClientConn) -> Result<Vec<u8>, StartupFailure> {
    let info = conn.read_frame().await?;
    if info.tag != b'p' {
        let tag = info.tag as char;
        return Err(ClientError::Protocol(format!(
            "expected password response, got message type '{tag}'"
        ))
        .into());
    }
    let payload = conn.rbuf[info.payload()].to_vec();
    conn.rbuf.advance(info.len);
    Ok(payload)
}

async fn md5_exchange(
    conn: &mut ClientConn,
    user: Option<&User>,
    name: &str,
) -> Result<bool, StartupFailure> {
    let salt = md5::salt();
    messages::authentication_md5(&mut conn.wbuf, salt);
    conn.flush().await?;
    let received = password_message(conn).await?;
    let expected = user.and_then(|u| {
        if u.password.starts_with("md5") && u.password.len() == 35 {
            md5::expected_from_stored(&u.password, salt)
        } else {
            Some(md5::expected_response(name, &u.password, salt))
        }
    });
    Ok(expected.is_some_and(|e| md5::verify(&e, &received)))
}

async fn scram_exchange(
    app: &App,
    conn: &mut ClientConn,
    user: Option<&User>,
    name: &str,
) -> Result<bool, StartupFailure> {
    let secret = match user {
        Some(u) => app.secrets.scram(u),
        None => app.secrets.mock(name),
    };
    let mut server = scram::ScramServer::new(secret);
    messages::authentication_sasl(&mut conn.wbuf, scram::MECHANISM);
    conn.flush().await?;
    let initial = password_message(conn).await?;
    let data = sasl_initial_data(&initial)?;
    let Ok(first) = server.client_first(data) else {
        return Ok(false);
    };
    messages::authentication_sasl_continue(&mut conn.wbuf, &first);
    conn.flush().await?;
    let response = password_message(conn).await?;
    match server.client_final(&response) {
        Ok(last) => {
            messages::authentication_sasl_final(&mut conn.wbuf, &last);
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// SASLInitialResponse: mechanism name, then the length-prefixed client-first message.
fn sasl_initial_data(payload: &[u8]) -> Result<&[u8], ClientError> {
    let bad = || ClientError::Protocol("malformed SASLInitialResponse".into());
    let (mechanism, rest) = cstr(payload).ok_or_else(bad)?;
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(ClientError::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    let (len, data) = read_i32(rest).ok_or_else(bad)?;
    if len < 0 || data.len() != len as usize {
        return Err(bad());
    }
    Ok(data)
}
