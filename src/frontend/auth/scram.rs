//! SCRAM-SHA-256 server side (RFC 5802, RFC 7677), the way PostgreSQL runs it.
//!
//! Pure code, no I/O: the caller moves bytes between the client and a [`ScramServer`]
//! (SASLInitialResponse data -> [`ScramServer::client_first`], SASLResponse data ->
//! [`ScramServer::client_final`]).
//!
//! pgshard offers only [`MECHANISM`] (no `-PLUS`), so there is no channel binding: a
//! client asking for it is refused, and one that merely supports it ("y") is accepted.
//! As in PostgreSQL, the user name in the SCRAM messages is ignored; the user comes
//! from the startup packet.
//!
//! Architecture invariant: nothing here panics on client bytes. Every attribute is
//! found with `split`/`strip_prefix`, never by indexing.

use std::fmt;
use std::mem;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The only SASL mechanism pgshard offers in AuthenticationSASL.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations for secrets pgshard derives itself: PostgreSQL's `scram_iterations`
/// default, so a derived secret costs a client what a real server would.
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// Salt length for secrets pgshard derives itself (PostgreSQL's SCRAM_DEFAULT_SALT_LEN).
pub const SALT_BYTES: usize = 16;
/// Random bytes in the server's half of the nonce (PostgreSQL's SCRAM_RAW_NONCE_LEN).
const SERVER_NONCE_BYTES: usize = 18;
/// SHA-256 output: the size of every key, signature and proof.
const KEY_BYTES: usize = 32;
/// Longest SCRAM message accepted, PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH: real ones are
/// a few hundred bytes, and client-first is kept for the whole exchange.
/// FIXME: move to `limits.rs` with the other bounds.
pub const MESSAGE_BYTES_MAX: usize = 65_535;
/// Prefix of PostgreSQL's stored secret (`pg_authid.rolpassword`).
const SECRET_PREFIX: &str = "SCRAM-SHA-256$";

type HmacSha256 = Hmac<Sha256>;
type Key = [u8; KEY_BYTES];

/// Why a SCRAM exchange (or a stored secret) was refused.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramError {
    /// The client sent something that is not valid SCRAM; the text names what.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding ("p="), which pgshard never offers.
    #[error("SCRAM channel binding is not supported")]
    ChannelBindingUnsupported,
    /// The proof does not match the stored key.
    #[error("password authentication failed")]
    WrongPassword,
    /// A message arrived in a state that does not expect it (including after the end).
    #[error("SCRAM message out of order")]
    OutOfOrder,
    /// A configured secret is not in PostgreSQL's stored form; the text names what.
    #[error("invalid SCRAM secret: {0}")]
    InvalidSecret(&'static str),
}

impl ScramError {
    /// The SQLSTATE PostgreSQL reports for the same failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // protocol_violation, as PostgreSQL's auth-scram.c reports bad messages.
            Self::Malformed(_) | Self::ChannelBindingUnsupported | Self::OutOfOrder => "08P01",
            // invalid_password: a bad configured secret must look like a failed login
            // to the client, as PostgreSQL's mock authentication does.
            Self::WrongPassword | Self::InvalidSecret(_) => "28P01",
        }
    }
}

