//! `usagewarden.Checkpoint`, `Receipt`, `VerifyReport` and `VerifyProblem`:
//! the ledger's hash chain as seen from Python.

use super::pytime;
use crate::ledger::chain::{digest_from_hex, to_hex};
use crate::ledger::chain_verify::{Checkpoint, Problem, Receipt, VerifyReport};
use crate::ledger::export::iso_utc;
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};

/// The head of a namespace's chain (or any position of it): anchor it
/// elsewhere, and pass it back to `verify(checkpoints=...)` to prove that
/// nothing up to it was rewritten since.
#[pyclass(frozen, name = "Checkpoint", module = "usagewarden")]
#[derive(Clone)]
pub struct PyCheckpoint {
    pub(crate) inner: Checkpoint,
}

#[pymethods]
impl PyCheckpoint {
    #[getter]
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }
    /// Events chained up to here (0 before the first).
    #[getter]
    fn position(&self) -> i64 {
        self.inner.position
    }
    /// The chain's SHA-256 digest at `position`, lowercase hex.
    #[getter]
    fn digest(&self) -> String {
        to_hex(&self.inner.digest)
    }
    /// When it was taken (the store's clock), an aware datetime in UTC.
    #[getter]
    fn time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pytime::from_us(py, self.inner.time_us)
    }

    /// `{"namespace", "position", "digest", "time"}` (time as ISO 8601): JSON-ready.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("namespace", &self.inner.namespace)?;
        d.set_item("position", self.inner.position)?;
        d.set_item("digest", self.digest())?;
        d.set_item("time", iso_utc(self.inner.time_us))?;
        Ok(d)
    }

    /// Rebuilds a checkpoint from `to_dict()` output.
    #[classmethod]
    fn from_dict(_cls: &Bound<'_, PyType>, data: &Bound<'_, PyAny>) -> PyResult<PyCheckpoint> {
        checkpoint_from_dict(data, "data")
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let equal = other
            .cast::<PyCheckpoint>()
            .ok()
            .map(|o| self.inner == o.get().inner);
        crate::python::errors::compare_eq(other.py(), equal, op)
    }

    fn __repr__(&self) -> String {
        format!(
            "Checkpoint(namespace={:?}, position={}, digest={:?}, time={:?})",
            self.inner.namespace,
            self.inner.position,
            self.digest(),
            iso_utc(self.inner.time_us)
        )
    }
}

fn checkpoint_from_dict(data: &Bound<'_, PyAny>, name: &str) -> PyResult<PyCheckpoint> {
    let data = data
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a Checkpoint or a dict")))?;
    let field = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        data.get_item(key)?
            .ok_or_else(|| PyValueError::new_err(format!("{name}: missing {key:?}")))
    };
    let bad = |key: &str, what: &str| PyValueError::new_err(format!("{name}: {key:?} {what}"));
    let namespace: String = field("namespace")?
        .extract()
        .map_err(|_| bad("namespace", "must be a str"))?;
    let position: i64 = field("position")?
        .extract()
        .map_err(|_| bad("position", "must be an int"))?;
    if position < 0 {
        return Err(bad("position", "must not be negative"));
    }
    let digest = field("digest")?
        .extract::<String>()
        .ok()
        .and_then(|d| digest_from_hex(&d))
        .ok_or_else(|| bad("digest", "must be 64 hex digits"))?;
    let time_us = match data.get_item("time")? {
        Some(t) if !t.is_none() => pytime::to_us(&t, &format!("{name}.time"), true)?,
        _ => 0,
    };
    Ok(PyCheckpoint {
        inner: Checkpoint {
            namespace,
            position,
            digest,
            time_us,
        },
    })
}

/// `checkpoints=`: Checkpoint objects or their dicts.
pub(crate) fn checkpoints_arg(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Checkpoint>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(Vec::new());
    };
    let items = value.try_iter().map_err(|_| {
        PyTypeError::new_err("checkpoints must be an iterable of Checkpoint or dict")
    })?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        match item.cast::<PyCheckpoint>() {
            Ok(c) => out.push(c.get().inner.clone()),
            Err(_) => out.push(checkpoint_from_dict(&item, &format!("checkpoints[{i}]"))?.inner),
        }
    }
    Ok(out)
}

