//! The hash chain on PostgreSQL: each row's position and digest, the head
//! per namespace in `chain_heads` and the runs a purge removed in
//! `chain_purges` (the SQLite store's layout). Many hosts write one ledger:
//! each write transaction locks the heads of its namespaces (`FOR UPDATE`,
//! in namespace order, so two hosts never deadlock) before it decides which
//! of its events are new, so the chain is extended in commit order and
//! never forks.

use super::read::event_from_row;
use crate::error::{CoreError, CoreResult};
use crate::ledger::chain::{digest_from_slice, link, Canonical, Digest, GENESIS, PAYLOAD_CAPACITY};
use crate::ledger::chain_source::{stored_digest, ChainSource, PurgedRuns, Rows};
use crate::ledger::chain_verify::{ChainRow, PurgedRun, Walked};
use crate::ledger::event::UsageEvent;
use futures_util::future::try_join3;
use hashbrown::HashMap;
use std::future::Future;
use tokio::runtime::Handle;
use tokio_postgres::{Client, Row, Statement, Transaction};

/// The schema version whose migration adds the chain (`chain_existing` runs with it).
pub const CHAIN_SCHEMA_VERSION: i64 = 3;

/// `usage_events` is partitioned, so `(namespace, chain_position)` cannot be
/// a unique index (it would need the partition key); the writer's head lock
/// is what keeps positions unique, and `verify` names a repeated one.
pub const MIGRATION: &str = r#"
ALTER TABLE {s}.usage_events ADD COLUMN chain_position BIGINT;
ALTER TABLE {s}.usage_events ADD COLUMN chain_digest BYTEA;
CREATE INDEX usage_events_chain ON {s}.usage_events (namespace, chain_position);
CREATE TABLE {s}.chain_heads (
    namespace TEXT   PRIMARY KEY,
    position  BIGINT NOT NULL,
    digest    BYTEA  NOT NULL
);
CREATE TABLE {s}.chain_purges (
    id             BIGSERIAL PRIMARY KEY,
    namespace      TEXT   NOT NULL,
    first_position BIGINT NOT NULL,
    last_position  BIGINT NOT NULL,
    digest         BYTEA  NOT NULL,
    cutoff_us      BIGINT NOT NULL,
    purged_at_us   BIGINT NOT NULL
);
CREATE INDEX chain_purges_namespace ON {s}.chain_purges (namespace, first_position);
"#;

/// Columns that rebuild the event as the caller recorded it (a cost the
/// store's pricing filled in reads as NULL), then position, digest, id.
const CHAINED_COLUMNS: &str = "agent_id, consumer_id, task_id, namespace, action, model, tokens_in, tokens_out, \
     cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, \
     CASE WHEN cost_priced THEN NULL ELSE cost_nanos END, ts, request_id, source, metadata, artifact_digest, \
     chain_position, chain_digest, id";

/// Rows fetched per round trip when a walk or the migration streams a chain.
const CHUNK_ROWS: i32 = 10_000;

/// The encoded fields of a row selected with `CHAINED_COLUMNS`, borrowed
/// from the row (read as `event_from_row` reads them, without building one).
fn chained_fields(row: &Row) -> Canonical<'_> {
    let text = |i: usize| row.get::<_, &str>(i).as_bytes();
    let opt_text = |i: usize| row.get::<_, Option<&str>>(i).map(str::as_bytes);
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    Canonical {
        agent_id: text(0),
        consumer_id: text(1),
        task_id: opt_text(2),
        namespace: text(3),
        action: text(4),
        model: opt_text(5),
        tokens_in: n(6),
        tokens_out: n(7),
        cache_read_tokens: n(8),
        cache_write_tokens: n(9),
        duration_ms: n(10),
        api_calls: n(11),
        units: n(12),
        cost_nanos: row.get::<_, Option<i64>>(13).map(|c| c.max(0) as u64),
        timestamp_us: row.get(14),
        request_id: text(15),
        source: opt_text(16),
        metadata: opt_text(17),
        artifact_digest: opt_text(18),
    }
}

