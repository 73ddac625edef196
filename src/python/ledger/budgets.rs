//! The budgets table through the store classes: `usagewarden.BudgetRecord`
//! and the `StoreCore` methods behind `create_budget`, `update_budget`,
//! `delete_budget`, `reset_budget`, `get_budget`, `budgets`, `budget_status`
//! and `budget_history`.

use super::jobs::{job, Job};
use super::pytime;
use super::store::{namespace_arg, StoreCore};
use crate::budget::engine::Status;
use crate::budget::{definition, report};
use crate::ledger::budget_table::{BudgetChange, StoredBudget};
use crate::python::args;
use crate::python::budget::{status_dict, PyBudget};
use crate::usage::nanos_to_usd;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The most days `budget_history` looks back.
pub(crate) const MAX_HISTORY_DAYS: u32 = 365;

/// A budget kept in the ledger database: its namespace, the `Budget` it
/// defines, and when it was created, last changed, deleted and reset.
#[pyclass(frozen, name = "BudgetRecord", module = "usagewarden")]
pub struct PyBudgetRecord {
    row: StoredBudget,
    budget: Py<PyBudget>,
}

impl PyBudgetRecord {
    fn wrap(py: Python<'_>, row: StoredBudget) -> PyResult<PyBudgetRecord> {
        let inner = report::stored_budget(&row).map_err(|e| crate::python::errors::to_py(py, e))?;
        Ok(PyBudgetRecord {
            row,
            budget: Py::new(py, PyBudget { inner })?,
        })
    }
}

/// Rows read without the interpreter, made into records with it.
pub(crate) struct Records(Vec<StoredBudget>);

impl<'py> IntoPyObject<'py> for Records {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for row in self.0 {
            list.append(Py::new(py, PyBudgetRecord::wrap(py, row)?)?)?;
        }
        Ok(list)
    }
}

/// One row, as a record.
pub(crate) struct Record(StoredBudget);

impl<'py> IntoPyObject<'py> for Record {
    type Target = PyBudgetRecord;
    type Output = Bound<'py, PyBudgetRecord>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyBudgetRecord>> {
        Bound::new(py, PyBudgetRecord::wrap(py, self.0)?)
    }
}

/// Status rows as dicts with aware datetimes.
pub(crate) struct StatusRows(Vec<Status>);

impl<'py> IntoPyObject<'py> for StatusRows {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for status in &self.0 {
            let d = status_dict(py, status)?;
            for (from, to) in [
                ("period_start_us", "period_start"),
                ("next_reset_us", "next_reset"),
            ] {
                let us: Option<i64> = d.get_item(from)?.and_then(|v| v.extract().ok());
                d.del_item(from)?;
                d.set_item(to, us.map(|us| pytime::from_us(py, us)).transpose()?)?;
            }
            list.append(d)?;
        }
        Ok(list)
    }
}

fn optional_time<'py>(py: Python<'py>, us: Option<i64>) -> PyResult<Option<Bound<'py, PyAny>>> {
    us.map(|us| pytime::from_us(py, us)).transpose()
}

#[pymethods]
impl PyBudgetRecord {
    #[getter]
    fn namespace(&self) -> &str {
        &self.row.namespace
    }
    #[getter]
    fn name(&self) -> &str {
        &self.row.name
    }
    /// The budget this record defines (confined to `namespace`).
    #[getter]
    fn budget(&self, py: Python<'_>) -> Py<PyBudget> {
        self.budget.clone_ref(py)
    }
    #[getter]
    fn created_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pytime::from_us(py, self.row.created_us)
    }
    #[getter]
    fn updated_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pytime::from_us(py, self.row.updated_us)
    }
    /// When the budget was deleted; `None` while it is live.
    #[getter]
    fn deleted_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        optional_time(py, self.row.deleted_us)
    }
    /// When its spend was last reset (spend counts from then); `None` if never.
    #[getter]
    fn reset_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        optional_time(py, self.row.reset_us)
    }

    /// The record as plain values: the definition's fields (`Budget`'s
    /// keyword arguments) with the name, namespace and times.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let json = py.import("json")?;
        let d: Bound<'py, PyDict> = json
            .call_method1("loads", (&self.row.definition,))?
            .cast_into()?;
        d.set_item("name", &self.row.name)?;
        d.set_item("namespace", &self.row.namespace)?;
        d.set_item("created_at", self.created_at(py)?)?;
        d.set_item("updated_at", self.updated_at(py)?)?;
        d.set_item("deleted_at", self.deleted_at(py)?)?;
        d.set_item("reset_at", self.reset_at(py)?)?;
        Ok(d)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyBudgetRecord>()
            .is_ok_and(|o| o.get().row == self.row)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.row.namespace, &self.row.name, self.row.updated_us).hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "BudgetRecord(namespace={:?}, name={:?}, limit_usd={}, deleted={})",
            self.row.namespace,
            self.row.name,
            nanos_to_usd(self.budget.get().inner.limit_nanos),
            if self.row.deleted_us.is_some() {
                "True"
            } else {
                "False"
            }
        )
    }
}

