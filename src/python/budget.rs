//! `Budget` and the engine core behind `usagewarden.BudgetEngine` (the
//! Python class adds alert callbacks and the ledger record of alerts).

use crate::budget::engine::{Alert, AlertKind, Engine, Status};
use crate::budget::report::spend_filters;
use crate::budget::state::fallback::FallbackState;
use crate::budget::state::redis::RedisState;
use crate::budget::state::BudgetState;
use crate::budget::{Action, Budget, CallScope, Period, Scope};
use crate::ledger::sqlite::LogLevel;
use crate::python::args;
use crate::python::clock::ClockArg;
use crate::python::errors::IntoPyResult;
use crate::python::redis_limiter::PyRedisRateLimiter;
use crate::usage::nanos_to_usd;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use std::sync::Arc;
use std::time::Duration;

/// A spending limit over a scope and a period (see `BudgetEngine`).
#[pyclass(frozen, name = "Budget", module = "usagewarden")]
pub struct PyBudget {
    pub(crate) inner: Budget,
}

#[pymethods]
impl PyBudget {
    #[new]
    #[pyo3(signature = (name, limit_usd, *, scope="global", r#match=None, period=None, tz="UTC", thresholds=None, action="block", downgrade_to=None, soft=false),
           text_signature = "(name, limit_usd, *, scope='global', match=None, period='monthly', tz='UTC', thresholds=(0.5, 0.75, 0.9, 1.0), action='block', downgrade_to=None, soft=False)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        limit_usd: &Bound<'_, PyAny>,
        scope: &str,
        r#match: Option<&Bound<'_, PyAny>>,
        period: Option<&Bound<'_, PyAny>>,
        tz: &str,
        thresholds: Option<&Bound<'_, PyAny>>,
        action: &str,
        downgrade_to: Option<&Bound<'_, PyAny>>,
        soft: bool,
    ) -> PyResult<Self> {
        let name = args::text(name, "name")?;
        let limit = args::cost(Some(limit_usd), "limit_usd")?;
        let scope = Scope::parse(scope).py_err(py)?;
        let matches = args::optional_text(r#match, "match")?;
        let period = match period {
            None => Period::Monthly,
            Some(p) if p.is_instance_of::<pyo3::types::PyString>() => {
                Period::parse(&p.extract::<String>()?).py_err(py)?
            }
            Some(p) => {
                let seconds: f64 = p.extract().map_err(|_| {
                    PyTypeError::new_err(
                        "period must be daily, weekly, monthly, total or a number of seconds",
                    )
                })?;
                Period::rolling_seconds(seconds).py_err(py)?
            }
        };
        let thresholds: Vec<f64> = match thresholds {
            None => vec![0.5, 0.75, 0.9, 1.0],
            Some(t) => t.extract().map_err(|_| {
                PyTypeError::new_err("thresholds must be a sequence of numbers in (0, 1]")
            })?,
        };
        let downgrade_to = args::optional_text(downgrade_to, "downgrade_to")?;
        let budget = Budget::new(
            &name,
            limit,
            scope,
            matches,
            period,
            tz,
            thresholds,
            action,
            downgrade_to,
            soft,
        )
        .py_err(py)?;
        Ok(PyBudget { inner: budget })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn limit_usd(&self) -> f64 {
        nanos_to_usd(self.inner.limit_nanos)
    }
    #[getter]
    fn scope(&self) -> &'static str {
        self.inner.scope.name()
    }
    #[getter(r#match)]
    fn match_value(&self) -> Option<&str> {
        self.inner.matches.as_deref()
    }
    #[getter]
    fn period(&self) -> String {
        self.inner.period.name()
    }
    #[getter]
    fn tz(&self) -> &str {
        &self.inner.tz_name
    }
    #[getter]
    fn thresholds(&self) -> Vec<f64> {
        self.inner.thresholds.clone()
    }
    #[getter]
    fn action(&self) -> &'static str {
        match self.inner.action {
            Action::Alert => "alert",
            Action::Block => "block",
            Action::Downgrade(_) => "downgrade",
        }
    }
    #[getter]
    fn downgrade_to(&self) -> Option<&str> {
        match &self.inner.action {
            Action::Downgrade(model) => Some(model),
            _ => None,
        }
    }
    #[getter]
    fn soft(&self) -> bool {
        self.inner.soft
    }
    /// The namespace of a budget read from the ledger database (it covers
    /// only that namespace's calls); `None` for a budget made in code.
    #[getter]
    fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    fn __repr__(&self) -> String {
        format!(
            "Budget({:?}, {}, scope={:?}, period={:?}, action={:?})",
            self.inner.name,
            nanos_to_usd(self.inner.limit_nanos),
            self.inner.scope.name(),
            self.inner.period.name(),
            self.action()
        )
    }
}