/// What the server keeps per user: enough to check a proof, not the password.
#[derive(Clone)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Derives the secret for a plain-text password.
    ///
    /// The password is used as-is, without SASLprep. For ASCII passwords SASLprep is
    /// the identity, and when SASLprep fails (prohibited characters) PostgreSQL and
    /// libpq also use the raw bytes, so both agree with this. A non-ASCII password that
    /// SASLprep would *change* (non-ASCII spaces, non-NFKC forms) will not match a
    /// client that preps it; store PostgreSQL's secret for such a user instead.
    ///
    /// `iterations` of 0 is taken as 1: Hi() is undefined for 0, and the value sent to
    /// the client must be the one the keys were derived with.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations = iterations.max(1);
        let salted_password = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted_password, &[b"Client Key"]);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted_password, &[b"Server Key"]),
        }
    }

    /// [`Self::from_password`] with a fresh random salt and [`ITERATIONS_DEFAULT`].
    pub fn generate(password: &str) -> ScramSecret {
        let salt: [u8; SALT_BYTES] = rand::random();
        ScramSecret::from_password(password, &salt, ITERATIONS_DEFAULT)
    }

    /// Parses PostgreSQL's stored form
    /// `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    /// [`fmt::Display`] writes the same form back.
    pub fn parse(s: &str) -> Result<ScramSecret, ScramError> {
        let bad = ScramError::InvalidSecret;
        let rest = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(bad("prefix is not SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(bad("no '$' before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(bad("no ':' after iterations"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(bad("no ':' between keys"))?;
        Ok(ScramSecret {
            iterations: iterations
                .parse()
                .ok()
                .filter(|&n: &u32| n > 0)
                .ok_or(bad("iterations not a positive integer"))?,
            salt: BASE64
                .decode(salt)
                .ok()
                .filter(|salt| !salt.is_empty())
                .ok_or(bad("salt is not non-empty base64"))?,
            stored_key: decode_key(stored_key).ok_or(bad("StoredKey is not 32 bytes of base64"))?,
            server_key: decode_key(server_key).ok_or(bad("ServerKey is not 32 bytes of base64"))?,
        })
    }
}

impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SECRET_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// Keys are left out: ServerKey lets anyone pose as the server, so it must not reach logs.
impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

/// One client's SCRAM exchange: `client_first`, then `client_final`, once each.
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: State,
}

enum State {
    AwaitClientFirst,
    AwaitClientFinal(Exchange),
    /// Finished, successfully or not: a client gets one try per exchange, as in PostgreSQL.
    Done,
}

/// What client-final must be checked against, kept from the first round.
struct Exchange {
    gs2_header: &'static str,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// Starts an exchange with a fresh random server nonce.
    pub fn new(secret: ScramSecret) -> ScramServer {
        let raw: [u8; SERVER_NONCE_BYTES] = rand::random();
        // Standard base64 never yields ',' so the nonce is valid SCRAM "printable".
        ScramServer::with_server_nonce(secret, BASE64.encode(raw))
    }

    /// Fixed nonce, so tests can replay published exchanges.
    fn with_server_nonce(secret: ScramSecret, server_nonce: String) -> ScramServer {
        ScramServer {
            secret,
            server_nonce,
            state: State::AwaitClientFirst,
        }
    }

    /// client-first-message (the SASLInitialResponse data). Returns server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::AwaitClientFirst) {
            return Err(ScramError::OutOfOrder);
        }
        // Any error below ends the exchange.
        self.state = State::Done;
        check_len(msg)?;
        let first = parse_client_first(msg)?;
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::AwaitClientFinal(Exchange {
            gs2_header: first.gs2_header,
            nonce,
            client_first_bare: first.bare.to_owned(),
            server_first,
        });
        Ok(reply)
    }

    /// client-final-message (the SASLResponse data). Returns server-final-message
    /// (`v=<ServerSignature>`) when the proof is right.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::AwaitClientFinal(exchange) = mem::replace(&mut self.state, State::Done) else {
            return Err(ScramError::OutOfOrder);
        };
        check_len(msg)?;
        let last = parse_client_final(msg)?;
        // Without channel binding, c= carries just the gs2 header the client sent first;
        // a mismatch means the client-first we answered is not the one it thinks it sent.
        if last.channel_binding != BASE64.encode(exchange.gs2_header) {
            return Err(ScramError::Malformed("c= does not match the gs2 header"));
        }
        if last.nonce != exchange.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let auth_message = format!(
            "{},{},{}",
            exchange.client_first_bare, exchange.server_first, last.without_proof
        );
        verify_proof(&self.secret, auth_message.as_bytes(), &last.proof)?;
        let server_signature = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

