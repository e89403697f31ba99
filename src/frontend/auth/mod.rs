//! Client authentication: SCRAM-SHA-256, md5 and trust, driven by `frontend::startup`.

pub mod md5;
pub mod scram;

use std::collections::HashMap;

use crate::config::{AuthMethod, User};
use scram::ScramSecret;

/// SCRAM secrets derived once per user at start, so a login costs one exchange and
/// not a fresh key derivation (4096 HMAC rounds).
#[derive(Default)]
pub struct Secrets {
    scram: HashMap<String, ScramSecret>,
}

impl Secrets {
    pub fn new(users: &[User]) -> Secrets {
        let scram = users
            .iter()
            .filter(|u| u.auth == AuthMethod::ScramSha256)
            .map(|u| (u.name.clone(), secret_for(&u.password)))
            .collect();
        Secrets { scram }
    }

    pub fn scram(&self, user: &User) -> ScramSecret {
        match self.scram.get(&user.name) {
            Some(secret) => secret.clone(),
            None => secret_for(&user.password),
        }
    }
}

/// A stored PostgreSQL secret is used as is; a plain password is derived.
fn secret_for(password: &str) -> ScramSecret {
    ScramSecret::parse(password).unwrap_or_else(|_| ScramSecret::generate(password))
}
