//! `usagewarden.UsageEvent`.

use super::pytime;
use crate::ledger::event::{
    canonical_metadata_value, new_request_id, UsageEvent, DEFAULT_ACTION, DEFAULT_NAMESPACE,
};
use crate::ledger::export::iso_utc;
use crate::python::args;
use crate::python::errors::IntoPyResult;
use crate::python::json_value;
use crate::python::usage::PyUsage;
use crate::usage::nanos_to_usd;
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::sync::Arc;

fn json(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static JSON: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(JSON
        .get_or_try_init(py, || py.import("json").map(Bound::unbind))?
        .bind(py))
}

/// One billable action of an agent. Immutable and validated on construction.
#[pyclass(frozen, name = "UsageEvent", module = "usagewarden")]
pub struct PyUsageEvent {
    /// Shared with the store's queue, so recording never copies the event.
    pub(crate) inner: Arc<UsageEvent>,
}

impl PyUsageEvent {
    pub(crate) fn wrap(inner: UsageEvent) -> Self {
        PyUsageEvent {
            inner: Arc::new(inner),
        }
    }
}

/// `metadata` (a dict or None) as the ledger keeps it: JSON, canonical, redacted.
fn metadata_of(py: Python<'_>, metadata: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    match metadata {
        Some(m) if !m.is_none() => {
            if !m.is_instance_of::<PyDict>() {
                return Err(PyTypeError::new_err(format!(
                    "metadata must be a dict, not {}",
                    m.get_type().name()?
                )));
            }
            let value = json_value::to_json(m).map_err(|e| {
                PyTypeError::new_err(format!("metadata must be JSON-serialisable: {e}"))
            })?;
            Ok(Some(canonical_metadata_value(value).py_err(py)?))
        }
        _ => Ok(None),
    }
}

/// `timestamp_us` (integer UTC microseconds) as the event keeps it.
fn timestamp_of_us(t: &Bound<'_, PyAny>) -> PyResult<i64> {
    let us = args::count(Some(t), "timestamp_us", 0)?;
    i64::try_from(us)
        .map_err(|_| PyValueError::new_err(format!("timestamp_us is out of range, got {us}")))
}

