//! Checking a namespace's chain, whatever the backend: it hands over the
//! rows in position order, the runs a purge removed and the recorded head;
//! this walk recomputes every digest and names the first row that breaks it.

use super::chain::{link, to_hex, Digest, GENESIS};
use crate::error::{CoreError, CoreResult};

/// A chain head (or any position of it) to anchor elsewhere: the digest
/// of a namespace's chain after `position` events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub namespace: String,
    pub position: i64,
    pub digest: Digest,
    /// When it was taken, UTC microseconds.
    pub time_us: i64,
}

/// One event's place in its chain, with its canonical payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub namespace: String,
    pub position: i64,
    pub payload: Vec<u8>,
    pub previous: Digest,
    pub digest: Digest,
}

impl Receipt {
    /// Whether `digest = SHA-256(previous ‖ payload)`.
    pub fn is_consistent(&self) -> bool {
        link(&self.previous, &self.payload) == self.digest
    }
}

/// Events a purge removed: positions `first..=last`, and the digest at `last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgedRun {
    pub first: i64,
    pub last: i64,
    pub digest: Digest,
}

/// A stored row, as the walk sees it. `digest` is `None` when the stored
/// value is not 32 bytes.
#[derive(Clone, Debug)]
pub struct ChainRow {
    pub position: i64,
    pub request_id: String,
    pub payload: Vec<u8>,
    pub digest: Option<Digest>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The row's content (or stored digest) is not what was chained.
    Altered,
    /// A position has no row and no purge accounts for it.
    Missing,
    /// A row that the writer never chained.
    Inserted,
    /// Rows are chained, but not in the order they were recorded.
    Reordered,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Altered => "altered",
            ProblemKind::Missing => "missing",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Reordered => "reordered",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub namespace: String,
    pub position: i64,
    pub request_id: Option<String>,
    pub kind: ProblemKind,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub namespaces: Vec<String>,
    pub rows: u64,
    /// The first problem found; `None` when every checked row is intact.
    pub problem: Option<Problem>,
    /// Where each namespace's checked chain ends (to anchor, if it is intact).
    pub heads: Vec<Checkpoint>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Positions to check, both ends inclusive (`None`: from the first / to the head).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PositionRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl PositionRange {
    pub fn validate(&self) -> CoreResult<()> {
        for (name, value) in [("start", self.start), ("end", self.end)] {
            if value.is_some_and(|v| v < 1) {
                return Err(CoreError::InvalidArgument(
                    name,
                    "must be a chain position (1 or more)".into(),
                ));
            }
        }
        if let (Some(s), Some(e)) = (self.start, self.end) {
            if e < s {
                return Err(CoreError::InvalidArgument(
                    "end",
                    format!("must not be before start ({s}), got {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// Rows a mismatch looks ahead through to tell a reordering from an alteration.
const REORDER_LOOKAHEAD: usize = 64;

/// What is known before a namespace's walk starts.
#[derive(Clone)]
pub struct Chain<'a> {
    pub namespace: &'a str,
    /// The recorded head; `None` when the namespace has none.
    pub head: Option<(i64, Digest)>,
    /// Purged runs, by first position.
    pub purged: Vec<PurgedRun>,
    pub anchors: Vec<&'a Checkpoint>,
    pub range: PositionRange,
    /// The stored digest at `range.start - 1`, when there is such a row.
    pub seed: Option<Digest>,
}

struct Walk<'a> {
    chain: Chain<'a>,
    next_run: usize,
    expected: i64,
    previous: Digest,
    /// The digest before `previous`, to recognise a row slipped in.
    before_previous: Option<Digest>,
    previous_request: Option<String>,
    rows: u64,
}

/// The outcome for one namespace: rows checked, the first problem, the head reached.
pub struct Walked {
    pub rows: u64,
    pub problem: Option<Problem>,
    pub head: Checkpoint,
}

/// Walks `rows` (in position order, positions ≥ `range.start` when given).
pub fn walk(
    chain: Chain<'_>,
    rows: &mut dyn Iterator<Item = CoreResult<ChainRow>>,
    now_us: i64,
) -> CoreResult<Walked> {
    let mut walk = Walk {
        chain,
        next_run: 0,
        expected: 1,
        previous: GENESIS,
        before_previous: None,
        previous_request: None,
        rows: 0,
    };
    let problem = walk.run(rows)?;
    Ok(Walked {
        rows: walk.rows,
        problem,
        head: Checkpoint {
            namespace: walk.chain.namespace.to_string(),
            position: walk.expected - 1,
            digest: walk.previous,
            time_us: now_us,
        },
    })
}

impl Walk<'_> {
    fn problem(
        &self,
        kind: ProblemKind,
        position: i64,
        request_id: Option<&str>,
        message: String,
    ) -> Option<Problem> {
        Some(Problem {
            namespace: self.chain.namespace.to_string(),
            position,
            request_id: request_id.map(str::to_string),
            kind,
            message,
        })
    }

    fn in_range(&self, position: i64) -> bool {
        self.chain.range.end.is_none_or(|end| position <= end)
    }

    /// Steps over purged runs that start where the chain is; checks anchors on the way.
    fn skip_purged(&mut self) -> Option<Problem> {
        while let Some(run) = self.chain.purged.get(self.next_run).cloned() {
            if run.last < self.expected {
                self.next_run += 1;
                continue;
            }
            if run.first > self.expected {
                break;
            }
            self.next_run += 1;
            self.expected = run.last + 1;
            self.before_previous = None;
            self.previous = run.digest;
            self.previous_request = None;
            if let Some(p) = self.check_anchor(run.last, None) {
                return Some(p);
            }
        }
        None
    }

    /// The start: the chain before `range.start` is taken as stored.
    fn seed(&mut self) -> Option<Problem> {
        let Some(start) = self.chain.range.start.filter(|s| *s > 1) else {
            return self.check_anchor(0, None);
        };
        self.expected = start;
        if let Some(seed) = self.chain.seed {
            self.previous = seed;
            return self.check_anchor(start - 1, None);
        }
        // The position before the start was purged (or is missing).
        let covering = self
            .chain
            .purged
            .iter()
            .position(|r| r.first < start && start - 1 <= r.last);
        match covering {
            Some(i) => {
                let run = self.chain.purged[i].clone();
                self.next_run = i + 1;
                self.expected = run.last + 1;
                self.previous = run.digest;
                self.check_anchor(run.last, None)
            }
            None if self.chain.head.is_some_and(|(p, _)| p >= start - 1) => self.problem(
                ProblemKind::Missing,
                start - 1,
                None,
                format!(
                    "position {} has no event and no purge accounts for it",
                    start - 1
                ),
            ),
            None => None,
        }
    }

    fn check_anchor(&self, position: i64, request_id: Option<&str>) -> Option<Problem> {
        let anchor = self
            .chain
            .anchors
            .iter()
            .find(|a| a.position == position && a.digest != self.previous)?;
        self.problem(
            ProblemKind::Altered,
            position,
            request_id,
            format!(
                "the chain at position {position} is {}, not the anchored checkpoint's {}: the events up to it were rewritten",
                to_hex(&self.previous),
                to_hex(&anchor.digest)
            ),
        )
    }

    fn run(
        &mut self,
        rows: &mut dyn Iterator<Item = CoreResult<ChainRow>>,
    ) -> CoreResult<Option<Problem>> {
        if let Some(p) = self.seed() {
            return Ok(Some(p));
        }
        let head_position = self.chain.head.map_or(0, |(p, _)| p);
        while let Some(row) = rows.next() {
            let row = row?;
            if !self.in_range(row.position) {
                break;
            }
            if let Some(p) = self.skip_purged() {
                return Ok(Some(p));
            }
            if row.position < self.expected {
                return Ok(self.problem(
                    ProblemKind::Inserted,
                    row.position,
                    Some(&row.request_id),
                    format!(
                        "request {:?} repeats chain position {} (or sits in a purged range): it was not recorded by the writer",
                        row.request_id, row.position
                    ),
                ));
            }
            if row.position > head_position {
                return Ok(self.problem(
                    ProblemKind::Inserted,
                    row.position,
                    Some(&row.request_id),
                    format!(
                        "request {:?} is at position {}, past the chain head {head_position}: it was not recorded by the writer",
                        row.request_id, row.position
                    ),
                ));
            }
            if row.position > self.expected {
                return Ok(self.problem(
                    ProblemKind::Missing,
                    self.expected,
                    None,
                    format!(
                        "positions {}..{} have no event and no purge accounts for them (the next event is request {:?})",
                        self.expected,
                        row.position - 1,
                        row.request_id
                    ),
                ));
            }
            let computed = link(&self.previous, &row.payload);
            if row.digest != Some(computed) {
                return Ok(Some(self.mismatch(&row, computed, rows)?));
            }
            self.rows += 1;
            self.before_previous = Some(self.previous);
            self.previous = computed;
            self.previous_request = Some(row.request_id.clone());
            self.expected += 1;
            if let Some(p) = self.check_anchor(row.position, Some(&row.request_id)) {
                return Ok(Some(p));
            }
        }
        if let Some(p) = self.skip_purged() {
            return Ok(Some(p));
        }
        Ok(self.check_end())
    }

    /// After the last row: the chain must reach the recorded head and every anchor.
    fn check_end(&self) -> Option<Problem> {
        let reached = self.expected - 1;
        let end = self.chain.range.end;
        match self.chain.head {
            Some((position, _)) if position > reached && end.is_none_or(|e| e > reached) => {
                return self.problem(
                    ProblemKind::Missing,
                    reached + 1,
                    None,
                    format!(
                        "the chain head is at position {position} but the events end at {reached}: events {}..{position} were removed",
                        reached + 1
                    ),
                );
            }
            Some((position, digest)) if position == reached && digest != self.previous => {
                return self.problem(
                    ProblemKind::Altered,
                    position,
                    self.previous_request.as_deref(),
                    format!(
                        "the recorded chain head {} does not match the events, which chain to {}",
                        to_hex(&digest),
                        to_hex(&self.previous)
                    ),
                );
            }
            _ => {}
        }
        let beyond = self
            .chain
            .anchors
            .iter()
            .filter(|a| a.position > reached && end.is_none_or(|e| a.position <= e))
            .min_by_key(|a| a.position)?;
        self.problem(
            ProblemKind::Missing,
            reached + 1,
            None,
            format!(
                "an anchored checkpoint is at position {} but the chain ends at {reached}: events were removed",
                beyond.position
            ),
        )
    }

    /// Names what a digest mismatch at `row` is: the row before it slipped
    /// in, a row out of its place, or an altered row.
    fn mismatch(
        &self,
        row: &ChainRow,
        computed: Digest,
        rows: &mut dyn Iterator<Item = CoreResult<ChainRow>>,
    ) -> CoreResult<Problem> {
        let position = row.position;
        if let Some(before) = self.before_previous {
            if row.digest == Some(link(&before, &row.payload)) {
                let inserted = self.previous_request.as_deref();
                return Ok(self
                    .problem(
                        ProblemKind::Inserted,
                        position - 1,
                        inserted,
                        format!(
                            "request {inserted:?} at position {} was slipped into the chain: the event after it chains from the one before it",
                            position - 1
                        ),
                    )
                    .expect("a problem"));
            }
        }
        for later in rows.take(REORDER_LOOKAHEAD) {
            let later = later?;
            let fits = link(&self.previous, &later.payload);
            if later.digest == Some(fits) || row.digest == Some(fits) {
                return Ok(self
                    .problem(
                        ProblemKind::Reordered,
                        position,
                        Some(&row.request_id),
                        format!(
                            "position {position} holds request {:?}, but the event chained there is request {:?} (now at position {}): rows were reordered",
                            row.request_id, later.request_id, later.position
                        ),
                    )
                    .expect("a problem"));
            }
        }
        let stored = row
            .digest
            .map_or("not a 32-byte digest".to_string(), |d| to_hex(&d));
        Ok(self
            .problem(
                ProblemKind::Altered,
                position,
                Some(&row.request_id),
                format!(
                    "request {:?} at position {position} was altered: its content chains to {}, the stored digest is {stored}",
                    row.request_id,
                    to_hex(&computed)
                ),
            )
            .expect("a problem"))
    }
}
