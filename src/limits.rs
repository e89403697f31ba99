//! Every bound pgshard enforces, in one place (TIGER_STYLE: put a limit on everything).
//! Config fields that override one of these name the constant as their default.

use std::time::Duration;

/// Largest protocol message accepted from a client or a server (PostgreSQL's own
/// limit for most messages is 1 GiB; pgshard refuses anything above this).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest startup packet (PostgreSQL uses 10,000 bytes: MAX_STARTUP_PACKET_LENGTH).
pub const STARTUP_BYTES_MAX: usize = 10_000;
/// How long a new client may take to finish startup and authentication.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Client connections served at once; further accepts wait for a permit.
pub const CLIENTS_MAX: usize = 5_000;
/// Default server connections per backend server.
pub const POOL_SIZE_DEFAULT: usize = 20;
/// Largest pool size a config may ask for.
pub const POOL_SIZE_MAX: usize = 1_000;
/// How long a client waits for a server connection before it gets an error.
pub const POOL_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting and authenticating to a backend server may take.
pub const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a ROLLBACK on a server left mid-transaction by a client may take before
/// the server connection is discarded instead.
pub const SERVER_CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Prepared statements one client may hold.
pub const CLIENT_PREPARED_MAX: usize = 10_000;
/// Prepared statements kept on one server connection (least recently used closed).
pub const SERVER_PREPARED_MAX: usize = 1_000;
/// Distinct statements the proxy remembers as accepted by a server.
pub const KNOWN_STATEMENTS_MAX: usize = 100_000;
/// Session parameters one client may SET.
pub const CLIENT_PARAMS_MAX: usize = 256;
/// Initial capacity of per-connection read and write buffers.
pub const BUFFER_BYTES_INITIAL: usize = 16 * 1024;
/// Server bytes read ahead while the proxy is still writing to that server.
pub const SERVER_READ_AHEAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Buffered bytes per direction before the proxy writes out (bounds memory per client).
pub const BUFFER_BYTES_FLUSH: usize = 256 * 1024;
/// Most shared (pipelined) server connections per backend chosen automatically.
pub const PIPELINE_CONNECTIONS_DEFAULT: usize = 2;
/// Default requests in flight at once on one shared server connection. Past it a
/// request takes a server connection of its own, which costs PostgreSQL another busy
/// process: with 64 pgbench clients, one shared connection of depth 128 gave 1.7
/// times the throughput of one of depth 32. `MUX_STALL` keeps requests from queueing
/// behind a slow one.
pub const PIPELINE_DEPTH_DEFAULT: usize = 128;
/// Largest pipeline depth a config may ask for.
pub const PIPELINE_DEPTH_MAX: usize = 256;
/// A shared server connection whose current request has run this long takes no new
/// requests (they would wait behind it); they get a connection of their own.
pub const MUX_STALL: Duration = Duration::from_millis(2);
/// Reply bytes held for one client of a shared connection that does not read them;
/// past this its request is cancelled (the requests queued behind it wait for it).
pub const MUX_REPLY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// A shared connection idle this long gives its place to settings that need one.
pub const MUX_IDLE_RETIRE: Duration = Duration::from_secs(1);
/// After a shared connection could not be opened, the next try waits this long.
pub const MUX_OPEN_BACKOFF: Duration = Duration::from_secs(1);
/// Messages scanned for one extended batch that could run on a shared connection.
pub const SHARED_BATCH_MESSAGES_MAX: usize = 16;
/// Statement shapes whose routing plan is kept (the cache starts over when full).
pub const PLAN_CACHE_MAX: usize = 10_000;
/// A prepared transaction with no logged decision is rolled back once this old (a live
/// coordinator decides within milliseconds).
pub const TWO_PHASE_ABORT_AFTER: Duration = Duration::from_secs(60);
/// Server connections tried for a transaction's BEGIN when pooled ones turn out
/// dead.
pub const BEGIN_ATTEMPTS: usize = 3;
/// How often prepared transactions left by two-phase commits are looked for (the
/// default of `two_phase_recovery_interval_ms`).
pub const TWO_PHASE_RECOVERY_INTERVAL: Duration = Duration::from_secs(30);
/// Distinct values of one column a merged read sends back to a backend to have them
/// ordered by their collation (text) or type (dates and times in text format).
pub const RANK_VALUES_MAX: usize = 100_000;
/// Bytes of those values.
pub const RANK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Messages after the Bind of an extended batch that runs on several backends (its
/// Describes, Execute and Sync).
pub const SPREAD_BATCH_MESSAGES_MAX: usize = 16;
/// How long a vshard move waits for writes already running on its vshard to end
/// before it lets the held writes go and tries again (default of `move_hold_ms`).
pub const MOVE_HOLD: Duration = Duration::from_secs(2);
/// Attempts a move makes to hold its vshard's writes before it gives up.
pub const MOVE_HOLD_ATTEMPTS: usize = 5;
/// Catch-up rounds before the final one under the hold; a round that finds fewer
/// changed keys than `MOVE_CATCH_UP_KEYS` ends them early.
pub const MOVE_CATCH_UP_ROUNDS: usize = 10;
pub const MOVE_CATCH_UP_KEYS: usize = 100;
/// Lock timeout of a move's DDL on a backend (its capture triggers): writers queue
/// behind it at most this long; it retries.
pub const MOVE_LOCK_TIMEOUT: Duration = Duration::from_millis(50);
pub const MOVE_LOCK_ATTEMPTS: usize = 100;
/// After switching the map, how long a move waits for statements routed by the old
/// map to end before it deletes the rows from the old backend.
pub const MOVE_OLD_MAP_WAIT: Duration = Duration::from_secs(2);
/// Keys a move deletes from the old backend by key; above this, by the vshard
/// predicate.
pub const MOVE_DELETE_KEYS_MAX: usize = 100_000;
/// Applied shard maps kept in the history.
pub const MAP_HISTORY_MAX: usize = 1_000;
/// Largest shard map document accepted by the admin API.
pub const MAP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How often the recovery of a move whose cleanup failed is tried again.
pub const MOVE_RECOVERY_RETRY: Duration = Duration::from_secs(2);
/// Longest a move's switch (its last catch-up, the target's insert and prepare) may
/// take while it holds the vshard's writes; past it the move is undone.
pub const MOVE_SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a move's delete of the moved rows from the source waits for a lock held
/// by a transaction begun before the move (then the cleanup is retried later).
pub const MOVE_DELETE_LOCK_WAIT: Duration = Duration::from_secs(5);
