//! avg over every backend: the backends return `sum(x)` and `count(x)`
//! (`router::scatter`), summed per group like any sum and count; the proxy divides
//! as PostgreSQL's avg ends, with its result type: numeric for integers and
//! numerics (at `select_div_scale`'s scale), float8 for float8.

use bytes::Bytes;

use super::numeric::{self, Numeric};
use super::values::{self, Kind, Type};

/// avg's type: numeric over integers and numerics, float8 over float8.
pub(super) fn avg_type(sum: &Type) -> Result<Type, String> {
    match sum.kind {
        Kind::Int(8) | Kind::Numeric => Ok(Type::new(values::NUMERIC, sum.binary)),
        Kind::Float8 => Ok(Type::new(values::FLOAT8, sum.binary)),
        Kind::Float4 => Err(
            "avg of real values across backends (PostgreSQL averages them in \
                             double precision): write avg(x::float8)"
                .into(),
        ),
        _ => Err("avg of a type pgshard does not average across backends".into()),
    }
}

/// The avg of a group from its summed `sum` and `count` (NULL over no values).
pub(super) fn avg(
    sum_type: Type,
    count_type: Type,
    sum: &Option<Bytes>,
    count: &Option<Bytes>,
    out: Type,
) -> Result<Option<Bytes>, String> {
    let malformed = || "a value that does not read as its type".to_string();
    let (Some(sum), Some(count)) = (sum, count) else {
        return Ok(None);
    };
    let count = count_type.int(count).ok_or_else(malformed)?;
    let count = u64::try_from(count).map_err(|_| malformed())?;
    if count == 0 {
        return Ok(None);
    }
    let value = match sum_type.kind {
        Kind::Float8 => {
            let total = sum_type.float(sum).ok_or_else(malformed)?;
            out.encode_float8(total / count as f64)
        }
        Kind::Int(_) => {
            let total = Numeric::Finite(numeric::Decimal::from_i128(
                sum_type.int(sum).ok_or_else(malformed)?,
            ));
            out.encode_numeric(&total.div_count(count).ok_or_else(malformed)?)
        }
        _ => {
            let total = sum_type.numeric(sum).ok_or_else(malformed)?;
            out.encode_numeric(&total.div_count(count).ok_or_else(malformed)?)
        }
    };
    Ok(Some(Bytes::from(value)))
}
