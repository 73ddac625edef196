//! A budget's definition as JSON: the keyword arguments `Budget` takes
//! (without the name), so a budget stored in the ledger database reads back
//! as the budget it was, and the database holds nothing the engine could not
//! build.

use super::{Action, Budget, Period, Scope};
use crate::error::{CoreError, CoreResult};
use crate::usage::{nanos_to_usd, usd_to_nanos};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Definition {
    limit_usd: f64,
    scope: String,
    #[serde(rename = "match")]
    matches: Option<String>,
    /// `"daily"`, `"weekly"`, `"monthly"`, `"total"`, or seconds (rolling).
    period: PeriodJson,
    tz: String,
    thresholds: Vec<f64>,
    action: String,
    downgrade_to: Option<String>,
    soft: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PeriodJson {
    Named(String),
    Seconds(f64),
}

/// The canonical JSON of `budget`'s definition.
pub fn to_json(budget: &Budget) -> String {
    let (action, downgrade_to) = match &budget.action {
        Action::Alert => ("alert", None),
        Action::Block => ("block", None),
        Action::Downgrade(model) => ("downgrade", Some(model.clone())),
    };
    let period = match budget.period {
        Period::Rolling(us) => PeriodJson::Seconds(us as f64 / 1e6),
        other => PeriodJson::Named(other.name()),
    };
    let definition = Definition {
        limit_usd: nanos_to_usd(budget.limit_nanos),
        scope: budget.scope.name().to_string(),
        matches: budget.matches.clone(),
        period,
        tz: budget.tz_name.clone(),
        thresholds: budget.thresholds.clone(),
        action: action.to_string(),
        downgrade_to,
        soft: budget.soft,
    };
    serde_json::to_string(&definition).expect("a definition always serialises")
}

/// The budget `name` defined by `json`, validated as `Budget::new` does.
pub fn from_json(name: &str, json: &str) -> CoreResult<Budget> {
    let d: Definition = serde_json::from_str(json).map_err(|e| {
        CoreError::InvalidArgument("definition", format!("not a budget definition: {e}"))
    })?;
    let limit = usd_to_nanos(d.limit_usd).ok_or_else(|| {
        CoreError::InvalidArgument(
            "limit_usd",
            format!("must be a finite amount >= 0, got {}", d.limit_usd),
        )
    })?;
    let period = match d.period {
        PeriodJson::Named(name) => Period::parse(&name)?,
        PeriodJson::Seconds(seconds) => Period::rolling_seconds(seconds)?,
    };
    Budget::new(
        name,
        limit,
        Scope::parse(&d.scope)?,
        d.matches,
        period,
        &d.tz,
        d.thresholds,
        &d.action,
        d.downgrade_to,
        d.soft,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A global blocking budget of 1 nano-USD in UTC, without thresholds.
    fn plain(period: Period) -> Budget {
        Budget::new(
            "c",
            1,
            Scope::Global,
            None,
            period,
            "UTC",
            vec![],
            "block",
            None,
            false,
        )
        .unwrap()
    }

    #[test]
    fn a_definition_reads_back_as_the_same_budget() {
        let budgets = [
            Budget::new(
                "b",
                12_340_000_000,
                Scope::Agent,
                Some("bot".into()),
                Period::Rolling(90_000_000),
                "Europe/Paris",
                vec![0.5, 1.0],
                "downgrade",
                Some("small".into()),
                true,
            )
            .unwrap(),
            plain(Period::Weekly),
        ];
        for budget in budgets {
            let json = to_json(&budget);
            let back = from_json(&budget.name, &json).unwrap();
            assert_eq!(to_json(&back), json);
            assert_eq!(back.limit_nanos, budget.limit_nanos);
            assert_eq!(back.period, budget.period);
            assert_eq!(back.action, budget.action);
        }
    }

    #[test]
    fn a_bad_definition_names_what_is_wrong() {
        let err = from_json("b", "{\"limit_usd\": 1}").unwrap_err();
        assert!(err.to_string().starts_with("definition:"), "{err}");
        let json = to_json(&plain(Period::Daily)).replace("\"UTC\"", "\"Mars/Olympus\"");
        assert!(from_json("b", &json).is_err());
    }
}
