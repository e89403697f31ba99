//! The SQL a vshard move runs on its backends.
//!
//! On the source, triggers on each sharded table log the key of every row written
//! while the move runs (`pgshard.move_changes`; a TRUNCATE logs a NULL key, rows
//! with a NULL key are in no vshard and are not logged), so the
//! copy can catch up. On the target, each table's rows of the vshard gather in a
//! staging table (`pgshard.move_<id>_<n>`, invisible to clients) until the switch
//! inserts them into the table in one prepared transaction.

use super::schema::{ident, literal};
use crate::router::hash::{KeyType, COMBINE, SEED};

/// Serializes pgshard's DDL on a backend (several proxies, or moves, at once).
pub const DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(7243600001)";

/// The change log, its trigger function (created once per backend, kept), under
/// `DDL_LOCK`.
pub const CAPTURE_SETUP: &str = "SELECT pg_advisory_xact_lock(7243600001); \
    CREATE SCHEMA IF NOT EXISTS pgshard; \
    CREATE TABLE IF NOT EXISTS pgshard.move_changes (\
      id bigserial PRIMARY KEY, move_id text NOT NULL, tbl text NOT NULL, key text); \
    CREATE OR REPLACE FUNCTION pgshard.move_capture() RETURNS trigger LANGUAGE plpgsql AS $f$ \
    BEGIN \
      IF TG_LEVEL = 'STATEMENT' THEN \
        INSERT INTO pgshard.move_changes (move_id, tbl, key) VALUES (TG_ARGV[0], TG_ARGV[2], NULL); \
        RETURN NULL; \
      END IF; \
      IF TG_OP <> 'INSERT' AND to_jsonb(OLD) ->> TG_ARGV[1] IS NOT NULL THEN \
        INSERT INTO pgshard.move_changes (move_id, tbl, key) \
          VALUES (TG_ARGV[0], TG_ARGV[2], to_jsonb(OLD) ->> TG_ARGV[1]); \
      END IF; \
      IF TG_OP <> 'DELETE' AND to_jsonb(NEW) ->> TG_ARGV[1] IS NOT NULL THEN \
        INSERT INTO pgshard.move_changes (move_id, tbl, key) \
          VALUES (TG_ARGV[0], TG_ARGV[2], to_jsonb(NEW) ->> TG_ARGV[1]); \
      END IF; \
      RETURN NULL; \
    END $f$";

/// A sharded table as a move sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MovedTable {
    /// As the map names it (resolved by the backends' search_path).
    pub name: String,
    pub key: String,
    pub key_type: KeyType,
    /// Its columns as the target orders them (quoted, comma-separated; generated
    /// columns left out); named in every COPY and INSERT of the move.
    #[serde(default)]
    pub columns: String,
}

impl MovedTable {
    /// SQL true for the rows of `vshard`: the key's vshard computed as DESIGN.md
    /// section 3 says (PostgreSQL's hash-partitioning hash, unsigned arithmetic in
    /// numeric).
    pub fn in_vshard(&self, vshard: u32, vshards: u32) -> String {
        let column = ident(&self.key);
        let hash = match self.key_type {
            KeyType::Int => format!("hashint8extended({column}::int8, {SEED})"),
            KeyType::Text => format!("hashtextextended({column}::text, {SEED})"),
            KeyType::Uuid => format!("uuid_hash_extended({column}::uuid, {SEED})"),
        };
        format!(
            "(({hash}::numeric + 18446744073709551616 + {COMBINE}) \
             % 18446744073709551616) % {vshards} = {vshard}"
        )
    }

    /// SQL true for the rows whose key is one of `keys` (texts as the log has them).
    pub fn with_keys(&self, keys: &[String]) -> String {
        let cast = match self.key_type {
            KeyType::Int => "int8",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        };
        let list: Vec<String> = keys.iter().map(|k| literal(k)).collect();
        format!(
            "{} = ANY(ARRAY[{}]::{cast}[])",
            ident(&self.key),
            list.join(", ")
        )
    }

    /// The table's name as SQL (each dotted part quoted).
    pub fn sql_name(&self) -> String {
        let parts: Vec<String> = self.name.split('.').map(ident).collect();
        parts.join(".")
    }
}

/// The names of a move's objects.
pub struct Names<'a> {
    pub id: &'a str,
}

impl Names<'_> {
    pub fn staging(&self, index: usize) -> String {
        format!("pgshard.{}", ident(&format!("move_{}_{index}", self.id)))
    }

    fn trigger(&self, what: &str) -> String {
        ident(&format!("pgshard_move_{}_{what}", self.id))
    }

    /// The prepared transaction that puts the rows into the target's tables.
    pub fn gid(&self) -> String {
        format!("move_pgshard_{}", self.id)
    }

    pub fn create_triggers(&self, table: &MovedTable) -> String {
        let args = format!(
            "{}, {}, {}",
            literal(self.id),
            literal(&table.key),
            literal(&table.name)
        );
        let name = table.sql_name();
        format!(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {name} \
               FOR EACH ROW EXECUTE FUNCTION pgshard.move_capture({args}); \
             CREATE TRIGGER {} AFTER TRUNCATE ON {name} \
               FOR EACH STATEMENT EXECUTE FUNCTION pgshard.move_capture({args})",
            self.trigger("rows"),
            self.trigger("truncate"),
        )
    }

    pub fn drop_triggers(&self, table: &MovedTable) -> String {
        let name = table.sql_name();
        format!(
            "DROP TRIGGER IF EXISTS {} ON {name}; DROP TRIGGER IF EXISTS {} ON {name}",
            self.trigger("rows"),
            self.trigger("truncate"),
        )
    }

    /// Takes the changes logged so far: `[table, key]` JSON arrays (key null for
    /// a TRUNCATE).
    pub fn take_changes(&self) -> String {
        format!(
            "DELETE FROM pgshard.move_changes WHERE move_id = {} \
             RETURNING json_build_array(tbl, key)::text",
            literal(self.id)
        )
    }

    pub fn forget_changes(&self) -> String {
        format!(
            "DELETE FROM pgshard.move_changes WHERE move_id = {}",
            literal(self.id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_and_names_quote_what_they_embed() {
        let table = MovedTable {
            name: "public.or\"ders".into(),
            key: "id".into(),
            key_type: KeyType::Text,
            columns: "\"id\"".into(),
        };
        assert_eq!(table.sql_name(), "\"public\".\"or\"\"ders\"");
        assert_eq!(
            table.with_keys(&["a'b".into(), "c".into()]),
            "\"id\" = ANY(ARRAY['a''b', 'c']::text[])"
        );
        assert!(table
            .in_vshard(7, 1000)
            .starts_with("((hashtextextended(\"id\"::text, 8816678312871386365)::numeric"));
        assert!(table.in_vshard(7, 1000).ends_with("% 1000 = 7"));
        let names = Names { id: "ab12" };
        assert_eq!(names.staging(3), "pgshard.\"move_ab12_3\"");
        assert_eq!(names.gid(), "move_pgshard_ab12");
        assert!(names
            .create_triggers(&table)
            .contains("pgshard.move_capture('ab12', 'id', 'public.or\"ders')"));
    }
}
