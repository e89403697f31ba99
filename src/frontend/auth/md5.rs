//! md5 password authentication (AuthenticationMD5Password), as PostgreSQL does it.
//!
//! Pure code, no I/O. The client answers `"md5" + md5_hex(md5_hex(password + user) +
//! salt)`; the inner hash is what PostgreSQL stores, so either a plain-text password or
//! a stored `md5...` hash from the config is enough to check it.

use md5::{Digest, Md5};

use super::scram::constant_time_eq;

/// Length of the hex digest in `md5<hex>` (PostgreSQL's MD5_PASSWD_LEN minus "md5").
const HEX_LEN: usize = 32;

/// A fresh salt for one AuthenticationMD5Password request.
pub fn salt() -> [u8; 4] {
    // A new salt per login keeps a sniffed response from being replayed.
    rand::random()
}

/// What the client must send for `user`/`password` with `salt`:
/// `"md5" + md5_hex(md5_hex(password + user) + salt)`.
pub fn expected_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    salted(&md5_hex(&[password.as_bytes(), user.as_bytes()]), salt)
}

/// Same as [`expected_response`] when the config stores PostgreSQL's hash
/// `md5<hex of md5(password + user)>`. `None` when `stored` is not of that form.
pub fn expected_from_stored(stored: &str, salt: [u8; 4]) -> Option<String> {
    let hex = stored.strip_prefix("md5")?;
    if hex.len() != HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Clients hash the lower-case hex they compute themselves; a hash pasted in upper
    // case would otherwise never match.
    Some(salted(&hex.to_ascii_lowercase(), salt))
}

/// Whether the PasswordMessage payload `received` is the `expected` response.
pub fn verify(expected: &str, received: &[u8]) -> bool {
    // The payload is a C string; accept it with or without its terminating NUL so this
    // does not depend on whether the decoder already stripped it.
    let received = received.strip_suffix(&[0]).unwrap_or(received);
    constant_time_eq(expected.as_bytes(), received)
}

/// `"md5" + md5_hex(inner_hex + salt)`.
fn salted(inner_hex: &str, salt: [u8; 4]) -> String {
    format!("md5{}", md5_hex(&[inner_hex.as_bytes(), &salt]))
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part);
    }
    format!("{:x}", md5.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL 15 stored for `CREATE ROLE postgres2 PASSWORD 'secret'` with
    /// `password_encryption = md5`.
    const STORED_POSTGRES2: &str = "md5a99489f2ba8d41137689bf5947f835e0";

    #[test]
    fn expected_response_step_by_step() {
        let salt = [1, 2, 3, 4];
        let inner = format!("{:x}", Md5::digest(b"secretpostgres"));
        let outer = format!("{:x}", Md5::digest([inner.as_bytes(), &salt].concat()));
        let expected = format!("md5{outer}");
        assert_eq!(expected_response("postgres", "secret", salt), expected);
        // Computed apart with Python's hashlib, and what libpq-compatible clients send.
        assert_eq!(expected, "md5bb41a296aab6baccb36ff243a562abff");
        let client = postgres_protocol::authentication::md5_hash(b"postgres", b"secret", salt);
        assert_eq!(expected, client);
    }

    #[test]
    fn stored_hash_gives_the_same_response() {
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let want = Some(expected_response("postgres2", "secret", salt));
        assert_eq!(expected_from_stored(STORED_POSTGRES2, salt), want);
        let upper = format!(
            "md5{}",
            STORED_POSTGRES2["md5".len()..].to_ascii_uppercase()
        );
        assert_eq!(expected_from_stored(&upper, salt), want);
    }

    #[test]
    fn malformed_stored_hash() {
        let check =
            |stored: &str| assert_eq!(expected_from_stored(stored, [0; 4]), None, "{stored}");
        check("");
        check("md5");
        check("a99489f2ba8d41137689bf5947f835e0");
        check("md5a99489f2ba8d41137689bf5947f835e");
        check("md5a99489f2ba8d41137689bf5947f835e00");
        check("md5g99489f2ba8d41137689bf5947f835e0");
        check("md5a99489f2ba8d41137689bf5947f835é");
        check("SCRAM-SHA-256$4096:c2FsdA==$a:b");
    }

    #[test]
    fn verify_accepts_only_the_expected_response() {
        let expected = expected_response("postgres", "secret", [1, 2, 3, 4]);
        let check = |received: &[u8], ok: bool| {
            assert_eq!(
                verify(&expected, received),
                ok,
                "{}",
                String::from_utf8_lossy(received)
            );
        };
        check(expected.as_bytes(), true);
        check(format!("{expected}\0").as_bytes(), true);
        check(format!("{expected}\0\0").as_bytes(), false);
        check(
            expected_response("postgres", "wrong", [1, 2, 3, 4]).as_bytes(),
            false,
        );
        check(
            expected_response("postgres", "secret", [4, 3, 2, 1]).as_bytes(),
            false,
        );
        check(&expected.as_bytes()[..expected.len() - 1], false);
        check(b"", false);
        check(b"\0", false);
        check(b"secret", false);
    }

    #[test]
    fn salts_differ() {
        // Four random bytes repeating three times running means the RNG is broken.
        let salts = [salt(), salt(), salt()];
        assert!(salts[0] != salts[1] || salts[1] != salts[2]);
    }
}