fn chain_row(row: &Row) -> ChainRow {
    let fields = chained_fields(row);
    let digest: Option<&[u8]> = row.get(20);
    ChainRow {
        position: row.get::<_, Option<i64>>(19).unwrap_or(0),
        payload: fields.to_vec(),
        digest: digest.and_then(digest_from_slice),
        request_id: row.get(15),
    }
}

/// The statements that lock and move the heads, prepared once per writer connection.
#[derive(Clone)]
pub struct HeadStatements {
    create: Statement,
    lock: Statement,
    update: Statement,
}

impl HeadStatements {
    pub async fn prepare(client: &Client, s: &str) -> CoreResult<HeadStatements> {
        Ok(HeadStatements {
            create: client
                .prepare(&format!(
                    "INSERT INTO {s}.chain_heads (namespace, position, digest) \
                     SELECT n, 0, $2 FROM unnest($1::text[]) AS n ORDER BY n ON CONFLICT (namespace) DO NOTHING"
                ))
                .await?,
            lock: client
                .prepare(&format!(
                    "SELECT namespace, position, digest FROM {s}.chain_heads \
                     WHERE namespace = ANY($1) ORDER BY namespace FOR UPDATE"
                ))
                .await?,
            update: client
                .prepare(&format!(
                    "UPDATE {s}.chain_heads h SET position = u.position, digest = u.digest \
                     FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS u(namespace, position, digest) \
                     WHERE h.namespace = u.namespace"
                ))
                .await?,
        })
    }
}

/// The heads one write transaction extends, locked for it.
pub struct Heads {
    heads: HashMap<String, (i64, Digest)>,
    moved: bool,
    /// The payload being chained, reused from one event to the next.
    payload: Vec<u8>,
}

