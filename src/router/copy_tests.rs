//! Tests of `copy.rs`: rows split whatever the pieces, fields decoded as PostgreSQL reads them.

use super::*;

fn map() -> ShardMap {
    ShardMap::even_for_tests(4)
}

fn text() -> CopyFormat {
    CopyFormat::from_options(&[], &[]).unwrap()
}

fn csv() -> CopyFormat {
    let format = CopyOption::Format(sqlparser::ast::Ident::new("csv"));
    CopyFormat::from_options(&[format], &[]).unwrap()
}

/// Splits `data` fed in pieces of `step` bytes: the data each backend got, and
/// the number of rows.
fn split(format: CopyFormat, key_at: usize, data: &[u8], step: usize) -> (Vec<String>, u64) {
    let map = map();
    let mut s = Splitter::new(format, key_at, KeyType::Int, &map);
    let mut out = vec![BytesMut::new(); 4];
    for piece in data.chunks(step) {
        s.push(piece, &mut out).unwrap();
    }
    s.finish(&mut out).unwrap();
    let got = out
        .iter()
        .map(|o| String::from_utf8_lossy(o).into_owned())
        .collect();
    (got, s.rows)
}

fn backend(k: i64) -> usize {
    owner(&map(), &super::super::hash::Key::Int(k))
}

#[test]
fn text_rows_go_to_their_key_s_backend_whatever_the_pieces() {
    let data = b"1\ta\n2\tb\\\nc\n3\tx\\ty\n\\.\n99\tignored\n";
    for step in [1, 2, 3, 7, 100] {
        let (got, rows) = split(text(), 0, data, step);
        assert_eq!(rows, 3, "step {step}: {got:?}");
        assert!(got[backend(1)].contains("1\ta\n"), "{got:?}");
        assert!(got[backend(2)].contains("2\tb\\\nc\n"), "{got:?}");
        assert!(got[backend(3)].contains("3\tx\\ty\n"), "{got:?}");
        assert!(!got.concat().contains("ignored"));
    }
}

#[test]
fn csv_quotes_may_hold_delimiters_and_newlines() {
    let data = b"\"a,\"\"b\nc\",5\nplain,6\r\n";
    for step in [1, 4, 100] {
        let (got, rows) = split(csv(), 1, data, step);
        assert_eq!(rows, 2, "step {step}: {got:?}");
        assert!(got[backend(5)].contains("\"a,\"\"b\nc\",5\n"), "{got:?}");
        assert!(got[backend(6)].contains("plain,6\r\n"), "{got:?}");
    }
}

#[test]
fn header_goes_to_every_backend() {
    let f = CopyFormat {
        header: true,
        ..csv()
    };
    let (got, rows) = split(f, 0, b"k,v\n1,a\n", 100);
    assert_eq!(rows, 1);
    for data in &got {
        assert!(data.starts_with("k,v\n"), "{got:?}");
    }
}

#[test]
fn fields_decode_as_postgresql_reads_them() {
    let f = text();
    assert_eq!(text_field(b"a\tb\\tc", &f, 1), Some(Some(b"b\tc".to_vec())));
    assert_eq!(text_field(b"a\t\\N", &f, 1), Some(None));
    assert_eq!(
        text_field(b"\\101\\x42\\\\", &f, 0),
        Some(Some(b"AB\\".to_vec()))
    );
    assert_eq!(text_field(b"a", &f, 1), None);
    let c = csv();
    assert_eq!(csv_field(b"x,\"1,2\"", &c, 1), Some(Some(b"1,2".to_vec())));
    assert_eq!(csv_field(b"x,,y", &c, 1), Some(None));
    assert_eq!(csv_field(b"x,\"\",y", &c, 1), Some(Some(Vec::new())));
}

#[test]
fn bad_rows_are_errors_not_panics() {
    let map = map();
    let mut out = vec![BytesMut::new(); 4];
    for data in [&b"\\N\tx\n"[..], b"abc\n", b"\n", b"\\", b"x\\"] {
        let mut s = Splitter::new(text(), 0, KeyType::Int, &map);
        let r = s.push(data, &mut out).and_then(|_| s.finish(&mut out));
        assert!(r.is_err(), "{:?}", String::from_utf8_lossy(data));
    }
    let mut s = Splitter::new(csv(), 0, KeyType::Int, &map);
    assert!(s
        .push(b"\"open", &mut out)
        .and_then(|_| s.finish(&mut out))
        .is_err());
}
