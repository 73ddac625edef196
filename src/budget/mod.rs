//! Budgets: a spending limit over a scope (everything, or one namespace,
//! agent, consumer, model or workflow) and a period that resets on the
//! calendar of a time zone.

pub mod catalog;
pub mod definition;
pub mod engine;
pub mod report;
pub mod state;

use crate::error::{CoreError, CoreResult};
use crate::ledger::buckets::{bucket_bounds, parse_tz, TimeUnit};
use chrono_tz::Tz;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Namespace,
    Agent,
    Consumer,
    Model,
    /// A workflow is the ledger's `task_id`.
    Workflow,
}

impl Scope {
    pub fn parse(name: &str) -> CoreResult<Scope> {
        Ok(match name {
            "global" => Scope::Global,
            "namespace" => Scope::Namespace,
            "agent" => Scope::Agent,
            "consumer" => Scope::Consumer,
            "model" => Scope::Model,
            "workflow" => Scope::Workflow,
            other => {
                return Err(CoreError::InvalidArgument(
                    "scope",
                    format!(
                        "must be one of global, namespace, agent, consumer, model, workflow; got {other:?}"
                    ),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Namespace => "namespace",
            Scope::Agent => "agent",
            Scope::Consumer => "consumer",
            Scope::Model => "model",
            Scope::Workflow => "workflow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Daily,
    /// Resets on Mondays.
    Weekly,
    /// Resets on the 1st.
    Monthly,
    /// Never resets.
    Total,
    /// The last this many microseconds, sliding.
    Rolling(i64),
}

impl Period {
    pub fn parse(name: &str) -> CoreResult<Period> {
        Ok(match name {
            "daily" => Period::Daily,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly,
            "total" => Period::Total,
            other => {
                return Err(CoreError::InvalidArgument(
                    "period",
                    format!(
                    "must be daily, weekly, monthly, total or a number of seconds; got {other:?}"
                ),
                ))
            }
        })
    }

    pub fn rolling_seconds(seconds: f64) -> CoreResult<Period> {
        if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e12) {
            return Err(CoreError::InvalidArgument(
                "period",
                format!("a rolling period must be a positive number of seconds, got {seconds}"),
            ));
        }
        Ok(Period::Rolling((seconds * 1e6).round().max(1.0) as i64))
    }

    pub fn name(self) -> String {
        match self {
            Period::Daily => "daily".into(),
            Period::Weekly => "weekly".into(),
            Period::Monthly => "monthly".into(),
            Period::Total => "total".into(),
            Period::Rolling(us) => format!("{}s", us as f64 / 1e6),
        }
    }

    /// The calendar period holding `now_us`: `[start, next_reset)`; `None`
    /// for a next reset that never comes (total) or slides (rolling).
    pub fn bounds(self, now_us: i64, tz: Tz) -> (i64, Option<i64>) {
        let unit = match self {
            Period::Daily => TimeUnit::Day,
            Period::Weekly => TimeUnit::Week,
            Period::Monthly => TimeUnit::Month,
            Period::Total => return (i64::MIN, None),
            Period::Rolling(window) => return (now_us.saturating_sub(window), None),
        };
        match bucket_bounds(now_us, unit, tz) {
            Some((start, next)) => (start, Some(next)),
            None => (i64::MIN, None),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Only alerts.
    Alert,
    /// Refuses calls that would go over.
    Block,
    /// Sends calls that would go over to a cheaper model.
    Downgrade(String),
}

/// The most thresholds a budget may have.
pub const MAX_THRESHOLDS: usize = 64;

/// One budget, validated.
#[derive(Clone, Debug)]
pub struct Budget {
    pub name: String,
    pub limit_nanos: u64,
    pub scope: Scope,
    /// Which value of the scope; `None`: each value has its own budget.
    pub matches: Option<String>,
    pub period: Period,
    pub tz: Tz,
    pub tz_name: String,
    /// Fractions of the limit, ascending, in (0, 1].
    pub thresholds: Vec<f64>,
    pub action: Action,
    /// A soft budget admits a call while spend is below the limit, even if
    /// the call may take it over; a hard one only if it stays within.
    pub soft: bool,
    /// A budget kept in the ledger database belongs to one namespace and
    /// covers only its calls; `None` (a budget given in code): every namespace.
    pub namespace: Option<String>,
}

impl Budget {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        limit_nanos: u64,
        scope: Scope,
        matches: Option<String>,
        period: Period,
        tz: &str,
        thresholds: Vec<f64>,
        action: &str,
        downgrade_to: Option<String>,
        soft: bool,
    ) -> CoreResult<Budget> {
        if name.is_empty() {
            return Err(CoreError::InvalidArgument(
                "name",
                "must not be empty".into(),
            ));
        }
        if scope == Scope::Global && matches.is_some() {
            return Err(CoreError::InvalidArgument(
                "match",
                "a global budget matches everything; give a scope to match a value".into(),
            ));
        }
        let tz_parsed = parse_tz(tz)?;
        // The engine keeps which thresholds fired in one 64-bit word.
        if thresholds.len() > MAX_THRESHOLDS {
            return Err(CoreError::InvalidArgument(
                "thresholds",
                format!("at most {MAX_THRESHOLDS}, got {}", thresholds.len()),
            ));
        }
        for (i, t) in thresholds.iter().enumerate() {
            if !(t.is_finite() && *t > 0.0 && *t <= 1.0) {
                return Err(CoreError::InvalidArgument(
                    "thresholds",
                    format!("each must be in (0, 1], got {t}"),
                ));
            }
            if i > 0 && thresholds[i - 1] >= *t {
                return Err(CoreError::InvalidArgument(
                    "thresholds",
                    "must be in ascending order, without repeats".into(),
                ));
            }
        }
        let action = match (action, downgrade_to) {
            ("alert", None) => Action::Alert,
            ("block", None) => Action::Block,
            ("downgrade", Some(model)) if !model.is_empty() => Action::Downgrade(model),
            ("downgrade", _) => {
                return Err(CoreError::InvalidArgument(
                    "downgrade_to",
                    "action \"downgrade\" needs the model to downgrade to".into(),
                ))
            }
            ("alert" | "block", Some(_)) => {
                return Err(CoreError::InvalidArgument(
                    "downgrade_to",
                    "is only for action \"downgrade\"".into(),
                ))
            }
            (other, _) => {
                return Err(CoreError::InvalidArgument(
                    "action",
                    format!("must be alert, block or downgrade; got {other:?}"),
                ))
            }
        };
        Ok(Budget {
            name: name.to_string(),
            limit_nanos,
            scope,
            matches,
            period,
            tz: tz_parsed,
            tz_name: tz.to_string(),
            thresholds,
            action,
            soft,
            namespace: None,
        })
    }
}

/// Who and what a call is, for choosing the budgets that cover it.
#[derive(Clone, Debug, Default)]
pub struct CallScope {
    pub namespace: String,
    pub agent_id: String,
    pub consumer_id: String,
    pub model: Option<String>,
    pub task_id: Option<String>,
}

impl CallScope {
    /// The value of `scope` for this call (`Some("")` for global), or `None`
    /// when the call has none (no model, no workflow).
    pub fn value(&self, scope: Scope) -> Option<&str> {
        match scope {
            Scope::Global => Some(""),
            Scope::Namespace => Some(&self.namespace),
            Scope::Agent => Some(&self.agent_id),
            Scope::Consumer => Some(&self.consumer_id),
            Scope::Model => self.model.as_deref(),
            Scope::Workflow => self.task_id.as_deref(),
        }
    }
}