fn check_len(msg: &[u8]) -> Result<(), ScramError> {
    if msg.len() > MESSAGE_BYTES_MAX {
        return Err(ScramError::Malformed(
            "message is longer than MESSAGE_BYTES_MAX",
        ));
    }
    Ok(())
}

/// The parts of client-first-message the exchange needs.
struct ClientFirst<'a> {
    gs2_header: &'static str,
    bare: &'a str,
    client_nonce: &'a str,
}

/// `gs2-cbind-flag "," [authzid] "," [reserved-mext ","] username "," nonce ["," extensions]`
fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let malformed = ScramError::Malformed;
    let msg = std::str::from_utf8(msg).map_err(|_| malformed("client-first is not UTF-8"))?;
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(malformed("client-first has no gs2 header"))?;
    let gs2_header = match flag {
        "n" => "n,,",
        // The client could bind but thinks we cannot; true, since we never offer -PLUS.
        "y" => "y,,",
        _ if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(malformed("unknown gs2 channel binding flag")),
    };
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(malformed("gs2 header is incomplete"))?;
    if !authzid.is_empty() {
        // PostgreSQL refuses an authorization identity too: the user is the startup user.
        return Err(malformed("authzid (a=) is not supported"));
    }
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(malformed("extension m= is not supported"));
    }
    // Only its presence is checked: the user comes from the startup packet.
    if !user.starts_with("n=") {
        return Err(malformed("client-first has no user name (n=)"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|attr| attr.strip_prefix("r="))
        .ok_or(malformed("client-first has no nonce (r=)"))?;
    if !is_printable(client_nonce) {
        return Err(malformed("nonce is empty or not printable"));
    }
    // Any further attributes are optional extensions, which RFC 5802 says to ignore.
    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce,
    })
}

/// The parts of client-final-message the exchange needs.
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    without_proof: &'a str,
    proof: Key,
}

/// `"c=" cbind "," "r=" nonce ["," extensions] "," "p=" proof`
fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let malformed = ScramError::Malformed;
    let msg = std::str::from_utf8(msg).map_err(|_| malformed("client-final is not UTF-8"))?;
    // The proof is last, and the signed text is everything before ",p=".
    let (without_proof, proof) = msg
        .rsplit_once(',')
        .and_then(|(head, last)| Some((head, last.strip_prefix("p=")?)))
        .ok_or(malformed("client-final has no proof (p=)"))?;
    let proof = decode_key(proof).ok_or(malformed("proof is not 32 bytes of base64"))?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|attr| attr.strip_prefix("c="))
        .ok_or(malformed("client-final has no c="))?;
    let nonce = attrs
        .next()
        .and_then(|attr| attr.strip_prefix("r="))
        .ok_or(malformed("client-final has no nonce (r=)"))?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the proof is right when
/// H(ClientKey) is the StoredKey.
fn verify_proof(secret: &ScramSecret, auth_message: &[u8], proof: &Key) -> Result<(), ScramError> {
    let mut client_key = *proof;
    xor_into(&mut client_key, &hmac(&secret.stored_key, &[auth_message]));
    let candidate: Key = Sha256::digest(client_key).into();
    if constant_time_eq(&candidate, &secret.stored_key) {
        Ok(())
    } else {
        Err(ScramError::WrongPassword)
    }
}

/// Hi() from RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    // Keying once and cloning saves re-hashing the password on every iteration.
    let keyed = new_hmac(password);
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: Key = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        xor_into(&mut out, &u);
    }
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = new_hmac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn new_hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (RFC 2104 hashes long ones), so this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn xor_into(acc: &mut Key, other: &Key) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

fn decode_key(b64: &str) -> Option<Key> {
    BASE64.decode(b64).ok()?.try_into().ok()
}

/// SCRAM's `printable`: %x21-2B / %x2D-7E, i.e. visible ASCII except ','.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Compares secrets without an early exit, so timing does not tell how many leading
/// bytes matched. Lengths are not secret (they are fixed by the hash).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
