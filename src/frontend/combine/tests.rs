//! Tests of `combine`: merged replies from hand-made frames, in text and binary.

use super::numeric::Numeric;
use super::*;
use crate::router::sql::merge::{Combine, SortKey};

/// A RowDescription: (type oid, binary) per column.
fn description(types: &[(i32, bool)]) -> Bytes {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'T');
    out.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for (i, (oid, binary)) in types.iter().enumerate() {
        out.extend_from_slice(format!("c{i}\0").as_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&oid.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&i16::from(*binary).to_be_bytes());
    }
    messages::finish(&mut out, at);
    out.freeze()
}

fn text_description(types: &[i32]) -> Bytes {
    let types: Vec<(i32, bool)> = types.iter().map(|&t| (t, false)).collect();
    description(&types)
}

fn row_bytes(values: &[Option<&[u8]>]) -> Bytes {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'D');
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    messages::finish(&mut out, at);
    out.freeze()
}

fn row(values: &[Option<&str>]) -> Bytes {
    let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
    row_bytes(&values)
}

fn frames(reply: &[u8]) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some(info)) = crate::protocol::next_frame(&reply[at..]) {
        out.push((info.tag, Bytes::copy_from_slice(&reply[at..at + info.len])));
        at += info.len;
    }
    out
}

fn rows_of(reply: &[u8]) -> Vec<Vec<Option<String>>> {
    frames(reply)
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, frame)| {
            messages::data_row_values(&frame[5..])
                .unwrap()
                .into_iter()
                .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                .collect()
        })
        .collect()
}

fn spec(columns: Vec<Column>, grouped: bool, order: Vec<SortKey>) -> Combine {
    Combine {
        columns,
        grouped,
        order,
        limit: None,
        offset: None,
    }
}

fn by(column: usize, descending: bool) -> SortKey {
    SortKey {
        position: None,
        column,
        descending,
        nulls_first: descending,
        collation: None,
    }
}

/// The merged reply, when no value needs a backend's ranking.
fn combine(
    replies: &[Vec<Bytes>],
    spec: &Combine,
    limit: Option<u64>,
    offset: u64,
) -> Result<BytesMut, String> {
    let gathered = Gathered::new(replies, spec)?;
    assert!(gathered.rank_requests().is_empty());
    Ok(gathered.finish(Vec::new(), limit, offset)?.into_reply())
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

const COLLATION: Option<&str> = Some("\"default\"");

#[test]
fn aggregates_fold_per_group_and_order_by_them() {
    // SELECT bid, count(*), sum(abalance), min(x), max(x) ... GROUP BY bid ORDER BY 3 DESC
    // (with the probes of min and max last).
    let d = text_description(&[23, 20, 1700, 701, 701, 25, 25]);
    let p = COLLATION;
    let a = vec![
        d.clone(),
        row(&[
            Some("1"),
            Some("2"),
            Some("10.5"),
            Some("1.5"),
            Some("3"),
            p,
            p,
        ]),
        row(&[Some("2"), Some("1"), None, Some("7"), Some("7"), p, p]),
    ];
    let b = vec![
        d.clone(),
        row(&[
            Some("1"),
            Some("3"),
            Some("-0.25"),
            Some("-2"),
            Some("2"),
            p,
            p,
        ]),
        row(&[Some("3"), Some("1"), Some("100"), None, None, p, p]),
    ];
    let columns = vec![
        Column::Group,
        Column::Count,
        Column::Sum,
        Column::Min,
        Column::Max,
    ];
    let out = combine(&[a, b], &spec(columns, true, vec![by(2, true)]), None, 0).unwrap();
    assert_eq!(
        rows_of(&out),
        vec![
            vec![s("2"), s("1"), None, s("7"), s("7")],
            vec![s("3"), s("1"), s("100"), None, None],
            vec![s("1"), s("5"), s("10.25"), s("-2"), s("3")],
        ]
    );
    // The client's description: the probes are gone.
    let (tag, description) = &frames(&out)[0];
    assert_eq!(*tag, b'T');
    assert_eq!(fields(description).unwrap().len(), 5);
}

#[test]
fn order_limit_offset_over_every_backend() {
    let d = text_description(&[23, 25]);
    let p = COLLATION;
    let a = vec![
        d.clone(),
        row(&[Some("5"), p]),
        row(&[Some("1"), p]),
        row(&[None, p]),
    ];
    let b = vec![d.clone(), row(&[Some("3"), p]), row(&[Some("10"), p])];
    let mut order = by(0, false);
    order.nulls_first = false;
    let spec = spec(vec![Column::Group], false, vec![order]);
    let out = combine(&[a, b], &spec, Some(2), 1).unwrap();
    let got: Vec<_> = rows_of(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, vec![s("3"), s("5")]);
    assert!(out.ends_with(b"SELECT 2\0"));
}

#[test]
fn text_under_a_collation_is_ranked_by_a_backend_and_c_compares_bytes() {
    let d = text_description(&[25, 25]);
    let icu = Some("\"und-x-icu\"");
    let a = vec![d.clone(), row(&[Some("b"), icu]), row(&[Some("A"), icu])];
    let b = vec![d.clone(), row(&[Some("a"), icu]), row(&[Some("b"), icu])];
    let spec = spec(vec![Column::Group], false, vec![by(0, false)]);
    let gathered = Gathered::new(&[a.clone(), b.clone()], &spec).unwrap();
    let requests = gathered.rank_requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].sql().contains("COLLATE \"und-x-icu\""));
    let values: Vec<&[u8]> = requests[0].values.iter().map(|v| &v[..]).collect();
    assert_eq!(
        values,
        vec![&b"b"[..], b"A", b"a"],
        "distinct values, first seen"
    );
    // As ICU ranks them: a < A < b.
    let out = gathered.finish(vec![vec![3, 2, 1]], None, 0).unwrap();
    let got: Vec<_> = rows_of(&out.into_reply())
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(got, vec![s("a"), s("A"), s("b"), s("b")]);

    // Under "C" the proxy compares bytes itself.
    let c = Some("\"C\"");
    let a = vec![d.clone(), row(&[Some("b"), c]), row(&[Some("a"), c])];
    let b = vec![d, row(&[Some("B"), c])];
    let out = combine(&[a, b], &spec, None, 0).unwrap();
    let got: Vec<_> = rows_of(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, vec![s("B"), s("a"), s("b")]);
}

