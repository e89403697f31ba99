//! Client authentication: SCRAM-SHA-256, md5 and trust, driven by `frontend::startup`.

pub mod md5;
pub mod scram;

use std::collections::HashMap;

use crate::config::{AuthMethod, User};
use scram::ScramSecret;

/// SCRAM secrets derived once per user at start, so a login costs one exchange and
/// not a fresh key derivation (4096 HMAC rounds).
pub struct Secrets {
    scram: HashMap<String, ScramSecret>,
    /// Random per process; salts the mock secrets of unknown users.
    mock_key: [u8; 32],
}

impl Secrets {
    pub fn new(users: &[User]) -> Secrets {
        let scram = users
            .iter()
            .filter(|u| u.auth == AuthMethod::ScramSha256)
            .map(|u| (u.name.clone(), secret_for(&u.password)))
            .collect();
        Secrets {
            scram,
            mock_key: rand::random(),
        }
    }

    /// A secret no password matches, for a user that does not exist. Its salt is
    /// stable per user name (as PostgreSQL's mock authentication does), so a client
    /// cannot tell unknown users from known ones by their salts.
    pub fn mock(&self, user: &str) -> ScramSecret {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(self.mock_key)
            .chain_update(user.as_bytes())
            .finalize();
        ScramSecret {
            iterations: scram::ITERATIONS_DEFAULT,
            salt: digest[..scram::SALT_BYTES].to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
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
