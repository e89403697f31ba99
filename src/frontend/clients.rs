//! The registry of connected clients: their cancel keys, what they are attached to
//! (for CancelRequest), and what `SHOW CLIENTS` lists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::backend::mux::MuxConn;
use crate::backend::server::{self, CancelKey};

pub struct ClientInfo {
    pub pid: i32,
    secret: i32,
    pub user: String,
    pub database: String,
    pub addr: SocketAddr,
    pub application_name: String,
    pub connected_at: SystemTime,
    /// The server connection running this client's requests right now.
    attached: Mutex<Option<Attached>>,
    /// The move gate's epoch its running request began under (`moves::gate`).
    pub routing: AtomicU64,
}

#[derive(Clone)]
enum Attached {
    /// A server connection of its own.
    Own(Arc<str>, CancelKey),
    /// Request `seq` on a shared connection, which runs other clients' requests too.
    Shared(Arc<MuxConn>, u64),
}

#[derive(Default)]
pub struct ClientRegistry {
    next_pid: AtomicI32,
    clients: Mutex<HashMap<i32, Arc<ClientInfo>>>,
}

/// Removes the client from the registry when dropped.
pub struct Registration<'a> {
    registry: &'a ClientRegistry,
    pub info: Arc<ClientInfo>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut clients) = self.registry.clients.lock() {
            clients.remove(&self.info.pid);
        }
    }
}

impl ClientRegistry {
    pub fn register(
        &self,
        user: &str,
        database: &str,
        addr: SocketAddr,
        app: &str,
    ) -> Registration<'_> {
        // Wraps after 2^31 clients; pids only need to be unique among live clients.
        let pid = (self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff) + 1;
        let info = Arc::new(ClientInfo {
            pid,
            secret: rand::random(),
            user: user.to_owned(),
            database: database.to_owned(),
            addr,
            application_name: app.to_owned(),
            connected_at: SystemTime::now(),
            attached: Mutex::new(None),
            routing: AtomicU64::new(crate::moves::gate::IDLE),
        });
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(pid, info.clone());
        }
        Registration {
            registry: self,
            info,
        }
    }

    /// How many clients `f` holds for.
    pub fn count(&self, f: impl Fn(&ClientInfo) -> bool) -> usize {
        self.clients
            .lock()
            .map(|c| c.values().filter(|info| f(info)).count())
            .unwrap_or(0)
    }

    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        let mut out: Vec<_> = self
            .clients
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by_key(|c| c.pid);
        out
    }

    /// Handles a CancelRequest: forwards it to the server the client is attached to.
    /// A wrong secret is ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let attached = {
            let Ok(clients) = self.clients.lock() else {
                return;
            };
            let Some(info) = clients.get(&pid).filter(|c| c.secret == secret) else {
                tracing::debug!(
                    pid,
                    "cancel request for an unknown client or with a wrong key"
                );
                return;
            };
            let attached = info.attached.lock().ok().and_then(|a| a.clone());
            attached
        };
        let (backend, key) = match attached {
            Some(Attached::Own(backend, key)) => (backend, key),
            // Sent only while the server runs this client's request, not another's.
            Some(Attached::Shared(conn, seq)) => return conn.cancel_request(seq),
            None => return,
        };
        if let Err(e) = server::cancel(&key).await {
            tracing::warn!(%backend, error = %e, "forwarding a cancel request failed");
        }
    }
}

impl ClientInfo {
    pub fn secret(&self) -> i32 {
        self.secret
    }

    pub fn attach(&self, backend: &Arc<str>, key: &CancelKey) {
        if let Ok(mut a) = self.attached.lock() {
            *a = Some(Attached::Own(backend.clone(), key.clone()));
        }
    }

    pub fn attach_shared(&self, conn: &Arc<MuxConn>, seq: u64) {
        if let Ok(mut a) = self.attached.lock() {
            *a = Some(Attached::Shared(conn.clone(), seq));
        }
    }

    pub fn detach(&self) {
        if let Ok(mut a) = self.attached.lock() {
            *a = None;
        }
    }

    pub fn backend(&self) -> Option<String> {
        self.attached.lock().ok().and_then(|a| match a.as_ref()? {
            Attached::Own(backend, _) => Some(backend.to_string()),
            Attached::Shared(conn, _) => Some(conn.backend.to_string()),
        })
    }
}