/// One event's place in its namespace's chain: the canonical payload,
/// the digest before it and its own. `verify()` needs nothing but these.
#[pyclass(frozen, name = "Receipt", module = "usagewarden")]
pub struct PyReceipt {
    pub(crate) inner: Receipt,
}

#[pymethods]
impl PyReceipt {
    #[getter]
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }
    #[getter]
    fn position(&self) -> i64 {
        self.inner.position
    }
    /// The event's canonical encoding (UTF-8 JSON, see the README's "Auditing").
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }
    /// The chain's digest before this event, lowercase hex.
    #[getter]
    fn previous(&self) -> String {
        to_hex(&self.inner.previous)
    }
    /// `SHA-256(previous ‖ payload)` as stored, lowercase hex.
    #[getter]
    fn digest(&self) -> String {
        to_hex(&self.inner.digest)
    }

    /// Whether `digest` is `SHA-256(previous ‖ payload)` (offline: no store needed).
    fn verify(&self) -> bool {
        self.inner.is_consistent()
    }

    /// `{"namespace", "position", "payload" (text), "previous", "digest"}`: JSON-ready.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("namespace", &self.inner.namespace)?;
        d.set_item("position", self.inner.position)?;
        d.set_item("payload", String::from_utf8_lossy(&self.inner.payload))?;
        d.set_item("previous", self.previous())?;
        d.set_item("digest", self.digest())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Receipt(namespace={:?}, position={}, digest={:?})",
            self.inner.namespace,
            self.inner.position,
            self.digest()
        )
    }
}

/// What `verify` found first: `kind` is "altered", "missing", "inserted" or "reordered".
#[pyclass(frozen, name = "VerifyProblem", module = "usagewarden")]
pub struct PyVerifyProblem {
    inner: Problem,
}

#[pymethods]
impl PyVerifyProblem {
    #[getter]
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }
    /// The chain position concerned (0 for a row that has none).
    #[getter]
    fn position(&self) -> i64 {
        self.inner.position
    }
    /// The request id of the row concerned; `None` for events that are gone.
    #[getter]
    fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.name()
    }
    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }

    fn __repr__(&self) -> String {
        format!(
            "VerifyProblem(kind={:?}, namespace={:?}, position={}, request_id={}, message={:?})",
            self.kind(),
            self.inner.namespace,
            self.inner.position,
            crate::python::ledger::opt_repr(self.request_id()),
            self.inner.message
        )
    }
}

/// The outcome of `store.verify()`.
#[pyclass(frozen, name = "VerifyReport", module = "usagewarden")]
pub struct PyVerifyReport {
    pub(crate) inner: VerifyReport,
}

#[pymethods]
impl PyVerifyReport {
    /// Whether every checked row is intact.
    #[getter]
    fn ok(&self) -> bool {
        self.inner.ok()
    }
    /// The namespaces checked, in order (up to the one with the problem).
    #[getter]
    fn namespaces(&self) -> Vec<String> {
        self.inner.namespaces.clone()
    }
    /// Rows whose digest was recomputed and matched.
    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows
    }
    #[getter]
    fn problem(&self) -> Option<PyVerifyProblem> {
        self.inner
            .problem
            .clone()
            .map(|inner| PyVerifyProblem { inner })
    }
    /// Where each namespace's verified chain ends: checkpoints to anchor
    /// (trustworthy only when `ok`).
    #[getter]
    fn checkpoints(&self) -> Vec<PyCheckpoint> {
        self.inner
            .heads
            .iter()
            .map(|inner| PyCheckpoint {
                inner: inner.clone(),
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        let problem = self
            .problem()
            .map_or_else(|| "None".to_string(), |p| p.__repr__());
        format!(
            "VerifyReport(ok={}, namespaces={}, rows={}, problem={problem})",
            if self.ok() { "True" } else { "False" },
            self.inner.namespaces.len(),
            self.inner.rows
        )
    }
}
