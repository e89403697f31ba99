//! Tests of `combine.rs`: merged replies from hand-made frames.

use super::values::{add_numeric, compare_numeric};
use super::*;
use crate::router::sql::merge::Combine;

fn description(types: &[i32]) -> Bytes {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'T');
    out.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for (i, oid) in types.iter().enumerate() {
        out.extend_from_slice(format!("c{i}\0").as_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&oid.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
    }
    messages::finish(&mut out, at);
    out.freeze()
}

fn row(values: &[Option<&str>]) -> Bytes {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'D');
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    messages::finish(&mut out, at);
    out.freeze()
}

fn rows_of(reply: &[u8]) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some(info)) = crate::protocol::next_frame(&reply[at..]) {
        let frame = &reply[at..at + info.len];
        if info.tag == b'D' {
            let values = messages::data_row_values(&frame[5..]).unwrap();
            out.push(
                values
                    .into_iter()
                    .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                    .collect(),
            );
        }
        at += info.len;
    }
    out
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

#[test]
fn aggregates_fold_per_group_and_order_by_them() {
    // SELECT bid, count(*), sum(abalance), min(x), max(x) ... GROUP BY bid ORDER BY 3 DESC
    let d = description(&[23, 20, 1700, 701, 701]);
    let a = vec![
        d.clone(),
        row(&[Some("1"), Some("2"), Some("10.5"), Some("1.5"), Some("3")]),
        row(&[Some("2"), Some("1"), None, Some("7"), Some("7")]),
    ];
    let b = vec![
        d.clone(),
        row(&[Some("1"), Some("3"), Some("-0.25"), Some("-2"), Some("2")]),
        row(&[Some("3"), Some("1"), Some("100"), None, None]),
    ];
    let columns = vec![
        Column::Group,
        Column::Count,
        Column::Sum,
        Column::Min,
        Column::Max,
    ];
    let order = vec![SortKey {
        position: None,
        column: 2,
        descending: true,
        nulls_first: true,
    }];
    let out = combine(&[a, b], &spec(columns, true, order), None, 0).unwrap();
    let rows = rows_of(&out);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            vec![s("2"), s("1"), None, s("7"), s("7")],
            vec![s("3"), s("1"), s("100"), None, None],
            vec![s("1"), s("5"), s("10.25"), s("-2"), s("3")],
        ]
    );
}

#[test]
fn order_limit_offset_over_every_backend() {
    let d = description(&[23]);
    let a = vec![
        d.clone(),
        row(&[Some("5")]),
        row(&[Some("1")]),
        row(&[None]),
    ];
    let b = vec![d.clone(), row(&[Some("3")]), row(&[Some("10")])];
    let order = vec![SortKey {
        position: None,
        column: 0,
        descending: false,
        nulls_first: false,
    }];
    let out = combine(
        &[a, b],
        &spec(vec![Column::Group], false, order),
        Some(2),
        1,
    )
    .unwrap();
    let got: Vec<_> = rows_of(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, vec![Some("3".to_string()), Some("5".to_string())]);
    assert!(out.ends_with(b"SELECT 2\0"));
}

#[test]
fn what_cannot_be_compared_is_an_error() {
    let d = description(&[25]);
    let a = vec![d.clone(), row(&[Some("b")])];
    let b = vec![d, row(&[Some("a")])];
    let order = vec![SortKey {
        position: None,
        column: 0,
        descending: false,
        nulls_first: false,
    }];
    let err = combine(
        &[a.clone(), b.clone()],
        &spec(vec![Column::Group], false, order),
        None,
        0,
    );
    assert!(err.unwrap_err().contains("collation"));
    let err = combine(&[a, b], &spec(vec![Column::Max], true, vec![]), None, 0);
    assert!(err.is_err());
    // Dates print in the client's DateStyle: not compared as text.
    let d = description(&[1082]);
    let a = vec![d.clone(), row(&[Some("31/01/2024")])];
    let b = vec![d, row(&[Some("01/02/2023")])];
    assert!(combine(&[a, b], &spec(vec![Column::Min], true, vec![]), None, 0).is_err());
}

#[test]
fn numeric_groups_match_by_value() {
    let d = description(&[1700, 20]);
    let a = vec![d.clone(), row(&[Some("1.0"), Some("2")])];
    let b = vec![d, row(&[Some("1.00"), Some("3")])];
    let out = combine(
        &[a, b],
        &spec(vec![Column::Group, Column::Count], true, vec![]),
        None,
        0,
    );
    let rows = rows_of(&out.unwrap());
    assert_eq!(
        rows,
        vec![vec![Some("1.0".to_string()), Some("5".to_string())]]
    );
}

#[test]
fn numerics_add_and_compare_exactly() {
    assert_eq!(add_numeric("1.10", "2.005").as_deref(), Some("3.105"));
    assert_eq!(add_numeric("-1.5", "1").as_deref(), Some("-0.5"));
    assert_eq!(add_numeric("-0.25", "0.25").as_deref(), Some("0.00"));
    assert_eq!(
        add_numeric("99999999999999999999", "1").as_deref(),
        Some("100000000000000000000")
    );
    assert_eq!(compare_numeric("-2", "-10"), Some(Ordering::Greater));
    assert_eq!(compare_numeric("0.50", "0.5"), Some(Ordering::Equal));
    assert_eq!(compare_numeric("NaN", "1e9"), Some(Ordering::Greater));
    assert_eq!(compare_numeric("abc", "1"), None);
}
