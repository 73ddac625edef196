//! Export destinations: a path (written to a temporary file, renamed when
//! complete) or a Python file object (text or binary).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

/// Writes to a Python file object, re-attaching to the interpreter per chunk.
pub(crate) struct PyFileWriter {
    file: Py<PyAny>,
    text: bool,
}

impl Write for PyFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Python::attach(|py| {
            let file = self.file.bind(py);
            let result = if self.text {
                let chunk = std::str::from_utf8(buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                file.call_method1("write", (PyString::new(py, chunk),))
            } else {
                file.call_method1("write", (PyBytes::new(py, buf),))
            };
            result.map_err(|e| io::Error::other(e.to_string()))?;
            Ok(buf.len())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) enum Destination {
    Path(PathBuf),
    File(PyFileWriter),
}

impl Destination {
    pub(crate) fn extract(dest: &Bound<'_, PyAny>) -> PyResult<Destination> {
        let py = dest.py();
        if dest.hasattr("write")? {
            let io = py.import("io")?;
            let text = dest.is_instance(&io.getattr("TextIOBase")?)?;
            return Ok(Destination::File(PyFileWriter {
                file: dest.clone().unbind(),
                text,
            }));
        }
        let os = py.import("os")?;
        let path = os.call_method1("fspath", (dest,)).map_err(|_| {
            PyTypeError::new_err(
                "dest must be a path (str or os.PathLike) or a writable file object",
            )
        })?;
        let path: PathBuf = path
            .extract()
            .map_err(|_| PyTypeError::new_err("dest must be a text path, not bytes"))?;
        Ok(Destination::Path(path))
    }
}

/// A file at `path` that appears only once it is complete. It is written
/// to a temporary file of a unique, unpredictable name in the same
/// directory, created exclusively (`create_new`: an existing file or a
/// planted symlink makes it fail rather than be followed), then renamed
/// over `path`: concurrent exports to one path each leave a complete file,
/// the last one renamed wins.
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub(crate) fn create(path: PathBuf) -> io::Result<AtomicFile> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "dest must name a file"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.partial", uuid::Uuid::now_v7().simple()));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let out = BufWriter::with_capacity(1 << 16, file);
        Ok(AtomicFile {
            tmp,
            path,
            out: Some(out),
        })
    }

    pub(crate) fn writer(&mut self) -> &mut dyn Write {
        self.out.as_mut().expect("open until committed")
    }

    pub(crate) fn commit(mut self) -> io::Result<()> {
        if let Some(out) = self.out.take() {
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.path)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