/// The lock-protected engine; `usagewarden.BudgetEngine` wraps it.
#[pyclass(frozen, name = "_BudgetCore", module = "usagewarden")]
pub struct PyBudgetCore {
    engine: Arc<Engine>,
    clock: ClockArg,
}

fn alert_dict<'py>(py: Python<'py>, a: &Alert) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("budget", &a.budget)?;
    d.set_item("namespace", &a.namespace)?;
    d.set_item("scope_value", &a.scope_value)?;
    match a.kind {
        AlertKind::Threshold(t) => {
            d.set_item("kind", "threshold")?;
            d.set_item("threshold", t)?;
        }
        AlertKind::Reset => {
            d.set_item("kind", "reset")?;
            d.set_item("threshold", py.None())?;
        }
    }
    d.set_item("spent_usd", nanos_to_usd(a.spent_nanos))?;
    d.set_item("limit_usd", nanos_to_usd(a.limit_nanos))?;
    d.set_item("period_start_us", a.period_start_us)?;
    d.set_item("at_us", a.at_us)?;
    Ok(d)
}

fn alerts_list<'py>(py: Python<'py>, alerts: &[Alert]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for a in alerts {
        list.append(alert_dict(py, a)?)?;
    }
    Ok(list)
}

pub(crate) fn status_dict<'py>(py: Python<'py>, s: &Status) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("budget", &s.budget)?;
    d.set_item("namespace", &s.namespace)?;
    d.set_item("scope", s.scope.name())?;
    d.set_item("scope_value", &s.scope_value)?;
    d.set_item("spent_usd", nanos_to_usd(s.spent_nanos))?;
    d.set_item("reserved_usd", nanos_to_usd(s.reserved_nanos))?;
    d.set_item("limit_usd", nanos_to_usd(s.limit_nanos))?;
    let percent = if s.limit_nanos == 0 {
        100.0
    } else {
        s.spent_nanos as f64 / s.limit_nanos as f64 * 100.0
    };
    d.set_item("percent", percent)?;
    d.set_item(
        "period_start_us",
        (s.period_start_us > i64::MIN).then_some(s.period_start_us),
    )?;
    d.set_item("next_reset_us", s.next_reset_us)?;
    d.set_item("thresholds_crossed", s.thresholds_crossed.clone())?;
    Ok(d)
}

/// How long a round trip to Redis given by URL may take.
const SHARED_TIMEOUT: Duration = Duration::from_secs(1);