fn budget_arg(budget: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let budget = budget
        .cast::<PyBudget>()
        .map_err(|_| PyTypeError::new_err("budget must be a usagewarden.Budget"))?;
    // A record's budget may be stored again elsewhere: the namespace is the store's argument.
    let inner = &budget.get().inner;
    Ok((inner.name.clone(), definition::to_json(inner)))
}

impl StoreCore {
    fn now(&self) -> i64 {
        (self.clock.clock.now() / 1_000) as i64
    }

    /// `create_budget`/`update_budget`: the definition from a `Budget`.
    pub(crate) fn put_budget(
        &self,
        budget: &Bound<'_, PyAny>,
        namespace: Option<&Bound<'_, PyAny>>,
        create: bool,
    ) -> PyResult<Job<Record>> {
        let (name, json) = budget_arg(budget)?;
        let change = if create {
            BudgetChange::Create(json)
        } else {
            BudgetChange::Update(json)
        };
        self.change_budget(name, namespace, change)
    }

    /// `delete_budget`/`reset_budget`.
    pub(crate) fn mark_budget(
        &self,
        name: &Bound<'_, PyAny>,
        namespace: Option<&Bound<'_, PyAny>>,
        delete: bool,
    ) -> PyResult<Job<Record>> {
        let name = args::text(name, "name")?;
        let change = if delete {
            BudgetChange::Delete
        } else {
            BudgetChange::Reset
        };
        self.change_budget(name, namespace, change)
    }

    fn change_budget(
        &self,
        name: String,
        namespace: Option<&Bound<'_, PyAny>>,
        change: BudgetChange,
    ) -> PyResult<Job<Record>> {
        let namespace = namespace_arg(namespace)?;
        let store = self.store.clone();
        Ok(job(move || {
            store.change_budget(&namespace, &name, change).map(Record)
        }))
    }

    pub(crate) fn get_budget(
        &self,
        name: &Bound<'_, PyAny>,
        namespace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Job<Record>> {
        let name = args::text(name, "name")?;
        let namespace = namespace_arg(namespace)?;
        let store = self.store.clone();
        Ok(job(move || store.get_budget(&namespace, &name).map(Record)))
    }

    pub(crate) fn list_budgets(
        &self,
        namespace: Option<&Bound<'_, PyAny>>,
        include_deleted: bool,
    ) -> PyResult<Job<Records>> {
        let namespace = args::optional_text(namespace, "namespace")?;
        let store = self.store.clone();
        Ok(job(move || {
            store
                .list_budgets(namespace.as_deref(), include_deleted)
                .map(Records)
        }))
    }

    pub(crate) fn budget_status(
        &self,
        name: Option<&Bound<'_, PyAny>>,
        namespace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Job<StatusRows>> {
        let name = args::optional_text(name, "name")?;
        let namespace = namespace_arg(namespace)?;
        let store = self.store.clone();
        let now = self.now();
        Ok(job(move || {
            let rows = match name {
                Some(name) => vec![store.get_budget(&namespace, &name)?],
                None => store.list_budgets(Some(&namespace), false)?,
            };
            let mut out = Vec::new();
            for row in &rows {
                out.extend(report::status(&*store, row, now)?);
            }
            Ok(StatusRows(out))
        }))
    }

    pub(crate) fn budget_history(
        &self,
        name: &Bound<'_, PyAny>,
        days: Option<&Bound<'_, PyAny>>,
        namespace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Job<Vec<(String, f64)>>> {
        let name = args::text(name, "name")?;
        let namespace = namespace_arg(namespace)?;
        let days = match days {
            None => 30,
            Some(d) => d
                .extract::<u32>()
                .ok()
                .filter(|n| (1..=MAX_HISTORY_DAYS).contains(n))
                .filter(|_| !d.is_instance_of::<pyo3::types::PyBool>())
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "days: must be an int from 1 to {MAX_HISTORY_DAYS}, got {d}"
                    ))
                })?,
        };
        let store = self.store.clone();
        let now = self.now();
        Ok(job(move || {
            let row = store.get_budget(&namespace, &name)?;
            Ok(report::history(&*store, &row, days, now)?
                .into_iter()
                .map(|(day, nanos)| (day, nanos_to_usd(nanos)))
                .collect())
        }))
    }
}