/// Pulls a usage event out of a Python object, with a clear error.
pub(crate) fn extract_event(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Arc<UsageEvent>> {
    obj.cast::<PyUsageEvent>()
        .map(|e| e.get().inner.clone())
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a usagewarden.UsageEvent")))
}

#[pymethods]
impl PyUsageEvent {
    #[new]
    #[pyo3(
        signature = (agent_id, consumer_id, *, task_id=None, namespace=None, action=None, model=None,
                     tokens_in=None, tokens_out=None, cache_read_tokens=None, cache_write_tokens=None,
                     duration_ms=None, api_calls=None, units=None, cost=None, timestamp=None,
                     request_id=None, source=None, metadata=None, timestamp_us=None, artifact_digest=None),
        text_signature = "(agent_id, consumer_id, *, task_id=None, namespace='default', action='llm.request', model=None, tokens_in=0, tokens_out=0, cache_read_tokens=0, cache_write_tokens=0, duration_ms=0, api_calls=0, units=0, cost=None, timestamp=None, request_id=None, source=None, metadata=None, timestamp_us=None, artifact_digest=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        consumer_id: &Bound<'_, PyAny>,
        task_id: Option<&Bound<'_, PyAny>>,
        namespace: Option<&Bound<'_, PyAny>>,
        action: Option<&Bound<'_, PyAny>>,
        model: Option<&Bound<'_, PyAny>>,
        tokens_in: Option<&Bound<'_, PyAny>>,
        tokens_out: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        duration_ms: Option<&Bound<'_, PyAny>>,
        api_calls: Option<&Bound<'_, PyAny>>,
        units: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
        request_id: Option<&Bound<'_, PyAny>>,
        source: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        timestamp_us: Option<&Bound<'_, PyAny>>,
        artifact_digest: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        // The time as integer UTC microseconds, for callers that keep time as
        // numbers (the Warden): no datetime built only to be taken apart.
        let given_us = match timestamp_us {
            Some(t) if !t.is_none() => {
                if timestamp.is_some_and(|t| !t.is_none()) {
                    return Err(PyTypeError::new_err(
                        "give timestamp or timestamp_us, not both",
                    ));
                }
                Some(timestamp_of_us(t)?)
            }
            _ => None,
        };
        let metadata = metadata_of(py, metadata)?;
        let event = UsageEvent {
            agent_id: args::text(agent_id, "agent_id")?,
            consumer_id: args::text(consumer_id, "consumer_id")?,
            task_id: args::optional_text(task_id, "task_id")?,
            namespace: args::optional_text(namespace, "namespace")?
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            action: args::optional_text(action, "action")?.unwrap_or_else(|| DEFAULT_ACTION.into()),
            model: args::optional_text(model, "model")?,
            tokens_in: args::count(tokens_in, "tokens_in", 0)?,
            tokens_out: args::count(tokens_out, "tokens_out", 0)?,
            cache_read_tokens: args::count(cache_read_tokens, "cache_read_tokens", 0)?,
            cache_write_tokens: args::count(cache_write_tokens, "cache_write_tokens", 0)?,
            duration_ms: args::count(duration_ms, "duration_ms", 0)?,
            api_calls: args::count(api_calls, "api_calls", 0)?,
            units: args::count(units, "units", 0)?,
            cost_nanos: args::optional_cost(cost, "cost")?,
            timestamp_us: match (given_us, timestamp) {
                (Some(us), _) => us,
                (None, Some(t)) if !t.is_none() => pytime::to_us(t, "timestamp", false)?,
                _ => pytime::now_us(),
            },
            request_id: args::optional_text(request_id, "request_id")?
                .unwrap_or_else(new_request_id),
            source: args::optional_text(source, "source")?,
            metadata,
            artifact_digest: args::optional_text(artifact_digest, "artifact_digest")?,
        };
        event.validate().py_err(py)?;
        Ok(PyUsageEvent::wrap(event))
    }

    /// The event of one Warden call, from positional arguments: a call by
    /// keyword builds and parses a dict of them, which costs more than the
    /// event itself on the Warden's hot path. Checked like the constructor.
    #[staticmethod]
    #[pyo3(
        name = "_of_call",
        signature = (agent_id, consumer_id, task_id, namespace, action, model, usage, duration_ms,
                     cost, timestamp_us, request_id, source, metadata, /)
    )]
    #[allow(clippy::too_many_arguments)]
    fn of_call(
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        consumer_id: &Bound<'_, PyAny>,
        task_id: &Bound<'_, PyAny>,
        namespace: &Bound<'_, PyAny>,
        action: &Bound<'_, PyAny>,
        model: &Bound<'_, PyAny>,
        usage: PyRef<'_, PyUsage>,
        duration_ms: &Bound<'_, PyAny>,
        cost: &Bound<'_, PyAny>,
        timestamp_us: &Bound<'_, PyAny>,
        request_id: &Bound<'_, PyAny>,
        source: &Bound<'_, PyAny>,
        metadata: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let usage = usage.inner;
        let event = UsageEvent {
            agent_id: args::text(agent_id, "agent_id")?,
            consumer_id: args::text(consumer_id, "consumer_id")?,
            task_id: args::optional_text(Some(task_id), "task_id")?,
            namespace: args::text(namespace, "namespace")?,
            action: args::text(action, "action")?,
            model: args::optional_text(Some(model), "model")?,
            tokens_in: usage.input_tokens,
            tokens_out: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            duration_ms: args::count(Some(duration_ms), "duration_ms", 0)?,
            api_calls: 1,
            units: 0,
            cost_nanos: args::optional_cost(Some(cost), "cost")?,
            timestamp_us: timestamp_of_us(timestamp_us)?,
            request_id: args::optional_text(Some(request_id), "request_id")?
                .unwrap_or_else(new_request_id),
            source: args::optional_text(Some(source), "source")?,
            metadata: metadata_of(py, Some(metadata))?,
            artifact_digest: None,
        };
        event.validate().py_err(py)?;
        Ok(PyUsageEvent::wrap(event))
    }

    /// A new event like this one (a fresh request id, the time now) for
    /// `consumer_id` and `duration_ms`: what a request meter records per
    /// request, without converting and redacting the same metadata again.
    #[pyo3(name = "_stamped", signature = (consumer_id, duration_ms, /))]
    fn stamped(
        &self,
        py: Python<'_>,
        consumer_id: &Bound<'_, PyAny>,
        duration_ms: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let event = UsageEvent {
            consumer_id: args::text(consumer_id, "consumer_id")?,
            duration_ms: args::count(Some(duration_ms), "duration_ms", 0)?,
            timestamp_us: pytime::now_us(),
            request_id: new_request_id(),
            ..(*self.inner).clone()
        };
        event.validate().py_err(py)?;
        Ok(PyUsageEvent::wrap(event))
    }

    #[getter]
    fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }
    #[getter]
    fn consumer_id(&self) -> &str {
        &self.inner.consumer_id
    }
    #[getter]
    fn task_id(&self) -> Option<&str> {
        self.inner.task_id.as_deref()
    }
    #[getter]
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }
    #[getter]
    fn action(&self) -> &str {
        &self.inner.action
    }
    #[getter]
    fn model(&self) -> Option<&str> {
        self.inner.model.as_deref()
    }
    #[getter]
    fn tokens_in(&self) -> u64 {
        self.inner.tokens_in
    }
    #[getter]
    fn tokens_out(&self) -> u64 {
        self.inner.tokens_out
    }
    #[getter]
    fn total_tokens(&self) -> u64 {
        self.inner.total_tokens()
    }
    #[getter]
    fn cache_read_tokens(&self) -> u64 {
        self.inner.cache_read_tokens
    }
    #[getter]
    fn cache_write_tokens(&self) -> u64 {
        self.inner.cache_write_tokens
    }
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.inner.duration_ms
    }
    #[getter]
    fn api_calls(&self) -> u64 {
        self.inner.api_calls
    }
    #[getter]
    fn units(&self) -> u64 {
        self.inner.units
    }
    /// Cost in USD, or `None` when unknown.
    #[getter]
    fn cost(&self) -> Option<f64> {
        self.inner.cost_nanos.map(nanos_to_usd)
    }
    /// When it happened: an aware datetime in UTC.
    #[getter]
    fn timestamp<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pytime::from_us(py, self.inner.timestamp_us)
    }
    #[getter]
    fn request_id(&self) -> &str {
        &self.inner.request_id
    }
    #[getter]
    fn source(&self) -> Option<&str> {
        self.inner.source.as_deref()
    }
    /// Lowercase hex digest of what the action produced, or `None`.
    #[getter]
    fn artifact_digest(&self) -> Option<&str> {
        self.inner.artifact_digest.as_deref()
    }
    /// The metadata as stored: secrets already redacted.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .metadata
            .as_deref()
            .map(|m| json(py)?.call_method1("loads", (m,)))
            .transpose()
    }

    /// A JSON-ready dict (timestamp as ISO 8601); `UsageEvent.from_dict` rebuilds it.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let e = &self.inner;
        let d = PyDict::new(py);
        d.set_item("agent_id", &e.agent_id)?;
        d.set_item("consumer_id", &e.consumer_id)?;
        d.set_item("task_id", &e.task_id)?;
        d.set_item("namespace", &e.namespace)?;
        d.set_item("action", &e.action)?;
        d.set_item("model", &e.model)?;
        d.set_item("tokens_in", e.tokens_in)?;
        d.set_item("tokens_out", e.tokens_out)?;
        d.set_item("cache_read_tokens", e.cache_read_tokens)?;
        d.set_item("cache_write_tokens", e.cache_write_tokens)?;
        d.set_item("duration_ms", e.duration_ms)?;
        d.set_item("api_calls", e.api_calls)?;
        d.set_item("units", e.units)?;
        d.set_item("cost", self.cost())?;
        d.set_item("timestamp", iso_utc(e.timestamp_us))?;
        d.set_item("request_id", &e.request_id)?;
        d.set_item("source", &e.source)?;
        d.set_item("metadata", self.metadata(py)?)?;
        d.set_item("artifact_digest", &e.artifact_digest)?;
        Ok(d)
    }

    /// Builds an event from `to_dict()` output (or an exported JSON object).
    /// `timestamp` may be an ISO 8601 string with an offset or an aware datetime.
    #[classmethod]
    fn from_dict(
        cls: &Bound<'_, pyo3::types::PyType>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = cls.py();
        let data = data
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("data must be a dict"))?;
        let kwargs = PyDict::new(py);
        let mut positional: [Option<Bound<'_, PyAny>>; 2] = [None, None];
        for (key, value) in data.iter() {
            let key: String = key.extract()?;
            match key.as_str() {
                "agent_id" => positional[0] = Some(value),
                "consumer_id" => positional[1] = Some(value),
                // Derived fields written by to_dict()/export are accepted and recomputed.
                "total_tokens" => {}
                "timestamp" if value.is_instance_of::<PyString>() => {
                    let us = pytime::to_us(&value, "timestamp", true)?;
                    kwargs.set_item("timestamp", pytime::from_us(py, us)?)?;
                }
                "task_id" | "namespace" | "action" | "model" | "tokens_in" | "tokens_out"
                | "cache_read_tokens" | "cache_write_tokens" | "duration_ms" | "api_calls"
                | "units" | "cost" | "timestamp" | "request_id" | "source" | "metadata"
                | "artifact_digest" => {
                    kwargs.set_item(key, value)?;
                }
                other => {
                    return Err(PyValueError::new_err(format!(
                        "data: unknown UsageEvent field {other:?}"
                    )))
                }
            }
        }
        let [Some(agent), Some(consumer)] = positional else {
            return Err(PyValueError::new_err(
                "data: agent_id and consumer_id are required",
            ));
        };
        Ok(cls.call((agent, consumer), Some(&kwargs))?.unbind())
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let equal = other
            .cast::<PyUsageEvent>()
            .ok()
            .map(|o| self.inner == o.get().inner);
        crate::python::errors::compare_eq(other.py(), equal, op)
    }

    fn __hash__(&self) -> u64 {
        self.inner.fingerprint() as u64 ^ fnv(&self.inner.request_id)
    }

    fn __repr__(&self) -> String {
        let e = &self.inner;
        format!(
            "UsageEvent(agent_id={:?}, consumer_id={:?}, action={:?}, model={}, tokens_in={}, tokens_out={}, cost={}, timestamp={:?}, request_id={:?})",
            e.agent_id,
            e.consumer_id,
            e.action,
            crate::python::ledger::opt_repr(e.model.as_deref()),
            e.tokens_in,
            e.tokens_out,
            self.cost().map_or("None".into(), |c| format!("{c:?}")),
            iso_utc(e.timestamp_us),
            e.request_id
        )
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let args = (slf.get().to_dict(py)?,).into_pyobject(py)?;
        Ok((slf.get_type().getattr("from_dict")?, args))
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Events from a JSON request body (one object, or with `many` an array of
/// 1 to 1,000), or `None` when the body needs the caller's full validator
/// (which then names the problem). Used by the FastAPI router's fast path.
#[pyfunction]
#[pyo3(signature = (body, *, many, namespace))]
pub(crate) fn _events_from_json(
    py: Python<'_>,
    body: &[u8],
    many: bool,
    namespace: &str,
) -> Option<Vec<PyUsageEvent>> {
    let now = pytime::now_us();
    let events =
        py.detach(|| crate::ledger::event_json::events_from_json(body, many, namespace, now))?;
    Some(events.into_iter().map(PyUsageEvent::wrap).collect())
}
