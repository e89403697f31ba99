//! Moving vshards between backends online: the gate that holds a moving vshard's
//! writes for a moment (`gate.rs`).

pub mod gate;
