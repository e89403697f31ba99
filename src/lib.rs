//! pgshard: a PostgreSQL-wire sharding proxy.
//!
//! The module list follows the data flow (client -> protocol -> frontend -> router ->
//! backend); `ARCHITECTURE.md` at the top of the repository is the code map.

pub mod admin;
pub mod app;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod frontend;
pub mod limits;
pub mod maps;
pub mod moves;
pub mod protocol;
pub mod router;
pub mod server;
pub mod stats;