#[test]
fn min_and_max_of_text_use_the_ranks() {
    // SELECT min(name), max(name): probes for both.
    let d = text_description(&[1043, 1043, 25, 25]);
    let p = Some("\"fr-x-icu\"");
    let a = vec![d.clone(), row(&[Some("é"), Some("é"), p, p])];
    let b = vec![d.clone(), row(&[Some("f"), Some("f"), p, p])];
    let c = vec![d, row(&[Some("e"), Some("e"), p, p])];
    let spec = spec(vec![Column::Min, Column::Max], true, vec![]);
    let gathered = Gathered::new(&[a, b, c], &spec).unwrap();
    // One request serves both columns' probes? No: each column has its own values.
    let requests = gathered.rank_requests().to_vec();
    assert_eq!(requests.len(), 2);
    let rank = |v: &Bytes| match &v[..] {
        b"e" => 1,
        b"\xc3\xa9" => 2,
        _ => 3,
    };
    let ranks = requests
        .iter()
        .map(|r| r.values.iter().map(rank).collect())
        .collect();
    let out = gathered.finish(ranks, None, 0).unwrap();
    assert_eq!(rows_of(&out.into_reply()), vec![vec![s("e"), s("f")]]);
}

#[test]
fn what_cannot_be_compared_is_an_error() {
    // A type the proxy neither compares nor ranks (interval).
    let d = text_description(&[1186, 25]);
    let a = vec![d.clone(), row(&[Some("1 day"), COLLATION])];
    let b = vec![d, row(&[Some("2 days"), COLLATION])];
    let spec_order = spec(vec![Column::Group], false, vec![by(0, false)]);
    let err = combine(&[a.clone(), b.clone()], &spec_order, None, 0);
    assert!(err.unwrap_err().contains("cannot compare"));
    let err = combine(&[a, b], &spec(vec![Column::Max], true, vec![]), None, 0);
    assert!(err.is_err());
    // Dates print in the client's DateStyle: ranked by a backend, not as text.
    let d = text_description(&[1082, 25]);
    let a = vec![d.clone(), row(&[Some("31/01/2024"), COLLATION])];
    let b = vec![d, row(&[Some("01/02/2023"), COLLATION])];
    let spec = spec(vec![Column::Min], true, vec![]);
    let gathered = Gathered::new(&[a, b], &spec).unwrap();
    assert_eq!(gathered.rank_requests().len(), 1);
    assert!(gathered.rank_requests()[0]
        .sql()
        .contains("CAST(v AS date))"));
    // A rank missing for a value is an error, not a guess.
    assert!(gathered.finish(vec![vec![1]], None, 0).is_err());
    // A probe that is not a collation name is refused.
    let d = text_description(&[25, 25]);
    let a = vec![d, row(&[Some("x"), Some("x; DROP TABLE t")])];
    let spec = spec_order.clone();
    assert!(Gathered::new(&[a], &spec).is_err());
}

#[test]
fn groups_of_a_type_whose_equal_values_differ_in_form_are_refused() {
    // interval: '1 day' = '24:00:00', by its bytes they would be two groups.
    let d = text_description(&[1186, 20]);
    let a = vec![d.clone(), row(&[Some("1 day"), Some("1")])];
    let b = vec![d, row(&[Some("24:00:00"), Some("1")])];
    let spec = spec(vec![Column::Group, Column::Count], true, vec![]);
    assert!(combine(&[a, b], &spec, None, 0)
        .unwrap_err()
        .contains("GROUP BY"));
    // inet prints one form per value: grouped by its bytes.
    let d = text_description(&[869, 20]);
    let a = vec![d.clone(), row(&[Some("10.0.0.1"), Some("1")])];
    let b = vec![d, row(&[Some("10.0.0.1"), Some("2")])];
    let out = combine(&[a, b], &spec, None, 0).unwrap();
    assert_eq!(rows_of(&out), vec![vec![s("10.0.0.1"), s("3")]]);
}

