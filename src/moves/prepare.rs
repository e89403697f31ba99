//! Before a move copies anything (step 1 of `mover.rs`): the tables as the target
//! has them, checked against the source, none of the vshard's rows on the target
//! yet; then the capture triggers on the source and the staging tables on the
//! target.

use super::finish::retry_locked;
use super::mover::{failed, Mover};
use super::schema::{self, literal};
use super::sql::{Names, CAPTURE_SETUP, DDL_LOCK};

/// A table's columns in a stable form: quoted names, in `order` (`attnum` or
/// `attname`), dropped and generated columns left out (PostgreSQL computes those).
fn columns_sql(table: &str, order: &str) -> String {
    format!(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY {order}) FROM pg_attribute \
         WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped \
           AND attgenerated = ''",
        literal(table)
    )
}

impl Mover {
    /// Creates on the target the tables it lacks, keeps the tables the source has,
    /// takes the target's column order (the columns must be the same on both), and
    /// refuses a target that already holds rows of the vshard.
    pub(super) async fn check_tables(&mut self) -> Result<(), String> {
        let names: Vec<String> = self.record.tables.iter().map(|t| t.name.clone()).collect();
        schema::copy_missing(std::slice::from_mut(&mut self.src), &mut self.dst, &names).await?;
        let mut present = Vec::new();
        for mut table in std::mem::take(&mut self.record.tables) {
            // Tables the source lacks hold no rows to move.
            if !schema::exists(&mut self.src, &table.name)
                .await
                .map_err(failed("source"))?
            {
                continue;
            }
            let one =
                |rows: Vec<Option<String>>| rows.into_iter().flatten().next().unwrap_or_default();
            let by_name = columns_sql(&table.name, "attname");
            let source = one(self
                .src
                .query_column(&by_name)
                .await
                .map_err(failed("source"))?);
            let target = one(self
                .dst
                .query_column(&by_name)
                .await
                .map_err(failed("target"))?);
            if source != target {
                return Err(format!(
                    "table \"{}\" has other columns on \"{}\" ({source}) than on \"{}\" ({target})",
                    table.name, self.record.source, self.record.target
                ));
            }
            let in_order = columns_sql(&table.name, "attnum");
            table.columns = one(self
                .dst
                .query_column(&in_order)
                .await
                .map_err(failed("target"))?);
            present.push(table);
        }
        self.record.tables = present;
        let (vshard, vshards) = (self.record.vshard, self.record.vshards);
        for table in &self.record.tables {
            let sql = format!(
                "SELECT count(*) FROM {} WHERE {}",
                table.sql_name(),
                table.in_vshard(vshard, vshards)
            );
            let rows = self
                .dst
                .query_column(&sql)
                .await
                .map_err(failed("target"))?;
            if rows.first() != Some(&Some("0".into())) {
                return Err(format!(
                    "backend \"{}\" already holds rows of vshard {vshard} in \"{}\" (rows there \
                     that its map does not route to it); remove them first",
                    self.record.target, table.name
                ));
            }
        }
        Ok(())
    }

    /// The capture triggers on the source (their CREATE waits for transactions
    /// that wrote the table before, so every later write is logged) and the
    /// staging tables on the target.
    pub(super) async fn install_capture(&mut self) -> Result<(), String> {
        // A concurrent creator of the schema outside DDL_LOCK (two-phase recovery's
        // log) may make the first try fail; the second finds it there.
        if self.src.execute(CAPTURE_SETUP).await.is_err() {
            self.src
                .execute(CAPTURE_SETUP)
                .await
                .map_err(failed("capture setup on the source"))?;
        }
        self.dst
            .execute(&format!("{DDL_LOCK}; CREATE SCHEMA IF NOT EXISTS pgshard"))
            .await
            .map_err(failed("target"))?;
        let names = Names {
            id: &self.record.id,
        };
        for (i, table) in self.record.tables.iter().enumerate() {
            retry_locked(&mut self.src, &names.create_triggers(table))
                .await
                .map_err(failed("capture triggers on the source"))?;
            let sql = format!(
                "CREATE TABLE {} (LIKE {})",
                names.staging(i),
                table.sql_name()
            );
            self.dst
                .execute(&sql)
                .await
                .map_err(failed("staging table"))?;
        }
        Ok(())
    }
}
