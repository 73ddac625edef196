//! Opaque cursors for keyset pagination: a position `(ts, id)` in the ledger's
//! order plus a digest of the filters it was made under, so that a page read
//! after new inserts neither skips nor repeats events, and a cursor reused
//! with other filters is refused instead of silently paging something else.

use crate::error::{CoreError, CoreResult};
use crate::ledger::filters::Filters;

/// The last event of a page: where the next page starts (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub ts_us: i64,
    pub id: i64,
    filters_digest: u64,
}

impl Cursor {
    pub fn after(ts_us: i64, id: i64, filters: &Filters) -> Cursor {
        Cursor {
            ts_us,
            id,
            filters_digest: digest(filters),
        }
    }

    /// 48 hex digits: position and filter digest, not meant to be read.
    pub fn encode(&self) -> String {
        format!(
            "{:016x}{:016x}{:016x}",
            self.ts_us as u64, self.id as u64, self.filters_digest
        )
    }

    /// Parses a token made by `encode` under the same `filters`.
    /// Checks a page request (filters, `limit` of at least 1) and decodes its
    /// cursor, the same way on every backend.
    pub fn for_page(
        filters: &Filters,
        limit: u64,
        cursor: Option<&str>,
    ) -> CoreResult<Option<Cursor>> {
        filters.validate()?;
        if limit == 0 {
            return Err(CoreError::InvalidArgument(
                "limit",
                "must be at least 1".into(),
            ));
        }
        cursor.map(|c| Cursor::decode(c, filters)).transpose()
    }

    pub fn decode(token: &str, filters: &Filters) -> CoreResult<Cursor> {
        let invalid = || {
            CoreError::InvalidArgument("cursor", "is not a cursor returned by this ledger".into())
        };
        if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let field = |i: usize| u64::from_str_radix(&token[i * 16..(i + 1) * 16], 16);
        let (ts, id, filters_digest) = match (field(0), field(1), field(2)) {
            (Ok(ts), Ok(id), Ok(d)) => (ts as i64, id as i64, d),
            _ => return Err(invalid()),
        };
        if filters_digest != digest(filters) {
            return Err(CoreError::InvalidArgument(
                "cursor",
                "was made for other filters; repeat the filters of the first page".into(),
            ));
        }
        Ok(Cursor {
            ts_us: ts,
            id,
            filters_digest,
        })
    }
}

/// FNV-1a over the filters, each field tagged so that `None` and `""` differ.
fn digest(f: &Filters) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for text in [
        &f.namespace,
        &f.agent_id,
        &f.consumer_id,
        &f.task_id,
        &f.model,
        &f.action,
    ] {
        match text {
            Some(t) => {
                eat(&[1]);
                eat(&(t.len() as u64).to_le_bytes());
                eat(t.as_bytes());
            }
            None => eat(&[0]),
        }
    }
    for bound in [f.start_us, f.end_us] {
        match bound {
            Some(us) => {
                eat(&[1]);
                eat(&us.to_le_bytes());
            }
            None => eat(&[0]),
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_bound_to_its_filters() {
        let f = Filters {
            namespace: Some("team-a".into()),
            ..Filters::default()
        };
        let c = Cursor::after(-5, 42, &f);
        assert_eq!(Cursor::decode(&c.encode(), &f).unwrap(), c);
        let other = Filters {
            namespace: Some("team-b".into()),
            ..Filters::default()
        };
        assert!(Cursor::decode(&c.encode(), &other).is_err());
        let empty = Filters {
            agent_id: Some(String::new()),
            ..Filters::default()
        };
        assert_ne!(digest(&empty), digest(&Filters::default()));
        for bad in ["", "zz", &"g".repeat(48), &c.encode()[1..]] {
            assert!(Cursor::decode(bad, &f).is_err(), "{bad:?}");
        }
    }
}
