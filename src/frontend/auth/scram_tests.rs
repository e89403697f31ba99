//! Tests of the SCRAM-SHA-256 server (`scram.rs`).

use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use ScramError::{ChannelBindingUnsupported, Malformed as M, OutOfOrder, WrongPassword};

/// Secrets PostgreSQL 15 stored for `CREATE ROLE .. PASSWORD ..` (random salts), and
/// postgres-protocol's own test vector.
const POSTGRES_SECRETS: &[(&str, &str)] = &[
    ("pencil", "SCRAM-SHA-256$4096:TtGsKnurgudPw0wXi60ljA==$+7koKGDHQCEGZbU6ghJbfVPD9vxg4U7m7jKn6nZJv0s=:MVAXYwHO82SQnNimy1bmUy4osunUSeZulPwxh/ih2ng="),
    // Non-ASCII that SASLprep leaves alone: the raw bytes are what PostgreSQL hashed.
    ("pâss wörd", "SCRAM-SHA-256$4096:UThCVrKI0rY7Nld1w3w3FA==$qZEoafNGB820DA4j+ZqMujw/8UBw3bqjnQRllSLDf2Y=:dsb8K041SJxSMe//nj9TaPPs0N/7RzhwM38aHyK1F6c="),
    ("secret", "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA="),
];
/// Base64 of 32 zero bytes: a well-formed key or proof that is never right.
const ZEROS: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A whole exchange driven by the client tokio-postgres uses.
fn login(secret: &ScramSecret, password: &str, cb: ChannelBinding) -> Result<(), ScramError> {
    let mut server = ScramServer::new(secret.clone());
    let mut client = ScramSha256::new(password.as_bytes(), cb);
    let server_first = server.client_first(client.message())?;
    client
        .update(&server_first)
        .expect("client accepts server-first");
    let server_final = server.client_final(client.message())?;
    client
        .finish(&server_final)
        .expect("client accepts the signature");
    Ok(())
}

#[test]
fn exchange_with_postgres_protocol_client() {
    let derived = ScramSecret::from_password("pencil", b"NaCl", 64);
    let stored = ScramSecret::parse(POSTGRES_SECRETS[0].1).expect("valid secret");
    let generated = ScramSecret::generate("pencil");
    // unsupported() sends gs2 header "n,,", unrequested() sends "y,,".
    let cases = [
        (&derived, "pencil", ChannelBinding::unsupported(), Ok(())),
        (&derived, "pencil", ChannelBinding::unrequested(), Ok(())),
        (
            &derived,
            "pencil!",
            ChannelBinding::unsupported(),
            Err(WrongPassword),
        ),
        (&stored, "pencil", ChannelBinding::unsupported(), Ok(())),
        (
            &stored,
            "Pencil",
            ChannelBinding::unrequested(),
            Err(WrongPassword),
        ),
        (&generated, "pencil", ChannelBinding::unsupported(), Ok(())),
    ];
    for (secret, password, cb, expect) in cases {
        assert_eq!(login(secret, password, cb), expect, "{password} {secret:?}");
    }
}

#[test]
fn from_password_matches_postgres() {
    for &(password, stored) in POSTGRES_SECRETS {
        let parsed = ScramSecret::parse(stored).expect("valid secret");
        assert_eq!(parsed.to_string(), stored, "parse/format round trip");
        let derived = ScramSecret::from_password(password, &parsed.salt, parsed.iterations);
        assert_eq!(derived.to_string(), stored, "password {password:?}");
    }
}

#[test]
fn generated_secret_round_trips() {
    let secret = ScramSecret::generate("pencil");
    assert_eq!(secret.iterations, ITERATIONS_DEFAULT);
    assert_eq!(secret.salt.len(), SALT_BYTES);
    let text = secret.to_string();
    assert_eq!(ScramSecret::parse(&text).map(|s| s.to_string()), Ok(text));
    assert_eq!(ScramSecret::from_password("x", b"s", 0).iterations, 1);
}

