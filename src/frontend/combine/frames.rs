//! The RowDescription and DataRow frames of a merged read.

use bytes::{BufMut, Bytes, BytesMut};

use super::values::{self, Type};
use crate::protocol::messages;

/// Each column's field (its bytes within the RowDescription) and type.
pub(super) fn fields(frame: &Bytes) -> Option<Vec<(Bytes, Type)>> {
    let payload = frame.get(5..)?;
    let count = i16::from_be_bytes(payload.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let name_end = payload.get(at..)?.iter().position(|&b| b == 0)?;
        let end = at + name_end + 1 + 18;
        let field = payload.get(at..end)?;
        // name, table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
        let fixed = &field[name_end + 1..];
        let oid = i32::from_be_bytes(fixed[6..10].try_into().ok()?);
        let format = i16::from_be_bytes(fixed[16..18].try_into().ok()?);
        out.push((frame.slice_ref(field), Type::new(oid, format == 1)));
        at = end;
    }
    Some(out)
}

/// A field with another type (avg's): no table column, the type's length, no
/// modifier, the same name and format.
pub(super) fn retyped(field: &Bytes, ty: Type) -> Option<Bytes> {
    let name_end = field.iter().position(|&b| b == 0)?;
    let mut out = BytesMut::from(&field[..=name_end]);
    out.put_i32(0);
    out.put_i16(0);
    out.put_i32(ty.oid);
    out.put_i16(if ty.oid == values::FLOAT8 { 8 } else { -1 });
    out.put_i32(-1);
    out.put_i16(i16::from(ty.binary));
    Some(out.freeze())
}

pub(super) fn describe(fields: impl ExactSizeIterator<Item = Bytes>) -> Bytes {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'T');
    out.put_i16(fields.len() as i16);
    for field in fields {
        out.extend_from_slice(&field);
    }
    messages::finish(&mut out, at);
    out.freeze()
}

pub(super) fn data_row(out: &mut BytesMut, row: &[Option<Bytes>]) {
    let at = messages::begin(out, b'D');
    out.put_i16(row.len() as i16);
    for value in row {
        match value {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.extend_from_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    messages::finish(out, at);
}
