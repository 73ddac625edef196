//! The budgets table on SQLite: read on a pooled reader, changed on the
//! write connection (in order with event writes) in one transaction.

use super::SqliteStore;
use crate::error::CoreResult;
use crate::ledger::budget_table::{
    apply_change, check_change, check_key, BudgetChange, BudgetTable, StoredBudget,
};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::sync::Arc;

/// Idempotent (`IF NOT EXISTS`), so running it again over a ledger that has the
/// table, its recorded schema version set back, does no harm.
pub const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS budgets (
    namespace   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    definition  TEXT    NOT NULL,
    created_us  INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL,
    deleted_us  INTEGER,
    reset_us    INTEGER,
    PRIMARY KEY (namespace, name)
);
"#;

const COLUMNS: &str =
    "namespace, name, definition, created_us, updated_us, deleted_us, reset_us FROM budgets";

fn from_row(row: &Row<'_>) -> rusqlite::Result<StoredBudget> {
    Ok(StoredBudget {
        namespace: row.get(0)?,
        name: row.get(1)?,
        definition: row.get(2)?,
        created_us: row.get(3)?,
        updated_us: row.get(4)?,
        deleted_us: row.get(5)?,
        reset_us: row.get(6)?,
    })
}

fn row_of(conn: &Connection, namespace: &str, name: &str) -> CoreResult<Option<StoredBudget>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} WHERE namespace = ?1 AND name = ?2"
        ))?
        .query_row(params![namespace, name], from_row)
        .optional()?)
}

impl BudgetTable for SqliteStore {
    fn list_budgets(
        &self,
        namespace: Option<&str>,
        include_deleted: bool,
    ) -> CoreResult<Vec<StoredBudget>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} WHERE (?1 IS NULL OR namespace = ?1) \
                 AND (?2 OR deleted_us IS NULL) ORDER BY namespace, name"
            ))?;
            let rows = stmt.query_map(params![namespace, include_deleted], from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn budget_row(&self, namespace: &str, name: &str) -> CoreResult<Option<StoredBudget>> {
        check_key(namespace, name)?;
        self.read(|conn| row_of(conn, namespace, name))
    }

    fn change_budget(
        &self,
        namespace: &str,
        name: &str,
        change: BudgetChange,
    ) -> CoreResult<StoredBudget> {
        check_change(namespace, name, &change)?;
        let written = Arc::new(Mutex::new(None));
        let out = written.clone();
        let (namespace, name, now) = (namespace.to_string(), name.to_string(), self.now_us());
        self.with_writer(Box::new(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = row_of(&tx, &namespace, &name)?;
            let row = apply_change(&namespace, &name, existing, change, now)?;
            tx.execute(
                "INSERT INTO budgets (namespace, name, definition, created_us, updated_us, deleted_us, reset_us) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (namespace, name) DO UPDATE SET definition = excluded.definition, \
                 created_us = excluded.created_us, updated_us = excluded.updated_us, \
                 deleted_us = excluded.deleted_us, reset_us = excluded.reset_us",
                params![
                    row.namespace,
                    row.name,
                    row.definition,
                    row.created_us,
                    row.updated_us,
                    row.deleted_us,
                    row.reset_us
                ],
            )?;
            tx.commit()?;
            *out.lock() = Some(row);
            Ok(1)
        }))?;
        let row = written.lock().take();
        Ok(row.expect("the write job ran"))
    }
}
