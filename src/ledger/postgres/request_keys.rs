//! `request_keys`: the identity `(namespace, request_id)` of every stored
//! event with its fingerprint, unique across the partitions of
//! `usage_events` (a unique index there would have to hold the partition
//! key). The writer adds a row per new event, so the table is kept narrow:
//! its keys compare bytewise (`COLLATE "C"`; only equality is ever asked of
//! them) and it has no index beyond its key, since a purge finds the keys to
//! delete through the events it removes.

/// Makes a table of the first migration narrow: the `ts` index and column
/// go and the keys compare bytewise. Idempotent (a ledger reset to an older
/// version by hand runs it again). The namespace policy, if row security is
/// on, is dropped first (a column in a policy cannot change type) and
/// re-created after the migrations.
pub const MIGRATION: &str = r#"
DROP INDEX IF EXISTS {s}.request_keys_ts;
DROP POLICY IF EXISTS usagewarden_namespace ON {s}.request_keys;
ALTER TABLE {s}.request_keys
    ALTER COLUMN namespace TYPE TEXT COLLATE "C",
    ALTER COLUMN request_id TYPE TEXT COLLATE "C",
    DROP COLUMN IF EXISTS ts;
"#;

/// Binary `COPY` of new identities: namespace, request id, fingerprint.
pub fn copy_sql(s: &str) -> String {
    format!("COPY {s}.request_keys (namespace, request_id, fingerprint) FROM STDIN (FORMAT binary)")
}

/// The fingerprints stored for identities (`$1` namespaces, `$2` request
/// ids): one index lookup each (the `LIMIT` keeps the planner from joining
/// the whole table), whatever the table's size.
pub fn stored_sql(s: &str) -> String {
    format!(
        "SELECT u.namespace, u.request_id, k.fingerprint \
         FROM unnest($1::text[], $2::text[]) AS u(namespace, request_id) \
         CROSS JOIN LATERAL (SELECT fingerprint FROM {s}.request_keys k \
             WHERE k.namespace = u.namespace AND k.request_id = u.request_id LIMIT 1) k"
    )
}

/// Deletes the identities of the events before `$1`; run before those
/// events (and their partitions) go.
pub fn purge_sql(s: &str) -> String {
    format!(
        "DELETE FROM {s}.request_keys k USING {s}.usage_events e \
         WHERE e.ts < $1 AND k.namespace = e.namespace AND k.request_id = e.request_id"
    )
}
