//! Administration: the PgBouncer-style console (database `pgshard`) and the HTTP API
//! with `/metrics`.

pub mod cli;
pub mod console;
pub mod http;
pub mod http_maps;
pub mod http_moves;
pub mod tables;
