//! Row-level security by namespace (opt-in): what a database role may read
//! is bounded in PostgreSQL itself, so a connection of a role granted one
//! namespace reads no other, even with raw SQL.
//!
//! Two things bound a read. `namespace_grants` lists the namespaces each
//! role may read, and only the owner can change it. The session setting
//! `usagewarden.namespace`, which a store opened with `row_security` sets
//! for each read to the read's namespace, narrows that to one namespace
//! (empty: every granted one). A role can change the setting with raw SQL
//! but not its grants: a setting naming a namespace it was not granted
//! selects nothing.
//!
//! The owner (the role that ran the migrations and writes) is not bound:
//! PostgreSQL does not apply a table's policies to its owner unless forced.
//! Partitions get no grants, so they cannot be read around the policies.

use crate::error::{CoreError, CoreResult};
use crate::ledger::event::check_id;
use tokio_postgres::GenericClient;

/// The policy's name on every protected table.
const POLICY: &str = "usagewarden_namespace";

/// The per-read setting a store with `row_security` sets.
pub const SETTING: &str = "usagewarden.namespace";

const GRANTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {s}.namespace_grants (
    role      NAME NOT NULL,
    namespace TEXT NOT NULL,
    PRIMARY KEY (role, namespace)
)";

/// Lets `role` read `namespace`: turns row security on for every table
/// with a namespace (idempotent) and gives the role read access to them.
pub async fn grant(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    schema_name: &str,
    role: &str,
    namespace: &str,
) -> CoreResult<()> {
    let role_sql = existing_role(tx, role).await?;
    check_id("namespace", namespace)?;
    protect(tx, s, schema_name).await?;
    let tables = namespaced_tables(tx, schema_name).await?;
    tx.batch_execute(&read_access(s, &tables, &role_sql))
        .await?;
    tx.execute(
        &format!("INSERT INTO {s}.namespace_grants VALUES ($1, $2) ON CONFLICT DO NOTHING"),
        &[&role, &namespace],
    )
    .await?;
    Ok(())
}

/// Takes `namespace` back from `role`; `false` when it was not granted.
pub async fn revoke(
    c: &impl GenericClient,
    s: &str,
    role: &str,
    namespace: &str,
) -> CoreResult<bool> {
    if !enabled(c, s).await? {
        return Ok(false);
    }
    let removed = c
        .execute(
            &format!("DELETE FROM {s}.namespace_grants WHERE role = $1 AND namespace = $2"),
            &[&role, &namespace],
        )
        .await?;
    Ok(removed > 0)
}

/// `(role, namespace)` of every grant, in order.
pub async fn grants(c: &impl GenericClient, s: &str) -> CoreResult<Vec<(String, String)>> {
    if !enabled(c, s).await? {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            &format!("SELECT role::text, namespace FROM {s}.namespace_grants ORDER BY 1, 2"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Whether row security was turned on (a grant was ever made).
pub async fn enabled(c: &impl GenericClient, s: &str) -> CoreResult<bool> {
    let row = c
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{s}.namespace_grants")],
        )
        .await?;
    Ok(row.get(0))
}

/// The statements that let `role_sql` (quoted) read `tables` of schema `s`.
fn read_access(s: &str, tables: &[String], role_sql: &str) -> String {
    let mut grants = format!("GRANT USAGE ON SCHEMA {s} TO {role_sql}; ");
    for table in tables {
        grants.push_str(&format!("GRANT SELECT ON {s}.\"{table}\" TO {role_sql}; "));
    }
    grants.push_str(&format!(
        "GRANT SELECT ON {s}.schema_version, {s}.namespace_grants TO {role_sql};"
    ));
    grants
}

/// Row security and the policy on every table with a namespace, and on the
/// grants themselves (a role sees only its own). Run again after a
/// migration, so a table added later is protected too, and readable by the
/// roles already granted a namespace.
pub async fn protect(
    tx: &tokio_postgres::Transaction<'_>,
    s: &str,
    schema_name: &str,
) -> CoreResult<()> {
    tx.batch_execute(&GRANTS_TABLE.replace("{s}", s)).await?;
    let mut ddl = format!(
        "ALTER TABLE {s}.namespace_grants ENABLE ROW LEVEL SECURITY; \
         DROP POLICY IF EXISTS {POLICY} ON {s}.namespace_grants; \
         CREATE POLICY {POLICY} ON {s}.namespace_grants FOR SELECT USING (role = current_user); "
    );
    let tables = namespaced_tables(tx, schema_name).await?;
    for table in &tables {
        let t = format!("{s}.\"{table}\"");
        ddl.push_str(&format!(
            "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; \
             DROP POLICY IF EXISTS {POLICY} ON {t}; \
             CREATE POLICY {POLICY} ON {t} FOR SELECT USING ( \
                 namespace IN (SELECT g.namespace FROM {s}.namespace_grants g \
                               WHERE g.role = current_user) \
                 AND COALESCE(current_setting('{SETTING}', true), '') IN ('', namespace)); "
        ));
    }
    // Names read back from `pg_roles`, so only existing roles, quoted.
    let granted = tx
        .query(
            &format!(
                "SELECT DISTINCT r.rolname::text FROM {s}.namespace_grants g \
                 JOIN pg_roles r ON r.rolname = g.role ORDER BY 1"
            ),
            &[],
        )
        .await?;
    for row in granted {
        let name: String = row.get(0);
        let role_sql = format!("\"{}\"", name.replace('"', "\"\""));
        ddl.push_str(&read_access(s, &tables, &role_sql));
    }
    tx.batch_execute(&ddl).await?;
    Ok(())
}

/// The schema's tables (not partitions) that have a `namespace` column.
async fn namespaced_tables(c: &impl GenericClient, schema_name: &str) -> CoreResult<Vec<String>> {
    let rows = c
        .query(
            "SELECT c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'namespace' AND NOT a.attisdropped \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND c.relname <> 'namespace_grants' \
             ORDER BY 1",
            &[&schema_name],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `role` quoted for DDL, once PostgreSQL confirms it exists (DDL cannot
/// bind a role name; only a name read back from `pg_roles` is used).
async fn existing_role(c: &impl GenericClient, role: &str) -> CoreResult<String> {
    if role.is_empty() {
        return Err(CoreError::InvalidArgument(
            "role",
            "must be a role name".into(),
        ));
    }
    let found = c
        .query_opt(
            "SELECT rolname::text FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?;
    match found {
        Some(row) => {
            let name: String = row.get(0);
            Ok(format!("\"{}\"", name.replace('"', "\"\"")))
        }
        None => Err(CoreError::InvalidArgument(
            "role",
            format!("no PostgreSQL role is named {role:?}; create it first (CREATE ROLE … LOGIN)"),
        )),
    }
}
