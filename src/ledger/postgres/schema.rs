//! The PostgreSQL schema: versioned migrations run under an advisory lock,
//! and the monthly partitions of `usage_events`.

use crate::error::{CoreError, CoreResult};
use chrono::{DateTime, Datelike, Months};
use tokio_postgres::Client;

/// Ordered migrations; `schema_version` records how many have run. `{s}` is
/// the (validated, quoted) schema name.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE {s}.usage_events_id;
CREATE TABLE {s}.usage_events (
    id                 BIGINT  NOT NULL DEFAULT nextval('{s}.usage_events_id'),
    namespace          TEXT    NOT NULL,
    request_id         TEXT    NOT NULL,
    ts                 BIGINT  NOT NULL,
    agent_id           TEXT    NOT NULL,
    consumer_id        TEXT    NOT NULL,
    task_id            TEXT,
    action             TEXT    NOT NULL,
    model              TEXT,
    tokens_in          BIGINT  NOT NULL,
    tokens_out         BIGINT  NOT NULL,
    cache_read_tokens  BIGINT  NOT NULL,
    cache_write_tokens BIGINT  NOT NULL,
    duration_ms        BIGINT  NOT NULL,
    api_calls          BIGINT  NOT NULL,
    units              BIGINT  NOT NULL,
    cost_nanos         BIGINT,
    source             TEXT,
    metadata           TEXT,
    fingerprint        BIGINT  NOT NULL,
    cost_priced        BOOLEAN NOT NULL DEFAULT FALSE
) PARTITION BY RANGE (ts);
CREATE INDEX usage_events_ts        ON {s}.usage_events (ts, id);
CREATE INDEX usage_events_namespace ON {s}.usage_events (namespace, ts);
CREATE INDEX usage_events_agent     ON {s}.usage_events (agent_id, ts);
CREATE INDEX usage_events_consumer  ON {s}.usage_events (consumer_id, ts);
CREATE INDEX usage_events_task      ON {s}.usage_events (task_id, ts) WHERE task_id IS NOT NULL;
CREATE INDEX usage_events_model     ON {s}.usage_events (model, ts) WHERE model IS NOT NULL;
CREATE INDEX usage_events_action    ON {s}.usage_events (action, ts);
-- A unique index on a partitioned table must hold the partition key, so the
-- identity of an event, (namespace, request_id), is kept unique here.
CREATE TABLE {s}.request_keys (
    namespace   TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    fingerprint BIGINT NOT NULL,
    ts          BIGINT NOT NULL,
    PRIMARY KEY (namespace, request_id)
);
CREATE INDEX request_keys_ts ON {s}.request_keys (ts);
CREATE TABLE {s}.usage_hourly (
    namespace          TEXT   NOT NULL,
    hour               BIGINT NOT NULL,
    events             BIGINT NOT NULL,
    tokens_in          BIGINT NOT NULL,
    tokens_out         BIGINT NOT NULL,
    cache_read_tokens  BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    duration_ms        BIGINT NOT NULL,
    api_calls          BIGINT NOT NULL,
    units              BIGINT NOT NULL,
    cost_nanos         BIGINT,
    unpriced_events    BIGINT NOT NULL,
    PRIMARY KEY (namespace, hour)
);
"#,
    r#"
ALTER TABLE {s}.usage_events ADD COLUMN artifact_digest TEXT;
"#,
    // The hash chain (`super::chain`).
    super::chain::MIGRATION,
    // Budgets managed at run time (`super::budgets`).
    super::budgets::MIGRATION,
    // Totals per hour × namespace × agent × consumer × model × action, in
    // place of the totals per namespace and hour.
    super::grouped::MIGRATION,
    // Totals per UTC day × the same keys (`super::coarse`).
    super::coarse::MIGRATION,
    // Totals per hour × namespace × model, and who was seen in which hours
    // of each UTC day (`super::calendar`).
    super::calendar::MIGRATION,
    // A narrower `request_keys` (`super::request_keys`).
    super::request_keys::MIGRATION,
    // Totals per hour and per UTC day × namespace × agent × consumer
    // (`super::pairs`).
    super::pairs::MIGRATION,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A schema name used as given in SQL: lower-case letters, digits and `_`,
/// not starting with a digit, at most 63 bytes (PostgreSQL's limit).
pub fn validate_schema(name: &str) -> CoreResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(
            "schema",
            format!(
                "must be lower-case letters, digits and _ (not starting with a digit or pg_, at most 63), got {name:?}"
            ),
        ))
    }
}

