//! COPY FROM STDIN into a sharded table: the data stream (text or CSV) cut into rows,
//! each row sent to the backend owning its key. Pure: no I/O; any input gives rows
//! or an error, never a panic.
//!
//! Rows end at a newline outside quotes (CSV) and not escaped by a backslash
//! (text), as PostgreSQL reads them; `\r\n` endings work, bare `\r` endings do not.

use bytes::BytesMut;
use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};

use super::decide::{owner, parse_text};
use super::hash::KeyType;
use super::shardmap::{BackendId, ShardMap};

/// How COPY data is written (the statement's options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub csv: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    /// The string that means NULL.
    pub null: Vec<u8>,
    /// The first line is a header (every backend gets it, and skips it).
    pub header: bool,
}

impl CopyFormat {
    /// PostgreSQL's default: text, tab-separated, `\N` for NULL.
    pub fn text() -> CopyFormat {
        CopyFormat {
            csv: false,
            delimiter: b'\t',
            quote: b'"',
            escape: b'"',
            null: b"\\N".to_vec(),
            header: false,
        }
    }

    /// From the statement's options; binary format and multi-byte option characters
    /// are refused.
    pub fn from_options(
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<CopyFormat, String> {
        let mut csv = false;
        let (mut delimiter, mut quote, mut escape, mut null, mut header) =
            (None, None, None, None, false);
        let byte = |c: char, what: &str| {
            u8::try_from(c)
                .ok()
                .filter(u8::is_ascii)
                .ok_or_else(|| format!("COPY {what} must be a single-byte character"))
        };
        for option in options {
            match option {
                CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                    "csv" => csv = true,
                    "text" => csv = false,
                    other => return Err(unsupported_format(other)),
                },
                CopyOption::Delimiter(c) => delimiter = Some(byte(*c, "delimiter")?),
                CopyOption::Quote(c) => quote = Some(byte(*c, "quote")?),
                CopyOption::Escape(c) => escape = Some(byte(*c, "escape")?),
                CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
                CopyOption::Header(h) => header = *h,
                _ => {}
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => return Err(unsupported_format("binary")),
                CopyLegacyOption::Delimiter(c) => delimiter = Some(byte(*c, "delimiter")?),
                CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
                CopyLegacyOption::Csv(csv_options) => {
                    csv = true;
                    for o in csv_options {
                        match o {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(c) => quote = Some(byte(*c, "quote")?),
                            CopyLegacyCsvOption::Escape(c) => escape = Some(byte(*c, "escape")?),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let quote = quote.unwrap_or(b'"');
        Ok(CopyFormat {
            csv,
            delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() }),
            header,
        })
    }
}

fn unsupported_format(name: &str) -> String {
    format!(
        "COPY of a sharded table in format {name}: pgshard splits and gathers text and csv only"
    )
}

/// Cuts a COPY data stream into rows and hands each to its key's backend.
pub struct Splitter<'m> {
    format: CopyFormat,
    /// The key's field, counted from 0.
    key_at: usize,
    key_type: KeyType,
    map: &'m ShardMap,
    /// Data not yet cut into rows.
    pending: BytesMut,
    /// How far `pending` is scanned, and whether that point is inside quotes (CSV).
    scanned: usize,
    in_quotes: bool,
    header_left: bool,
    /// The end-of-data marker `\.` was seen: what follows is ignored.
    ended: bool,
    pub rows: u64,
}

impl<'m> Splitter<'m> {
    pub fn new(format: CopyFormat, key_at: usize, key_type: KeyType, map: &'m ShardMap) -> Self {
        Splitter {
            header_left: format.header,
            format,
            key_at,
            key_type,
            map,
            pending: BytesMut::new(),
            scanned: 0,
            in_quotes: false,
            ended: false,
            rows: 0,
        }
    }

    /// Takes a piece of the stream; appends each whole row to `out[backend]`.
    pub fn push(&mut self, data: &[u8], out: &mut [BytesMut]) -> Result<(), String> {
        if self.ended {
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        while let Some(end) = self.row_end() {
            let row = self.pending.split_to(end + 1);
            self.scanned = 0;
            self.route(&row, out)?;
            if self.ended {
                self.pending.clear();
                return Ok(());
            }
        }
        Ok(())
    }

    /// The end of the stream: a last row without a newline is still a row.
    pub fn finish(&mut self, out: &mut [BytesMut]) -> Result<(), String> {
        if self.ended || self.pending.is_empty() {
            return Ok(());
        }
        if self.in_quotes {
            return Err("COPY data ends inside a quoted CSV field".into());
        }
        let mut row = std::mem::take(&mut self.pending);
        row.extend_from_slice(b"\n");
        self.route(&row, out)
    }

    /// Where the first whole row in `pending` ends (its newline), scanning on from
    /// where the last call stopped.
    fn row_end(&mut self) -> Option<usize> {
        let data = &self.pending[..];
        let f = &self.format;
        let mut i = self.scanned;
        while i < data.len() {
            let c = data[i];
            if !f.csv {
                if c == b'\\' {
                    if i + 1 >= data.len() {
                        break;
                    }
                    i += 2;
                    continue;
                }
                if c == b'\n' {
                    self.scanned = 0;
                    return Some(i);
                }
            } else if self.in_quotes {
                if c == f.escape && f.escape != f.quote {
                    if i + 1 >= data.len() {
                        break;
                    }
                    if data[i + 1] == f.quote || data[i + 1] == f.escape {
                        i += 2;
                        continue;
                    }
                }
                if c == f.quote {
                    // A doubled quote (when escape = quote) toggles twice: fine.
                    self.in_quotes = false;
                }
            } else if c == f.quote {
                self.in_quotes = true;
            } else if c == b'\n' {
                return Some(i);
            }
            i += 1;
        }
        self.scanned = i;
        None
    }

    fn route(&mut self, row: &[u8], out: &mut [BytesMut]) -> Result<(), String> {
        let line = row.strip_suffix(b"\n").unwrap_or(row);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"\\." {
            self.ended = true;
            return Ok(());
        }
        if std::mem::take(&mut self.header_left) {
            for o in out.iter_mut() {
                o.extend_from_slice(row);
            }
            return Ok(());
        }
        self.rows += 1;
        let row_no = self.rows + u64::from(self.format.header);
        let key = match self.key_field(line) {
            Some(Some(value)) => value,
            Some(None) => return Err(format!("COPY row {row_no}: the sharding key is NULL")),
            None => {
                return Err(format!(
                    "COPY row {row_no}: no field {} (the sharding key)",
                    self.key_at + 1
                ))
            }
        };
        let key = parse_text(&key, self.key_type).map_err(|e| format!("COPY row {row_no}: {e}"))?;
        let backend: BackendId = owner(self.map, &key);
        match out.get_mut(backend) {
            Some(o) => o.extend_from_slice(row),
            None => return Err(format!("COPY row {row_no}: no backend {backend}")),
        }
        Ok(())
    }

    /// The key field's value: `None` if the row is too short, `Some(None)` for NULL.
    fn key_field(&self, line: &[u8]) -> Option<Option<Vec<u8>>> {
        if self.format.csv {
            csv_field(line, &self.format, self.key_at)
        } else {
            text_field(line, &self.format, self.key_at)
        }
    }
}

/// Field `at` of a text-format line, its escapes decoded.
fn text_field(line: &[u8], f: &CopyFormat, at: usize) -> Option<Option<Vec<u8>>> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    let mut end = line.len();
    while i < line.len() {
        if line[i] == b'\\' {
            i += 2;
            continue;
        }
        if line[i] == f.delimiter {
            if field == at {
                end = i;
                break;
            }
            field += 1;
            start = i + 1;
        }
        i += 1;
    }
    if field != at {
        return None;
    }
    let raw = &line[start..end.max(start)];
    if raw == f.null.as_slice() {
        return Some(None);
    }
    Some(Some(unescape_text(raw)))
}

/// PostgreSQL's text-format escapes: `\n`, `\t`, octal `\NNN`, hex `\xHH`, and a
/// backslash before any other character standing for that character.
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 >= raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        let simple = match c {
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
        } else if (b'0'..=b'7').contains(&c) {
            let mut value = u32::from(c - b'0');
            for _ in 0..2 {
                match raw.get(i) {
                    Some(d @ b'0'..=b'7') => {
                        value = value * 8 + u32::from(d - b'0');
                        i += 1;
                    }
                    _ => break,
                }
            }
            out.push((value & 0xff) as u8);
        } else if c == b'x' && raw.get(i).is_some_and(u8::is_ascii_hexdigit) {
            let mut value = 0u32;
            for _ in 0..2 {
                match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                    Some(d) => {
                        value = value * 16 + d;
                        i += 1;
                    }
                    None => break,
                }
            }
            out.push(value as u8);
        } else {
            out.push(c);
        }
    }
    out
}

/// Field `at` of a CSV line, unquoted. An unquoted field equal to the NULL string
/// is NULL.
fn csv_field(line: &[u8], f: &CopyFormat, at: usize) -> Option<Option<Vec<u8>>> {
    let mut i = 0;
    let mut field = 0;
    loop {
        let mut value = Vec::new();
        let mut quoted = false;
        while i < line.len() && line[i] != f.delimiter {
            if line[i] != f.quote {
                value.push(line[i]);
                i += 1;
                continue;
            }
            quoted = true;
            i += 1;
            while i < line.len() {
                let c = line[i];
                let next = line.get(i + 1).copied();
                if c == f.escape
                    && (next == Some(f.quote) || (next == Some(f.escape) && f.escape != f.quote))
                {
                    value.push(line[i + 1]);
                    i += 2;
                } else if c == f.quote {
                    i += 1;
                    break;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        if field == at {
            if !quoted && value == f.null {
                return Some(None);
            }
            return Some(Some(value));
        }
        if i >= line.len() {
            return None;
        }
        // Past the delimiter.
        i += 1;
        field += 1;
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
