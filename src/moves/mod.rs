//! Moving vshards between backends online (`mover.rs` tells the steps): the gate
//! that holds a moving vshard's writes for a moment (`gate.rs`), the SQL run on the
//! backends (`sql.rs`), COPY between backends (`copy.rs`), the switch
//! (`switch.rs`), the journal and the recovery of a move a crash interrupted
//! (`journal.rs`, `finish.rs`, `recovery.rs`), table definitions copied to a
//! backend that lacks them (`schema.rs`), and rebalancing (`rebalance.rs`).

pub mod copy;
pub mod finish;
pub mod gate;
pub mod journal;
pub mod mover;
mod prepare;
pub mod rebalance;
pub mod recovery;
pub mod schema;
pub mod sql;
mod switch;

pub use mover::{move_vshard, MoveError, MoveReport};