/// Creates the schema or brings it up to date. Hosts opening at once wait
/// on one advisory lock, so each migration runs once; a schema written by a
/// newer version is refused.
pub async fn migrate(client: &mut Client, schema: &str) -> CoreResult<()> {
    if up_to_date(client, schema).await? {
        // No DDL and no lock: a role that may only read opens the store too.
        return Ok(());
    }
    let tx = client.transaction().await?;
    lock_migrations(&tx, schema).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
         CREATE TABLE IF NOT EXISTS \"{schema}\".schema_version (version INTEGER NOT NULL)"
    ))
    .await?;
    let row = tx
        .query_one(
            &format!("SELECT MAX(version) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await?;
    let current = i64::from(row.get::<_, Option<i32>>(0).unwrap_or(0));
    if current > SCHEMA_VERSION {
        return Err(CoreError::Store(format!(
            "the ledger schema {schema:?} is at version {current}, newer than this usagewarden's {SCHEMA_VERSION}; upgrade usagewarden"
        )));
    }
    let quoted = format!("\"{schema}\"");
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(&sql.replace("{s}", &quoted)).await?;
        if i as i64 + 1 == super::chain::CHAIN_SCHEMA_VERSION {
            super::chain::chain_existing(&tx, &quoted).await?;
        }
        if *sql == super::grouped::MIGRATION {
            super::grouped::fill(&tx, &quoted).await?;
        }
        if *sql == super::pairs::MIGRATION {
            super::pairs::fill(&tx, &quoted).await?;
        }
        tx.execute(
            &format!("INSERT INTO \"{schema}\".schema_version VALUES ($1)"),
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    if current < SCHEMA_VERSION && super::row_security::enabled(&tx, &quoted).await? {
        super::row_security::protect(&tx, &quoted, schema).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Holds the schema's migration lock until `tx` ends.
pub async fn lock_migrations(tx: &tokio_postgres::Transaction<'_>, schema: &str) -> CoreResult<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("usagewarden.migrate:{schema}")],
    )
    .await?;
    Ok(())
}

/// Whether the schema exists at this version, read without writing.
async fn up_to_date(client: &Client, schema: &str) -> CoreResult<bool> {
    let table = format!("\"{schema}\".schema_version");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    if !exists {
        return Ok(false);
    }
    let row = client
        .query_one(&format!("SELECT MAX(version) FROM {table}"), &[])
        .await?;
    Ok(i64::from(row.get::<_, Option<i32>>(0).unwrap_or(0)) == SCHEMA_VERSION)
}

/// The UTC month holding `ts_us`: `(first µs, first µs of the next, "YYYYMM")`.
pub fn month_of(ts_us: i64) -> Option<(i64, i64, String)> {
    let date = DateTime::from_timestamp_micros(ts_us)?
        .date_naive()
        .with_day(1)?;
    let next = date.checked_add_months(Months::new(1))?;
    let start = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    let end = next.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    let suffix = format!(
        "{}{:04}{:02}",
        if date.year() < 0 { "m" } else { "" },
        date.year().abs(),
        date.month()
    );
    Some((start, end, suffix))
}

/// Creates the monthly partitions that `months` (starts from `month_of`)
/// need and do not have, in their own transaction under the schema's lock.
pub async fn create_partitions(
    client: &mut Client,
    schema: &str,
    months: &[(i64, i64, String)],
) -> CoreResult<()> {
    let mut missing = Vec::new();
    for month in months {
        let table = format!("\"{schema}\".usage_events_p{}", month.2);
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await?
            .get(0);
        if !exists {
            missing.push(month);
        }
    }
    if missing.is_empty() {
        // Nothing to create: no lock and no DDL (a reading role opens the store too).
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("usagewarden.partitions:{schema}")],
    )
    .await?;
    for (start, end, suffix) in missing {
        // Bounds are integers we computed; DDL takes no parameters.
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".usage_events_p{suffix} \
             PARTITION OF \"{schema}\".usage_events FOR VALUES FROM ({start}) TO ({end})"
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Every partition: `(table name, lower bound, upper bound)`, oldest first.
pub async fn partitions(
    client: &impl deadpool_postgres::GenericClient,
    schema: &str,
) -> CoreResult<Vec<(String, i64, i64)>> {
    let rows = client
        .query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = (quote_ident($1) || '.usage_events')::regclass",
            &[&schema],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let bound: String = row.get(1);
        // FOR VALUES FROM ('123') TO ('456')
        let numbers: Vec<i64> = bound
            .split(|c: char| !(c.is_ascii_digit() || c == '-'))
            .filter_map(|p| p.parse().ok())
            .collect();
        if let [lo, hi] = numbers[..] {
            out.push((name, lo, hi));
        }
    }
    out.sort_by_key(|p| p.1);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked_before_any_sql() {
        assert!(validate_schema("usagewarden").is_ok());
        assert!(validate_schema("uw_2").is_ok());
        for bad in [
            "",
            "1x",
            "Upper",
            "a-b",
            "a\"; DROP",
            "pg_catalog",
            &"x".repeat(64),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn months_cover_their_timestamps() {
        let (start, end, name) = month_of(1_771_070_400_000_000).unwrap(); // 2026-02-14
        assert_eq!(name, "202602");
        assert!(start <= 1_771_070_400_000_000 && 1_771_070_400_000_000 < end);
        let (_, _, old) = month_of(-1).unwrap();
        assert_eq!(old, "196912");
    }
}
