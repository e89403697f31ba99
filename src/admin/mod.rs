//! Administration: the PgBouncer-style console (database `pgshard`) and the HTTP API
//! with `/metrics`.

pub mod console;
pub mod http;
pub mod tables;
