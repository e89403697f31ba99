//! The client side: accept loop, startup and authentication, and one task per client
//! running either a proxied [`session::Session`] or the admin console.

pub mod auth;
pub mod clients;
pub mod combine;
pub mod conn;
pub mod params;
pub mod pipeline;
pub mod session;
pub mod shareable;
pub mod startup;
pub mod statements;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::app::App;
use crate::limits;
use crate::protocol::messages;
use crate::stats::Stats;
use conn::{ClientConn, ConnError};
use params::ClientParams;
use startup::{Login, StartupFailure};

/// Accepts clients until shutdown. A permit is taken before `accept` so at most
/// `CLIENTS_MAX` clients are served; it is dropped with the client's task.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(limits::CLIENTS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = app.shutdown.cancelled() => return,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            client(app, stream, addr).await;
            drop(permit);
        });
    }
}

async fn client(app: Arc<App>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut conn = ClientConn::new(stream);
    let handshake = tokio::time::timeout(
        app.config.startup_timeout,
        startup::handshake(&app, &mut conn),
    );
    let login = match handshake.await {
        Ok(Ok(Some(login))) => login,
        Ok(Ok(None)) => return,
        Ok(Err(StartupFailure::Client(e))) => {
            tracing::info!(%addr, error = %e, "client refused at startup");
            Stats::client_error(e.kind());
            e.write_fatal(&mut conn.wbuf);
            let _ = conn.flush().await;
            return;
        }
        Ok(Err(StartupFailure::Conn(e))) => {
            tracing::debug!(%addr, error = %e, "client left during startup");
            return;
        }
        Err(_) => {
            let e = crate::error::ClientError::Protocol("startup timed out".into());
            e.write_fatal(&mut conn.wbuf);
            let _ = conn.flush().await;
            return;
        }
    };
    app.stats.clients.increment(1.0);
    let result = logged_in(&app, conn, login, addr).await;
    app.stats.clients.decrement(1.0);
    if let Err(e) = result {
        tracing::debug!(%addr, error = %e, "client connection ended with an error");
    }
}

async fn logged_in(
    app: &Arc<App>,
    mut conn: ClientConn,
    login: Login,
    addr: SocketAddr,
) -> Result<(), ConnError> {
    let app_name = login.param("application_name").unwrap_or("");
    let registration = app
        .clients
        .register(&login.user, &login.database, addr, app_name);
    let info = registration.info.clone();
    if login.admin {
        greet(
            &mut conn,
            &crate::admin::console::server_params(),
            &login,
            &info,
        );
        conn.flush().await?;
        return crate::admin::console::run(app, &mut conn).await;
    }
    let server_params = default_server_params(app).await;
    greet(&mut conn, &server_params, &login, &info);
    conn.flush().await?;
    let params = ClientParams::from_startup(&login.params, &server_params);
    session::Session::new(app.clone(), conn, info, params)
        .run()
        .await
}

/// What the default backend reports at startup; a fixed set when it is down, so a
/// client can log in and get a clear error at its first query instead.
async fn default_server_params(app: &App) -> Vec<(String, String)> {
    let topology = app.topology.load();
    let pool = topology.pool(topology.map.default_backend).clone();
    match tokio::time::timeout(limits::SERVER_CONNECT_TIMEOUT, pool.startup_params()).await {
        Ok(Ok(params)) if !params.is_empty() => params,
        _ => crate::admin::console::server_params(),
    }
}

/// ParameterStatus for every server parameter (the client's own values where it
/// sent them), BackendKeyData with the proxy's key for this client, ReadyForQuery.
fn greet(
    conn: &mut ClientConn,
    server: &[(String, String)],
    login: &Login,
    info: &clients::ClientInfo,
) {
    for (name, value) in server {
        let value = login.param(name).unwrap_or(value);
        messages::parameter_status(&mut conn.wbuf, name, value);
    }
    if !server.iter().any(|(n, _)| n == "application_name") {
        messages::parameter_status(
            &mut conn.wbuf,
            "application_name",
            login.param("application_name").unwrap_or(""),
        );
    }
    messages::backend_key_data(&mut conn.wbuf, info.pid, info.secret());
    messages::ready_for_query(&mut conn.wbuf, b'I');
}
