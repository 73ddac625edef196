//! The budgets table on PostgreSQL. A change runs in one transaction under
//! an advisory lock on the budget's key, so hosts changing the same budget
//! at once apply their changes one after the other.

use super::PostgresStore;
use crate::error::CoreResult;
use crate::ledger::budget_table::{
    apply_change, check_change, check_key, BudgetChange, BudgetTable, StoredBudget,
};
use crate::ledger::store::MeteringStore;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// Idempotent (`IF NOT EXISTS`), so running it again over a ledger that has the
/// table, its recorded schema version set back, does no harm.
pub const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS {s}.budgets (
    namespace   TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    definition  TEXT   NOT NULL,
    created_us  BIGINT NOT NULL,
    updated_us  BIGINT NOT NULL,
    deleted_us  BIGINT,
    reset_us    BIGINT,
    PRIMARY KEY (namespace, name)
);
"#;

const COLUMNS: &str = "namespace, name, definition, created_us, updated_us, deleted_us, reset_us";

fn from_row(row: &Row) -> StoredBudget {
    StoredBudget {
        namespace: row.get(0),
        name: row.get(1),
        definition: row.get(2),
        created_us: row.get(3),
        updated_us: row.get(4),
        deleted_us: row.get(5),
        reset_us: row.get(6),
    }
}

async fn row_of(
    client: &impl GenericClient,
    s: &str,
    namespace: &str,
    name: &str,
) -> CoreResult<Option<StoredBudget>> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM {s}.budgets WHERE namespace = $1 AND name = $2"),
            &[&namespace, &name],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

impl BudgetTable for PostgresStore {
    fn list_budgets(
        &self,
        namespace: Option<&str>,
        include_deleted: bool,
    ) -> CoreResult<Vec<StoredBudget>> {
        self.read(async |client, s| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM {s}.budgets \
                         WHERE ($1::text IS NULL OR namespace = $1) AND ($2 OR deleted_us IS NULL) \
                         ORDER BY namespace, name"
                    ),
                    &[&namespace, &include_deleted],
                )
                .await?;
            Ok(rows.iter().map(from_row).collect())
        })
    }

    fn budget_row(&self, namespace: &str, name: &str) -> CoreResult<Option<StoredBudget>> {
        check_key(namespace, name)?;
        self.read(async |client, s| row_of(client, s, namespace, name).await)
    }

    fn change_budget(
        &self,
        namespace: &str,
        name: &str,
        change: BudgetChange,
    ) -> CoreResult<StoredBudget> {
        check_change(namespace, name, &change)?;
        if MeteringStore::is_closed(self) {
            return Err(crate::error::CoreError::Store("the store is closed".into()));
        }
        let s = self.schema_sql();
        let lock_key = format!(
            "usagewarden.budget:{}:{namespace}:{name}",
            self.shared.schema
        );
        let now = self.now_us();
        self.runtime.block_on(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
                .await?;
            let existing = row_of(&tx, &s, namespace, name).await?;
            let row = apply_change(namespace, name, existing, change, now)?;
            tx.execute(
                &format!(
                    "INSERT INTO {s}.budgets ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (namespace, name) DO UPDATE SET definition = EXCLUDED.definition, \
                     created_us = EXCLUDED.created_us, updated_us = EXCLUDED.updated_us, \
                     deleted_us = EXCLUDED.deleted_us, reset_us = EXCLUDED.reset_us"
                ),
                &[
                    &row.namespace,
                    &row.name,
                    &row.definition,
                    &row.created_us,
                    &row.updated_us,
                    &row.deleted_us,
                    &row.reset_us,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(row)
        })
    }
}