/// The state `shared=` names: a `RedisRateLimiter` (its connection, prefix,
/// timeout and `on_unavailable` policy), a Redis URL (refusing calls while
/// Redis is down), or `None` (this process).
fn shared_state(
    py: Python<'_>,
    shared: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Arc<dyn BudgetState>>> {
    let Some(shared) = shared.filter(|s| !s.is_none()) else {
        return Ok(None);
    };
    if let Ok(url) = shared.cast::<PyString>() {
        let url = url.to_str()?.to_string();
        if !["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(PyValueError::new_err(format!(
                "shared: a Redis URL must start with redis://, rediss:// or unix://, got {url:?}"
            )));
        }
        let runtime = pyo3_async_runtimes::tokio::get_runtime().handle().clone();
        let state = py
            .detach(|| RedisState::connect(&url, "usagewarden", SHARED_TIMEOUT, runtime))
            .py_err(py)?;
        return Ok(Some(Arc::new(state)));
    }
    let limiter = shared.cast::<PyRedisRateLimiter>().map_err(|_| {
        PyTypeError::new_err(format!(
            "shared must be a usagewarden.RedisRateLimiter, a Redis URL (str) or None, not {}",
            shared
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let limiter = limiter.get().shared().clone();
    let state = py.detach(|| RedisState::on(limiter.redis())).py_err(py)?;
    if !limiter.falls_back() {
        return Ok(Some(Arc::new(state)));
    }
    let log = crate::python::ledger::store::python_log();
    let warn = Arc::new(move |message: &str| log(LogLevel::Warning, message));
    Ok(Some(Arc::new(FallbackState::new(state, warn))))
}

#[pymethods]
impl PyBudgetCore {
    #[new]
    #[pyo3(signature = (budgets, store, clock=None, refresh_seconds=None, stored=true, shared=None))]
    fn new(
        py: Python<'_>,
        budgets: &Bound<'_, PyAny>,
        store: &Bound<'_, PyAny>,
        clock: Option<&Bound<'_, PyAny>>,
        refresh_seconds: Option<&Bound<'_, PyAny>>,
        stored: bool,
        shared: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let refresh_us = args::optional_seconds(refresh_seconds, "refresh_seconds", true)?
            .map(|ns| (ns / 1_000) as i64);
        let mut list = Vec::new();
        for item in budgets
            .try_iter()
            .map_err(|_| PyTypeError::new_err("budgets must be a list of usagewarden.Budget"))?
        {
            let item = item?;
            let budget = item.cast::<PyBudget>().map_err(|_| {
                PyTypeError::new_err("budgets must be a list of usagewarden.Budget")
            })?;
            list.push(budget.get().inner.clone());
        }
        let ledger = crate::python::ledger::metering_store(store).ok_or_else(|| {
            PyTypeError::new_err("store must be a usagewarden store (SQLiteStore, PostgresStore or their async twins)")
        })?;
        let table = ledger.clone();
        let loader = Box::new(move |budget: &Budget, value: &str, start: i64, end: i64| {
            let totals = ledger.summary(&spend_filters(budget, value, start, end))?;
            Ok(totals.cost_nanos.unwrap_or(0))
        });
        let mut engine = Engine::new(list, loader, refresh_us).py_err(py)?;
        if stored {
            engine = engine.with_stored(Box::new(move || table.list_budgets(None, false)));
        }
        if let Some(state) = shared_state(py, shared)? {
            engine = engine.with_state(state);
        }
        Ok(PyBudgetCore {
            engine: Arc::new(engine),
            clock: ClockArg::extract(clock)?,
        })
    }

    fn now_us(&self) -> i64 {
        (self.clock.clock.now() / 1_000) as i64
    }

    /// `(reservation, downgrade_to, alerts)`, or `(None, refusal, alerts)`.
    #[pyo3(signature = (model, agent_id, consumer_id, namespace, task_id, estimate_usd))]
    #[allow(clippy::too_many_arguments)]
    fn check<'py>(
        &self,
        py: Python<'py>,
        model: Option<String>,
        agent_id: String,
        consumer_id: String,
        namespace: String,
        task_id: Option<String>,
        estimate_usd: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let estimate = args::cost(Some(estimate_usd), "estimated_cost")?;
        let call = CallScope {
            namespace,
            agent_id,
            consumer_id,
            model,
            task_id,
        };
        let now = self.now_us();
        let engine = self.engine.clone();
        let outcome = py
            .detach(|| engine.check(&call, estimate, now))
            .py_err(py)?;
        match outcome {
            Ok(admission) => (
                admission.reservation,
                admission.downgrade_to,
                alerts_list(py, &admission.alerts)?,
            )
                .into_pyobject(py)
                .map(|t| t.into_any()),
            Err(refusal) => {
                let d = PyDict::new(py);
                d.set_item("budget", &refusal.budget)?;
                d.set_item("scope_value", &refusal.scope_value)?;
                d.set_item("spent_usd", nanos_to_usd(refusal.spent_nanos))?;
                d.set_item("reserved_usd", nanos_to_usd(refusal.reserved_nanos))?;
                d.set_item("limit_usd", nanos_to_usd(refusal.limit_nanos))?;
                d.set_item("next_reset_us", refusal.next_reset_us)?;
                (py.None(), d, PyList::empty(py))
                    .into_pyobject(py)
                    .map(|t| t.into_any())
            }
        }
    }

    fn settle<'py>(
        &self,
        py: Python<'py>,
        reservation: u64,
        cost_usd: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let cost = args::cost(Some(cost_usd), "cost")?;
        let now = self.now_us();
        let engine = self.engine.clone();
        let alerts = py
            .detach(|| engine.settle(reservation, cost, now))
            .py_err(py)?;
        alerts_list(py, &alerts)
    }

    /// Every budget enforced now: the code budgets, then the stored ones
    /// (read again when the refresh is due).
    fn enforced(&self, py: Python<'_>) -> PyResult<Vec<PyBudget>> {
        let now = self.now_us();
        let engine = self.engine.clone();
        let budgets = py.detach(|| engine.enforced(now)).py_err(py)?;
        Ok(budgets
            .into_iter()
            .map(|inner| PyBudget { inner })
            .collect())
    }

    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let now = self.now_us();
        let engine = self.engine.clone();
        let statuses = py.detach(|| engine.status(now)).py_err(py)?;
        let list = PyList::empty(py);
        for s in statuses {
            list.append(status_dict(py, &s)?)?;
        }
        Ok(list)
    }
}
