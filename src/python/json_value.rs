//! Python values to JSON without a round trip through `json.dumps`, which
//! builds a new encoder on every call with options and costs ten times the
//! rest of an event. It accepts what `json.dumps(allow_nan=False)` accepts,
//! with its key conversions; objects come out with sorted keys.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// How deep values may nest (the limit of the JSON parser the stored text
/// is read back with).
const MAX_DEPTH: usize = 128;

/// `value` as JSON, or why it is not JSON-serialisable.
pub(crate) fn to_json(value: &Bound<'_, PyAny>) -> Result<Value, String> {
    convert(value, 0)
}

fn convert(value: &Bound<'_, PyAny>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
    }
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(Value::String(
            text.to_str().map_err(|e| e.to_string())?.to_owned(),
        ));
    }
    // Before int: bool is a subclass of int.
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(Value::Bool(flag.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        return integer(value);
    }
    if let Ok(float) = value.cast::<PyFloat>() {
        return finite(float.value());
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut object = Map::new();
        for (key, item) in dict.iter() {
            object.insert(key_text(&key)?, convert(&item, depth + 1)?);
        }
        return Ok(Value::Object(object));
    }
    if let Ok(list) = value.cast::<PyList>() {
        return list.iter().map(|item| convert(&item, depth + 1)).collect();
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        return tuple.iter().map(|item| convert(&item, depth + 1)).collect();
    }
    Err(format!(
        "Object of type {} is not JSON serializable",
        type_name(value)
    ))
}

/// An int as the JSON parser would read `json.dumps`' digits back: exact
/// within 64 bits, else the nearest float.
fn integer(value: &Bound<'_, PyAny>) -> Result<Value, String> {
    if let Ok(n) = value.extract::<i64>() {
        return Ok(Value::from(n));
    }
    if let Ok(n) = value.extract::<u64>() {
        return Ok(Value::from(n));
    }
    match value.extract::<f64>() {
        Ok(f) => finite(f),
        Err(_) => Err("an integer too large for JSON".into()),
    }
}

fn finite(f: f64) -> Result<Value, String> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("Out of range float values are not JSON compliant: {f}"))
}

/// A dict key as `json.dumps` writes it: str as is; bool, None, int and
/// float as their JSON text.
fn key_text(key: &Bound<'_, PyAny>) -> Result<String, String> {
    if let Ok(text) = key.cast::<PyString>() {
        return Ok(text.to_str().map_err(|e| e.to_string())?.to_owned());
    }
    if let Ok(flag) = key.cast::<PyBool>() {
        return Ok(if flag.is_true() { "true" } else { "false" }.into());
    }
    if key.is_none() {
        return Ok("null".into());
    }
    if key.is_instance_of::<PyInt>() || key.is_instance_of::<PyFloat>() {
        if let Ok(f) = key.cast::<PyFloat>() {
            finite(f.value())?;
        }
        return key.str().map(|s| s.to_string()).map_err(|e| e.to_string());
    }
    Err(format!(
        "keys must be str, int, float, bool or None, not {}",
        type_name(key)
    ))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}