impl Heads {
    /// Creates the missing heads and locks those of `events`' namespaces,
    /// both in namespace order, until the transaction ends; then runs
    /// `after`. The three statements go out pipelined (one round trip) and
    /// the server runs them in that order, so `after` runs under the locks.
    pub async fn lock_then<'e, T>(
        tx: &Transaction<'_>,
        statements: &HeadStatements,
        events: impl Iterator<Item = &'e UsageEvent>,
        after: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> CoreResult<(Heads, T)> {
        let mut names: Vec<&str> = events.map(|e| e.namespace.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        // `try_join3` polls in order: each request is sent in that order.
        let (_, rows, out) = try_join3(
            tx.execute(&statements.create, &[&names, &&GENESIS[..]]),
            tx.query(&statements.lock, &[&names]),
            after,
        )
        .await?;
        let mut heads = HashMap::new();
        for row in rows {
            let digest: &[u8] = row.get(2);
            heads.insert(
                row.get(0),
                (row.get(1), digest_from_slice(digest).unwrap_or(GENESIS)),
            );
        }
        Ok((Heads::new(heads), out))
    }

    fn new(heads: HashMap<String, (i64, Digest)>) -> Heads {
        Heads {
            heads,
            moved: false,
            payload: Vec::with_capacity(PAYLOAD_CAPACITY),
        }
    }

    /// The position and digest of `e`, the next event of its namespace.
    pub fn extend(&mut self, e: &UsageEvent) -> (i64, Digest) {
        let head = self
            .heads
            .entry_ref(e.namespace.as_str())
            .or_insert((0, GENESIS));
        self.payload.clear();
        Canonical::of(e).write(&mut self.payload);
        *head = (head.0 + 1, link(&head.1, &self.payload));
        self.moved = true;
        *head
    }

    /// Writes the heads back, once any moved (those that did not, unchanged).
    pub async fn write(&self, tx: &Transaction<'_>, statements: &HeadStatements) -> CoreResult<()> {
        if !self.moved {
            return Ok(());
        }
        let (mut names, mut positions, mut digests) = (Vec::new(), Vec::new(), Vec::new());
        for (name, (position, digest)) in &self.heads {
            names.push(name.as_str());
            positions.push(*position);
            digests.push(&digest[..]);
        }
        tx.execute(&statements.update, &[&names, &positions, &digests])
            .await?;
        Ok(())
    }
}

/// Chains the rows of a ledger written before the chain existed, per
/// namespace in insertion order (run once, by the migration).
pub async fn chain_existing(tx: &Transaction<'_>, s: &str) -> CoreResult<()> {
    let select = tx
        .prepare(&format!(
            "SELECT {CHAINED_COLUMNS}, ts FROM {s}.usage_events ORDER BY namespace, id"
        ))
        .await?;
    let update = format!(
        "UPDATE {s}.usage_events e SET chain_position = u.position, chain_digest = u.digest \
         FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::bytea[]) AS u(id, ts, position, digest) \
         WHERE e.ts = u.ts AND e.id = u.id"
    );
    let portal = tx.bind(&select, &[]).await?;
    let mut heads = Heads::new(HashMap::new());
    loop {
        let rows = tx.query_portal(&portal, CHUNK_ROWS).await?;
        if rows.is_empty() {
            break;
        }
        let (mut ids, mut tss, mut positions, mut digests) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let (position, digest) = heads.extend(&event_from_row(row));
            ids.push(row.get::<_, i64>(21));
            tss.push(row.get::<_, i64>(22));
            positions.push(position);
            digests.push(digest.to_vec());
        }
        tx.execute(&update, &[&ids, &tss, &positions, &digests])
            .await?;
    }
    let (mut names, mut positions, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for (name, (position, digest)) in &heads.heads {
        names.push(name.as_str());
        positions.push(*position);
        digests.push(&digest[..]);
    }
    tx.execute(
        &format!(
            "INSERT INTO {s}.chain_heads (namespace, position, digest) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])"
        ),
        &[&names, &positions, &digests],
    )
    .await?;
    Ok(())
}

/// Inside a purge's transaction, before it deletes events older than
/// `cutoff_us`: blocks writers until it commits (so no event slips in
/// between the record and the delete) and records each run of consecutive
/// positions it removes, with the digest at its end.
pub async fn record_purges(
    tx: &Transaction<'_>,
    s: &str,
    cutoff_us: i64,
    now_us: i64,
) -> CoreResult<()> {
    tx.batch_execute(&format!("LOCK TABLE {s}.chain_heads IN EXCLUSIVE MODE"))
        .await?;
    let select = tx
        .prepare(&format!(
            "SELECT namespace, chain_position, chain_digest FROM {s}.usage_events \
             WHERE ts < $1 AND chain_position IS NOT NULL ORDER BY namespace, chain_position"
        ))
        .await?;
    let portal = tx.bind(&select, &[&cutoff_us]).await?;
    let mut runs = PurgedRuns::default();
    loop {
        let rows = tx.query_portal(&portal, CHUNK_ROWS).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            // A digest that is not 32 bytes (tampered) leaves a boundary verify rejects.
            let digest = row
                .get::<_, Option<&[u8]>>(2)
                .and_then(digest_from_slice)
                .unwrap_or(GENESIS);
            runs.push(row.get(0), row.get(1), digest);
        }
    }
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {s}.chain_purges (namespace, first_position, last_position, digest, cutoff_us, purged_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .await?;
    for (namespace, run) in runs.finish() {
        tx.execute(
            &insert,
            &[
                &namespace,
                &run.first,
                &run.last,
                &&run.digest[..],
                &cutoff_us,
                &now_us,
            ],
        )
        .await?;
    }
    Ok(())
}

/// The chain as one PostgreSQL transaction sees it, read from outside the runtime.
pub struct PostgresChain<'t, 'c> {
    pub tx: &'t Transaction<'c>,
    pub runtime: &'t Handle,
    /// The quoted schema.
    pub schema: &'t str,
}

impl PostgresChain<'_, '_> {
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> CoreResult<Vec<Row>> {
        Ok(self.runtime.block_on(self.tx.query(sql, params))?)
    }
}

impl ChainSource for PostgresChain<'_, '_> {
    fn namespaces(&mut self) -> CoreResult<Vec<String>> {
        let s = self.schema;
        let rows = self.query(
            &format!("SELECT namespace FROM {s}.chain_heads UNION SELECT DISTINCT namespace FROM {s}.usage_events"),
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn head(&mut self, namespace: &str) -> CoreResult<Option<(i64, Digest)>> {
        let rows = self.query(
            &format!(
                "SELECT position, digest FROM {}.chain_heads WHERE namespace = $1",
                self.schema
            ),
            &[&namespace],
        )?;
        rows.first()
            .map(|r| Ok((r.get(0), stored_digest(r.get(1), "the chain head")?)))
            .transpose()
    }

    fn purged_runs(&mut self, namespace: &str) -> CoreResult<Vec<PurgedRun>> {
        let rows = self.query(
            &format!(
                "SELECT first_position, last_position, digest FROM {}.chain_purges \
                 WHERE namespace = $1 ORDER BY first_position",
                self.schema
            ),
            &[&namespace],
        )?;
        rows.iter()
            .map(|r| {
                Ok(PurgedRun {
                    first: r.get(0),
                    last: r.get(1),
                    digest: stored_digest(r.get(2), "a purge boundary")?,
                })
            })
            .collect()
    }

    fn digest_at(&mut self, namespace: &str, position: i64) -> CoreResult<Option<Digest>> {
        let s = self.schema;
        let rows = self.query(
            &format!(
                "SELECT chain_digest FROM {s}.usage_events WHERE namespace = $1 AND chain_position = $2 \
                 UNION ALL SELECT digest FROM {s}.chain_purges WHERE namespace = $1 AND last_position = $2 LIMIT 1"
            ),
            &[&namespace, &position],
        )?;
        rows.first()
            .map(|r| {
                let bytes: Option<&[u8]> = r.get(0);
                stored_digest(bytes.unwrap_or_default(), "a stored digest")
            })
            .transpose()
    }

    fn with_rows(
        &mut self,
        namespace: &str,
        start: i64,
        end: i64,
        visit: &mut dyn FnMut(&mut Rows<'_>) -> CoreResult<Walked>,
    ) -> CoreResult<Walked> {
        let (tx, runtime) = (self.tx, self.runtime);
        let portal = runtime.block_on(async {
            let select = tx
                .prepare(&format!(
                    "SELECT {CHAINED_COLUMNS} FROM {}.usage_events \
                     WHERE namespace = $1 AND chain_position >= $2 AND chain_position <= $3 \
                     ORDER BY chain_position",
                    self.schema
                ))
                .await?;
            tx.bind(&select, &[&namespace, &start, &end]).await
        })?;
        let mut chunk = Vec::new().into_iter();
        let mut done = false;
        let mut rows = std::iter::from_fn(|| loop {
            if let Some(row) = chunk.next() {
                return Some(Ok(chain_row(&row)));
            }
            if done {
                return None;
            }
            match runtime.block_on(tx.query_portal(&portal, CHUNK_ROWS)) {
                Ok(rows) => {
                    done = rows.len() < CHUNK_ROWS as usize;
                    chunk = rows.into_iter();
                }
                Err(e) => {
                    done = true;
                    return Some(Err(CoreError::from(e)));
                }
            }
        });
        visit(&mut rows)
    }

    fn row(&mut self, namespace: &str, request_id: &str) -> CoreResult<Option<ChainRow>> {
        let rows = self.query(
            &format!(
                "SELECT {CHAINED_COLUMNS} FROM {}.usage_events WHERE namespace = $1 AND request_id = $2",
                self.schema
            ),
            &[&namespace, &request_id],
        )?;
        Ok(rows.first().map(chain_row))
    }

    fn unchained(&mut self, namespace: &str) -> CoreResult<Option<String>> {
        let rows = self.query(
            &format!(
                "SELECT request_id FROM {}.usage_events WHERE namespace = $1 AND chain_position IS NULL LIMIT 1",
                self.schema
            ),
            &[&namespace],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn beyond(&mut self, namespace: &str, head: i64) -> CoreResult<bool> {
        let rows = self.query(
            &format!(
                "SELECT 1 FROM {}.usage_events WHERE namespace = $1 AND chain_position > $2 LIMIT 1",
                self.schema
            ),
            &[&namespace, &head],
        )?;
        Ok(!rows.is_empty())
    }
}
