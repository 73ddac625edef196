//! Which end of the matching events an offset page is read from.
//!
//! An offset page costs a scan of every event it skips, so the latest pages
//! of a large ledger (a dashboard's "last page") cost a scan of nearly all of
//! it. Once the offset is large, the store counts the matching events from
//! its pre-aggregated totals and reads the page newest first when that end
//! is nearer; the count and the read share one snapshot.

/// Below this offset a page is read from the start without counting.
pub const COUNT_PAST_OFFSET: u64 = 1_000;

/// How a page of `limit` events after skipping `offset` is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRead {
    /// Oldest first, as `LIMIT limit + 1 OFFSET offset` (the extra row tells
    /// whether a next page exists).
    FromStart,
    /// Newest first: skip `skip` events, take `take`, then reverse them.
    /// `more` when events follow the page.
    FromEnd { skip: u64, take: u64, more: bool },
    /// The offset is past the last event.
    Empty,
}

/// The cheaper read of the page `[offset, offset + limit)` among `total`
/// matching events.
pub fn choose(total: u64, offset: u64, limit: u64) -> PageRead {
    if offset >= total {
        return PageRead::Empty;
    }
    let past = offset.saturating_add(limit).min(total);
    let after_page = total - past;
    if after_page >= offset {
        return PageRead::FromStart;
    }
    PageRead::FromEnd {
        skip: after_page,
        take: past - offset,
        more: past < total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each plan, carried out on `0..total`, gives exactly the slice asked for.
    #[test]
    fn every_plan_reads_the_page_asked_for() {
        for total in 0..40u64 {
            for offset in 0..45u64 {
                for limit in 0..12u64 {
                    let all: Vec<u64> = (0..total).collect();
                    let want: Vec<u64> = all
                        .iter()
                        .copied()
                        .skip(offset as usize)
                        .take(limit as usize)
                        .collect();
                    let want_more = offset.saturating_add(limit) < total;
                    match choose(total, offset, limit) {
                        PageRead::Empty => assert!(want.is_empty() && offset >= total),
                        PageRead::FromStart => {
                            assert!(offset <= total - (offset + limit).min(total))
                        }
                        PageRead::FromEnd { skip, take, more } => {
                            let mut got: Vec<u64> = all
                                .iter()
                                .rev()
                                .copied()
                                .skip(skip as usize)
                                .take(take as usize)
                                .collect();
                            got.reverse();
                            assert_eq!(got, want, "total {total} offset {offset} limit {limit}");
                            assert_eq!(more, want_more);
                            assert!(skip < offset, "the end is nearer");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_last_page_of_a_million_skips_nothing() {
        assert_eq!(
            choose(1_000_000, 999_975, 25),
            PageRead::FromEnd {
                skip: 0,
                take: 25,
                more: false
            }
        );
        assert_eq!(choose(1_000_000, 10, 25), PageRead::FromStart);
        assert_eq!(choose(1_000_000, u64::MAX, 25), PageRead::Empty);
        assert_eq!(
            choose(1_000_000, 999_000, u64::MAX),
            PageRead::FromEnd {
                skip: 0,
                take: 1_000,
                more: false
            }
        );
    }
}
