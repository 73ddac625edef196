//! `verify`, `receipt` and `checkpoint` written once for every backend: a
//! backend only says how to read its heads, purge boundaries and rows (all
//! from one snapshot) through `ChainSource`; the walk in `chain_verify`
//! does the checking.

use super::chain::{digest_from_slice, Digest, GENESIS};
use super::chain_verify::{
    walk, Chain, ChainRow, Checkpoint, PositionRange, Problem, ProblemKind, PurgedRun, Receipt,
    VerifyReport, Walked,
};
use crate::error::{CoreError, CoreResult};

/// The rows handed to a walk: in position order, read lazily.
pub type Rows<'r> = dyn Iterator<Item = CoreResult<ChainRow>> + 'r;

/// What a backend reads for the chain checks, inside one read snapshot.
pub trait ChainSource {
    /// Every namespace with a chain head or an event.
    fn namespaces(&mut self) -> CoreResult<Vec<String>>;
    /// The recorded head of `namespace`, if it has one.
    fn head(&mut self, namespace: &str) -> CoreResult<Option<(i64, Digest)>>;
    /// The runs purges removed from `namespace`, by first position.
    fn purged_runs(&mut self, namespace: &str) -> CoreResult<Vec<PurgedRun>>;
    /// The digest stored at `position` (≥ 1): the row's, or a purge boundary's.
    fn digest_at(&mut self, namespace: &str, position: i64) -> CoreResult<Option<Digest>>;
    /// Hands the rows of positions `start..=end` (in position order) to `visit`.
    fn with_rows(
        &mut self,
        namespace: &str,
        start: i64,
        end: i64,
        visit: &mut dyn FnMut(&mut Rows<'_>) -> CoreResult<Walked>,
    ) -> CoreResult<Walked>;
    /// The row of `request_id` in `namespace`.
    fn row(&mut self, namespace: &str, request_id: &str) -> CoreResult<Option<ChainRow>>;
    /// The request id of a row in `namespace` that has no chain position.
    fn unchained(&mut self, namespace: &str) -> CoreResult<Option<String>>;
}

/// A stored digest column that must be 32 bytes.
pub fn stored_digest(bytes: &[u8], what: &str) -> CoreResult<Digest> {
    digest_from_slice(bytes)
        .ok_or_else(|| CoreError::Store(format!("{what} is not a 32-byte digest")))
}

fn digest_before(
    src: &mut dyn ChainSource,
    namespace: &str,
    position: i64,
) -> CoreResult<Option<Digest>> {
    if position == 0 {
        return Ok(Some(GENESIS));
    }
    src.digest_at(namespace, position)
}

/// Recomputes the chains of `namespace` (every namespace when `None`, and
/// those the anchors name) and stops at the first problem.
pub fn verify(
    src: &mut dyn ChainSource,
    namespace: Option<&str>,
    range: PositionRange,
    anchors: &[Checkpoint],
    now_us: i64,
) -> CoreResult<VerifyReport> {
    range.validate()?;
    let names = match namespace {
        Some(ns) => vec![ns.to_string()],
        None => {
            let mut names = src.namespaces()?;
            names.extend(anchors.iter().map(|a| a.namespace.clone()));
            names.sort();
            names.dedup();
            names
        }
    };
    let mut report = VerifyReport::default();
    for name in &names {
        report.namespaces.push(name.clone());
        let start = range.start.unwrap_or(1);
        let chain = Chain {
            namespace: name,
            head: src.head(name)?,
            purged: src.purged_runs(name)?,
            anchors: anchors.iter().filter(|a| a.namespace == *name).collect(),
            range,
            seed: if start > 1 {
                src.digest_at(name, start - 1)?
            } else {
                None
            },
        };
        let mut chain = Some(chain);
        let walked = src.with_rows(name, start, range.end.unwrap_or(i64::MAX), &mut |rows| {
            walk(chain.take().expect("walked once"), rows, now_us)
        })?;
        report.rows += walked.rows;
        report.heads.push(walked.head);
        if walked.problem.is_some() {
            report.problem = walked.problem;
            return Ok(report);
        }
        if let Some(request_id) = src.unchained(name)? {
            report.problem = Some(Problem {
                namespace: name.clone(),
                position: 0,
                message: format!(
                    "request {request_id:?} has no chain position: it was not recorded by the writer"
                ),
                request_id: Some(request_id),
                kind: ProblemKind::Inserted,
            });
            return Ok(report);
        }
    }
    Ok(report)
}

/// One committed event's payload, place in the chain and the digests around it.
pub fn receipt(
    src: &mut dyn ChainSource,
    namespace: &str,
    request_id: &str,
) -> CoreResult<Receipt> {
    let Some(row) = src.row(namespace, request_id)? else {
        return Err(CoreError::InvalidArgument(
            "request_id",
            format!("no event {request_id:?} in namespace {namespace:?}"),
        ));
    };
    let previous = digest_before(src, namespace, row.position - 1)?.ok_or_else(|| {
        CoreError::Store(format!(
            "the chain before position {} of namespace {namespace:?} is missing",
            row.position
        ))
    })?;
    Ok(Receipt {
        namespace: namespace.to_string(),
        position: row.position,
        digest: row
            .digest
            .ok_or_else(|| CoreError::Store("the stored digest is not 32 bytes".into()))?,
        payload: row.payload,
        previous,
    })
}

/// The recorded head of `namespace` (position 0 and the zero digest before its first event).
pub fn checkpoint(
    src: &mut dyn ChainSource,
    namespace: &str,
    now_us: i64,
) -> CoreResult<Checkpoint> {
    let (position, digest) = src.head(namespace)?.unwrap_or((0, GENESIS));
    Ok(Checkpoint {
        namespace: namespace.to_string(),
        position,
        digest,
        time_us: now_us,
    })
}

/// Groups the rows a purge removes (by namespace, then position) into runs
/// of consecutive positions, each with the digest at its end.
#[derive(Default)]
pub struct PurgedRuns {
    current: Option<(String, PurgedRun)>,
    pub done: Vec<(String, PurgedRun)>,
}

impl PurgedRuns {
    pub fn push(&mut self, namespace: &str, position: i64, digest: Digest) {
        match &mut self.current {
            Some((ns, run)) if ns == namespace && run.last + 1 == position => {
                run.last = position;
                run.digest = digest;
            }
            _ => {
                let run = PurgedRun {
                    first: position,
                    last: position,
                    digest,
                };
                if let Some(finished) = self.current.replace((namespace.to_string(), run)) {
                    self.done.push(finished);
                }
            }
        }
    }

    pub fn finish(mut self) -> Vec<(String, PurgedRun)> {
        self.done.extend(self.current.take());
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purged_positions_group_into_runs_per_namespace() {
        let d = |b: u8| [b; 32];
        let mut runs = PurgedRuns::default();
        for (ns, p, b) in [
            ("a", 1, 1),
            ("a", 2, 2),
            ("a", 4, 4),
            ("b", 5, 5),
            ("b", 6, 6),
        ] {
            runs.push(ns, p, d(b));
        }
        let got: Vec<(String, i64, i64, u8)> = runs
            .finish()
            .into_iter()
            .map(|(ns, r)| (ns, r.first, r.last, r.digest[0]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 1, 2, 2),
                ("a".into(), 4, 4, 4),
                ("b".into(), 5, 6, 6)
            ]
        );
        assert!(PurgedRuns::default().finish().is_empty());
    }
}
