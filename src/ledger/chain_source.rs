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
    /// Hands the rows of positions `start..=end` (in position order) to
    /// `visit`, and answers what it returns. A backend may find the rows a
    /// cheaper way first and, when that walk reports a problem, visit again
    /// with the rows read by position.
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
    /// Whether `namespace` has a row past position `head`.
    fn beyond(&mut self, namespace: &str, head: i64) -> CoreResult<bool>;
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
    let names = namespaces_to_check(src, namespace, anchors)?;
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
        let walked = src.with_rows(name, start, range.end.unwrap_or(i64::MAX), &mut |rows| {
            walk(chain.clone(), rows, now_us)
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

/// Ledgers with fewer positions to check than this are walked on one thread.
pub const PARALLEL_MIN_POSITIONS: i64 = 100_000;

/// Positions `start..=end` of one namespace's chain, with what their walk
/// must know (read from the coordinating snapshot).
pub struct Segment<'a> {
    pub chain: Chain<'a>,
    pub start: i64,
    pub end: i64,
}

/// Walks `parts` of the chain, each on its own thread and snapshot, and
/// returns their outcomes in order; a backend provides it.
pub type WalkParts<'p> = dyn for<'a> Fn(Vec<Segment<'a>>) -> CoreResult<Vec<Walked>> + Sync + 'p;

/// `verify`, with the rows read and hashed on `workers` threads at once
/// (see `Parts`); also says whether the parts answered (`false`: the
/// one-thread walk did).
///
/// Every row's check needs only the digest stored before it, so the chains
/// are cut into about equal parts, each seeded with the stored digest at
/// its start and walked on its own snapshot by `walk_parts`. What the
/// parts need besides rows (heads, purge boundaries, seeds, rows a writer
/// never chained) is read from `src`'s snapshot, and every part stops at
/// that snapshot's head, so events committed meanwhile change nothing. Only
/// an intact ledger is answered from the parts: any problem (or a part
/// that fails) is answered by the one-thread walk over `src`, so that the
/// report is exactly `verify`'s.
pub fn verify_in_parallel(
    src: &mut dyn ChainSource,
    namespace: Option<&str>,
    range: PositionRange,
    anchors: &[Checkpoint],
    now_us: i64,
    parts: &Parts<'_, '_>,
) -> CoreResult<(VerifyReport, bool)> {
    range.validate()?;
    match parallel_report(src, namespace, range, anchors, parts)? {
        Some(report) => Ok((report, true)),
        None => Ok((verify(src, namespace, range, anchors, now_us)?, false)),
    }
}

/// How a ledger is walked in parts: on up to `workers` threads, when it
/// has `min_positions` or more to check, each part by `walk`.
pub struct Parts<'w, 'p> {
    pub workers: usize,
    pub min_positions: i64,
    pub walk: &'w WalkParts<'p>,
}

/// The report of an intact ledger walked in parts; `None` when the ledger
/// is small, or anything is amiss (then the one-thread walk decides).
fn parallel_report(
    src: &mut dyn ChainSource,
    namespace: Option<&str>,
    range: PositionRange,
    anchors: &[Checkpoint],
    parts_of: &Parts<'_, '_>,
) -> CoreResult<Option<VerifyReport>> {
    let (workers, walk_parts) = (parts_of.workers, parts_of.walk);
    if workers < 2 {
        return Ok(None);
    }
    let names = namespaces_to_check(src, namespace, anchors)?;
    // Each namespace's positions to walk, up to its head in this snapshot.
    let mut spans = Vec::with_capacity(names.len());
    for name in &names {
        let Some(recorded) = src.head(name)? else {
            return Ok(None);
        };
        let head = recorded.0;
        if src.unchained(name)?.is_some() || src.beyond(name, head)? {
            return Ok(None);
        }
        let start = range.start.unwrap_or(1);
        let end = range.end.map_or(head, |e| e.min(head));
        spans.push((name, recorded, start, end.max(start - 1)));
    }
    let total: i64 = spans.iter().map(|(_, _, s, e)| e - s + 1).sum();
    if total < parts_of.min_positions {
        return Ok(None);
    }
    // Cut the spans into `workers` parts of about `share` positions each.
    let share = (total + workers as i64 - 1) / workers as i64;
    let mut parts: Vec<Vec<Segment<'_>>> = vec![Vec::new()];
    let mut room = share;
    for (name, recorded, start, end) in spans {
        let purged = src.purged_runs(name)?;
        let mut from = start;
        loop {
            let to = if end - from + 1 > room {
                from + room - 1
            } else {
                end
            };
            let last = to == end;
            let segment_range = PositionRange {
                start: Some(from),
                end: if last { range.end } else { Some(to) },
            };
            parts.last_mut().expect("a part").push(Segment {
                chain: Chain {
                    namespace: name,
                    head: Some(recorded),
                    purged: purged.clone(),
                    anchors: anchors.iter().filter(|a| a.namespace == *name).collect(),
                    range: segment_range,
                    seed: if from > 1 {
                        src.digest_at(name, from - 1)?
                    } else {
                        None
                    },
                },
                start: from,
                end: to,
            });
            room -= to - from + 1;
            if room <= 0 {
                if parts.len() < workers {
                    parts.push(Vec::new());
                    room = share;
                } else {
                    room = i64::MAX;
                }
            }
            if last {
                break;
            }
            from = to + 1;
        }
    }
    parts.retain(|p| !p.is_empty());
    let walked = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || walk_parts(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CoreError::Store("a verify thread panicked".into())))
            })
            .collect::<Vec<_>>()
    });
    let mut report = VerifyReport {
        namespaces: names.clone(),
        ..VerifyReport::default()
    };
    let mut heads: Vec<Checkpoint> = Vec::with_capacity(names.len());
    for part in walked {
        let Ok(part) = part else { return Ok(None) };
        for w in part {
            if w.problem.is_some() {
                return Ok(None);
            }
            report.rows += w.rows;
            match heads.last_mut() {
                Some(h) if h.namespace == w.head.namespace => *h = w.head,
                _ => heads.push(w.head),
            }
        }
    }
    if heads.len() != names.len() {
        return Ok(None);
    }
    report.heads = heads;
    Ok(Some(report))
}

/// The namespaces `verify` checks: the one asked for, or every one with a
/// head or an event, and those the anchors name.
fn namespaces_to_check(
    src: &mut dyn ChainSource,
    namespace: Option<&str>,
    anchors: &[Checkpoint],
) -> CoreResult<Vec<String>> {
    Ok(match namespace {
        Some(ns) => vec![ns.to_string()],
        None => {
            let mut names = src.namespaces()?;
            names.extend(anchors.iter().map(|a| a.namespace.clone()));
            names.sort();
            names.dedup();
            names
        }
    })
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
