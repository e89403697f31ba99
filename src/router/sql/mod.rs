//! Statements -> what routing needs: which sharded tables a statement touches and
//! where its key values come from (DESIGN.md section 5). `lexer.rs` finds literals
//! and comments, `plan.rs` reads the parsed statement (`tables.rs` the tables it
//! names, `words.rs` what its words say when the parser cannot), `cache.rs` keeps
//! one plan per statement shape.

pub mod cache;
mod keys;
pub mod lexer;
pub mod merge;
pub mod plan;
mod tables;
mod words;

pub use cache::{Analyzed, PlanCache};