/// RFC 7677 section 3, replayed with its server nonce.
#[test]
fn rfc7677_example() {
    let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("base64");
    let secret = ScramSecret::from_password("pencil", &salt, 4096);
    let nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let mut server = ScramServer::with_server_nonce(secret, nonce.into());
    let first = server.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    let expect =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    assert_eq!(first, Ok(expect.to_vec()));
    let last = server.client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    let expect = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    assert_eq!(last, Ok(expect.to_vec()));
    assert_eq!(server.client_final(b"c=biws"), Err(OutOfOrder));
}

enum Step {
    First(&'static str),
    /// `{z}` stands for [`ZEROS`].
    Final(&'static str),
}
use Step::{Final, First};

/// Feeds `steps` to a server with nonce "SNONCE" and checks that the last one fails
/// with `expect`. Earlier steps only set up the state; their results are not checked
/// (a wrong step there shows up as an unexpected error at the end).
fn check(steps: &[Step], expect: ScramError) {
    let secret = ScramSecret::from_password("pencil", b"salt", 1);
    let mut server = ScramServer::with_server_nonce(secret, "SNONCE".into());
    let mut last = Ok(Vec::new());
    for step in steps {
        last = match step {
            First(msg) => server.client_first(msg.as_bytes()),
            Final(msg) => server.client_final(msg.replace("{z}", ZEROS).as_bytes()),
        };
    }
    assert_eq!(last, Err(expect));
}

#[test]
fn malformed_client_first() {
    let cases = [
        ("", M("client-first has no gs2 header")),
        ("n", M("client-first has no gs2 header")),
        ("n,", M("gs2 header is incomplete")),
        ("n,,n=", M("client-first has no nonce (r=)")),
        ("n,,n=,", M("client-first has no nonce (r=)")),
        ("n,,n=,r=", M("nonce is empty or not printable")),
        ("n,,n=,r=a\u{1}b", M("nonce is empty or not printable")),
        ("n,,n=,r=née", M("nonce is empty or not printable")),
        ("n,,r=cnonce", M("client-first has no user name (n=)")),
        ("p=tls-server-end-point,,", ChannelBindingUnsupported),
        (
            "p=tls-server-end-point,,n=,r=cnonce",
            ChannelBindingUnsupported,
        ),
        ("x,,n=,r=cnonce", M("unknown gs2 channel binding flag")),
        ("n,a=admin,n=,r=cnonce", M("authzid (a=) is not supported")),
        ("n,,m=ext,n=,r=cnonce", M("extension m= is not supported")),
    ];
    for (input, expect) in cases {
        check(&[First(input)], expect);
    }
    let server = || ScramServer::new(ScramSecret::from_password("p", b"s", 1));
    let not_utf8 = server().client_first(b"n,,n=\xff,r=cnonce");
    assert_eq!(not_utf8, Err(M("client-first is not UTF-8")));
    let long = format!("n,,n=,r={}", "x".repeat(MESSAGE_BYTES_MAX));
    let too_long = server().client_first(long.as_bytes());
    assert_eq!(too_long, Err(M("message is longer than MESSAGE_BYTES_MAX")));
}

#[test]
fn malformed_client_final() {
    let cases = [
        ("c=biws,r=cnonceSNONCE,p={z}", WrongPassword),
        ("", M("client-final has no proof (p=)")),
        ("c=biws,r=cnonceSNONCE", M("client-final has no proof (p=)")),
        (
            "c=biws,r=cnonceSNONCE,p=!!!",
            M("proof is not 32 bytes of base64"),
        ),
        (
            "c=biws,r=cnonceSNONCE,p=AAAA",
            M("proof is not 32 bytes of base64"),
        ),
        ("r=cnonceSNONCE,p={z}", M("client-final has no c=")),
        ("c=biws,p={z}", M("client-final has no nonce (r=)")),
        ("c=biws,r=cnonceOTHER,p={z}", M("nonce does not match")),
        // "eSws" is "y,,": not the header this client sent first.
        (
            "c=eSws,r=cnonceSNONCE,p={z}",
            M("c= does not match the gs2 header"),
        ),
    ];
    for (input, expect) in cases {
        check(&[First("n,,n=,r=cnonce"), Final(input)], expect);
    }
}

#[test]
fn messages_out_of_order() {
    let first = || First("n,,n=,r=cnonce");
    let last = || Final("c=biws,r=cnonceSNONCE,p={z}");
    check(&[last()], OutOfOrder);
    check(&[first(), first()], OutOfOrder);
    // A wrong proof ends the exchange: no second guess.
    check(&[first(), last(), last()], OutOfOrder);
    // So does a malformed first.
    check(&[First("x"), first()], OutOfOrder);
}

#[test]
fn invalid_secrets() {
    let cases = [
        ("", "prefix is not SCRAM-SHA-256$"),
        (
            "md5a99489f2ba8d41137689bf5947f835e0",
            "prefix is not SCRAM-SHA-256$",
        ),
        ("SCRAM-SHA-256$4096:c2FsdA==", "no '$' before the keys"),
        ("SCRAM-SHA-256$4096$:{z}", "no ':' after iterations"),
        ("SCRAM-SHA-256$4096:c2FsdA==${z}", "no ':' between keys"),
        (
            "SCRAM-SHA-256$0:c2FsdA==${z}:{z}",
            "iterations not a positive integer",
        ),
        (
            "SCRAM-SHA-256$-1:c2FsdA==${z}:{z}",
            "iterations not a positive integer",
        ),
        (
            "SCRAM-SHA-256$4096:${z}:{z}",
            "salt is not non-empty base64",
        ),
        (
            "SCRAM-SHA-256$4096:c2F*${z}:{z}",
            "salt is not non-empty base64",
        ),
        (
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:{z}",
            "StoredKey is not 32 bytes of base64",
        ),
        (
            "SCRAM-SHA-256$4096:c2FsdA==${z}:",
            "ServerKey is not 32 bytes of base64",
        ),
    ];
    for (input, expect) in cases {
        let parsed = ScramSecret::parse(&input.replace("{z}", ZEROS));
        assert_eq!(
            parsed.err(),
            Some(ScramError::InvalidSecret(expect)),
            "{input}"
        );
    }
}

/// Every truncation and single-byte corruption of a good exchange must return, not panic.
#[test]
fn damaged_messages_never_panic() {
    let secret = ScramSecret::from_password("pencil", b"salt", 1);
    let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
    let first = client.message().to_vec();
    let server_first = ScramServer::new(secret.clone()).client_first(&first);
    client
        .update(&server_first.expect("good first"))
        .expect("client ok");
    let last = client.message().to_vec();
    for bad in damaged(&first) {
        let _ = ScramServer::new(secret.clone()).client_first(&bad);
    }
    for bad in damaged(&last) {
        let mut server = ScramServer::new(secret.clone());
        server.client_first(&first).expect("good first");
        assert!(server.client_final(&bad).is_err());
    }
}

fn damaged(msg: &[u8]) -> Vec<Vec<u8>> {
    let truncated = (0..msg.len()).map(|n| msg[..n].to_vec());
    let corrupted = (0..msg.len()).flat_map(|i| {
        [0xff, b',', b'=', 0].map(|byte| {
            let mut bad = msg.to_vec();
            bad[i] = byte;
            bad
        })
    });
    truncated.chain(corrupted).collect()
}

#[test]
fn debug_hides_keys() {
    let secret = ScramSecret::from_password("pencil", b"salt", 1);
    let debug = format!("{secret:?}");
    for key in [secret.server_key, secret.stored_key] {
        assert!(!debug.contains(&BASE64.encode(key)), "{debug}");
    }
}

#[test]
fn constant_time_eq_compares_whole_slices() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}
