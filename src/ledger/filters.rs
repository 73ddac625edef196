//! Ledger filters, turned into a WHERE clause with every value bound.

use crate::error::{CoreError, CoreResult};
use rusqlite::types::Value;

/// Which events a query, aggregate, export or purge covers. Time bounds are
/// inclusive, in UTC microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub namespace: Option<String>,
    pub agent_id: Option<String>,
    pub consumer_id: Option<String>,
    pub task_id: Option<String>,
    pub model: Option<String>,
    pub action: Option<String>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

impl Filters {
    pub fn validate(&self) -> CoreResult<()> {
        if let (Some(start), Some(end)) = (self.start_us, self.end_us) {
            if start > end {
                return Err(CoreError::InvalidArgument(
                    "start",
                    "must not be after end".into(),
                ));
            }
        }
        Ok(())
    }

    /// `WHERE …` (or an empty string) and its parameters, in order.
    pub fn where_clause(&self) -> (String, Vec<Value>) {
        let mut terms = Vec::new();
        let mut params = Vec::new();
        for (column, value) in [
            ("namespace", &self.namespace),
            ("agent_id", &self.agent_id),
            ("consumer_id", &self.consumer_id),
            ("task_id", &self.task_id),
            ("model", &self.model),
            ("action", &self.action),
        ] {
            if let Some(v) = value {
                terms.push(format!("{column} = ?"));
                params.push(Value::Text(v.clone()));
            }
        }
        if let Some(start) = self.start_us {
            terms.push("ts >= ?".to_string());
            params.push(Value::Integer(start));
        }
        if let Some(end) = self.end_us {
            terms.push("ts <= ?".to_string());
            params.push(Value::Integer(end));
        }
        if terms.is_empty() {
            (String::new(), params)
        } else {
            (format!("WHERE {}", terms.join(" AND ")), params)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_bound_parameter() {
        let f = Filters {
            agent_id: Some("a'; DROP TABLE usage_events; --".into()),
            start_us: Some(1),
            end_us: Some(2),
            ..Filters::default()
        };
        let (sql, params) = f.where_clause();
        assert_eq!(sql, "WHERE agent_id = ? AND ts >= ? AND ts <= ?");
        assert_eq!(params.len(), 3);
        assert!(Filters {
            start_us: Some(3),
            end_us: Some(2),
            ..Filters::default()
        }
        .validate()
        .is_err());
    }
}