#[test]
fn numeric_groups_match_by_value() {
    let d = text_description(&[1700, 20]);
    let a = vec![d.clone(), row(&[Some("1.0"), Some("2")])];
    let b = vec![d, row(&[Some("1.00"), Some("3")])];
    let out = combine(
        &[a, b],
        &spec(vec![Column::Group, Column::Count], true, vec![]),
        None,
        0,
    );
    assert_eq!(rows_of(&out.unwrap()), vec![vec![s("1.0"), s("5")]]);
}

#[test]
fn avg_divides_the_summed_parts_as_postgres_does() {
    // SELECT bid, avg(x) ... GROUP BY bid: the backends return bid, sum(x), count(x).
    let d = text_description(&[23, 20, 20]);
    let a = vec![
        d.clone(),
        row(&[Some("1"), Some("1"), Some("1")]),
        row(&[Some("2"), None, Some("0")]),
    ];
    let b = vec![d, row(&[Some("1"), Some("6"), Some("2")])];
    let by_bid = spec(vec![Column::Group, Column::Avg], true, vec![]);
    let out = combine(&[a, b], &by_bid, None, 0).unwrap();
    assert_eq!(
        rows_of(&out),
        vec![vec![s("1"), s("2.3333333333333333")], vec![s("2"), None],]
    );
    // avg(int) is numeric: the client's description says so.
    let description = fields(&frames(&out)[0].1).unwrap();
    assert_eq!(description[1].1.oid, 1700);
    // avg(float8) stays float8; avg(real) is refused (PostgreSQL averages it in
    // double precision, a sum of reals is not).
    let d = text_description(&[701, 20]);
    let a = vec![d.clone(), row(&[Some("0.5"), Some("2")])];
    let b = vec![d, row(&[Some("0.25"), Some("1")])];
    let one = spec(vec![Column::Avg], true, vec![]);
    let out = combine(&[a, b], &one, None, 0).unwrap();
    assert_eq!(rows_of(&out), vec![vec![s("0.25")]]);
    let d = text_description(&[700, 20]);
    let a = vec![d, row(&[Some("0.5"), Some("2")])];
    assert!(combine(&[a], &one, None, 0).unwrap_err().contains("float8"));
}

#[test]
fn binary_values_merge_and_come_back_binary() {
    // SELECT count(*), sum(x::int8) -> numeric, avg(x), max(d) with d a date, binary.
    let d = description(&[
        (20, true),
        (1700, true),
        (1700, true),
        (20, true),
        (1082, true),
        (25, true),
    ]);
    let num = |v: &str| Numeric::parse_text(v.as_bytes()).unwrap().to_binary();
    let int8 = |v: i64| v.to_be_bytes().to_vec();
    let date = |v: i32| v.to_be_bytes().to_vec();
    let p = b"\"default\"".to_vec();
    let row_of = |values: Vec<Vec<u8>>| {
        let values: Vec<Option<&[u8]>> = values.iter().map(|v| Some(&v[..])).collect();
        row_bytes(&values)
    };
    let a = vec![
        d.clone(),
        row_of(vec![
            int8(2),
            num("10.5"),
            num("3"),
            int8(2),
            date(-5),
            p.clone(),
        ]),
    ];
    let b = vec![
        d,
        row_of(vec![int8(3), num("-0.25"), num("4"), int8(1), date(7), p]),
    ];
    let columns = vec![Column::Count, Column::Sum, Column::Avg, Column::Max];
    let out = combine(&[a, b], &spec(columns, true, vec![]), None, 0).unwrap();
    let frames = frames(&out);
    let values = messages::data_row_values(&frames[1].1[5..]).unwrap();
    assert_eq!(values.len(), 4);
    assert_eq!(values[0], Some(&int8(5)[..]));
    assert_eq!(values[1], Some(&num("10.25")[..]));
    assert_eq!(values[2], Some(&num("2.3333333333333333")[..]));
    assert_eq!(values[3], Some(&date(7)[..]));
    let description = fields(&frames[0].1).unwrap();
    assert!(description.iter().all(|(_, t)| t.binary));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let d = text_description(&[23]);
    let spec_group = spec(vec![Column::Group], true, vec![]);
    for bad in [
        vec![vec![Bytes::from_static(b"T\0\0\0\x06\0\x05")]],
        vec![vec![d.clone(), Bytes::from_static(b"D\0\0\0\x06\0\x01")]],
        vec![vec![d.clone(), row(&[Some("1"), Some("2")])]],
        vec![vec![row(&[Some("1")])]],
    ] {
        assert!(combine(&bad, &spec_group, None, 0).is_err());
    }
    let spec_sum = spec(vec![Column::Sum], true, vec![]);
    let a = vec![d.clone(), row(&[Some("1")])];
    let b = vec![d, row(&[Some("x")])];
    assert!(combine(&[a, b], &spec_sum, None, 0).is_err());
}
