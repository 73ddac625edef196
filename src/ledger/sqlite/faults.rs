//! How the writer tells a failure that may pass from one that retrying
//! cannot fix, where acknowledged events go when the database cannot take
//! them, and the disk reserve that lets a full disk still checkpoint.

use crate::ledger::event::UsageEvent;
use rusqlite::ErrorCode;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Busy, locked, an I/O error, a full disk, memory: it may clear.
    Transient,
    /// Corrupt pages, not a database, a read-only file, a table missing
    /// from the schema: the same statement fails again, so stop writing.
    Permanent,
}

pub fn classify(e: &rusqlite::Error) -> Fault {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OperationInterrupted,
        ) => Fault::Transient,
        _ => Fault::Permanent,
    }
}

pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `<database>-spill.ndjson`: acknowledged events the database could not
/// take, one JSON object per line, recorded on the next open.
pub fn spill_path(db: &Path) -> PathBuf {
    sidecar(db, "-spill.ndjson")
}

/// Appends events to the spill file and syncs it before returning. All or
/// nothing: a write that fails part way (a full disk) is cut back off, so
/// that events reported lost are not recorded after all on the next open,
/// and no torn line is left behind.
pub fn spill(db: &Path, events: &[Arc<UsageEvent>]) -> io::Result<PathBuf> {
    let path = spill_path(db);
    if events.is_empty() {
        return Ok(path);
    }
    let mut out = Vec::with_capacity(events.len() * 320);
    for event in events {
        serde_json::to_writer(&mut out, event.as_ref()).map_err(io::Error::other)?;
        out.push(b'\n');
    }
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let before = file.metadata()?.len();
    if let Err(e) = file.write_all(&out).and_then(|()| file.sync_all()) {
        // Shrinking needs no space; if even that fails, `read_spill` skips a torn line.
        let _ = file.set_len(before).and_then(|()| file.sync_all());
        return Err(e);
    }
    Ok(path)
}

/// The events of a spill file (`None` when there is none), and how many
/// lines could not be read (a line cut short by a crash mid-write).
pub fn read_spill(db: &Path) -> io::Result<Option<(Vec<UsageEvent>, usize)>> {
    let file = match File::open(spill_path(db)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut events = Vec::new();
    let mut unreadable = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<UsageEvent>(&line) {
            Ok(event) if event.validate().is_ok() => events.push(event),
            _ => unreadable += 1,
        }
    }
    Ok(Some((events, unreadable)))
}

/// Bytes kept aside beside the database, released when the disk fills so
/// that a checkpoint (which moves the log into the database and truncates
/// it) still has room to run.
pub const RESERVE_BYTES: usize = 1 << 20;

pub fn reserve_path(db: &Path) -> PathBuf {
    sidecar(db, "-reserve")
}

/// Creates the reserve if it is missing. Zeros are written rather than the
/// length set, so that the blocks are really allocated.
pub fn ensure_reserve(db: &Path) -> io::Result<()> {
    let path = reserve_path(db);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize >= RESERVE_BYTES) {
        return Ok(());
    }
    let written = File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; RESERVE_BYTES])?;
        f.sync_all()
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    written
}

/// Free space after which a disk that filled up counts as recovered: room
/// for many full-size transactions and their log.
pub const ROOMY_BYTES: u64 = 64 << 20;

/// Bytes this process may still write on the file system holding `db`;
/// `None` where that cannot be told.
#[cfg(unix)]
pub fn available_space(db: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = std::ffi::CString::new(dir.unwrap_or(Path::new(".")).as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `dir` is a NUL-terminated path and `stats` is written by statvfs on success.
    if unsafe { libc::statvfs(dir.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

#[cfg(not(unix))]
pub fn available_space(_db: &Path) -> Option<u64> {
    None
}

/// Frees the reserve; true when there was one.
pub fn release_reserve(db: &Path) -> bool {
    std::fs::remove_file(reserve_path(db)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn failures_that_may_pass_are_told_from_those_that_will_not() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_FULL,
            ffi::SQLITE_IOERR,
        ] {
            assert_eq!(classify(&io_error(code)), Fault::Transient, "{code}");
        }
        for code in [
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_ERROR,
        ] {
            assert_eq!(classify(&io_error(code)), Fault::Permanent, "{code}");
        }
    }

    #[test]
    fn a_spill_file_reads_back_what_was_spilled_and_skips_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("uw-spill-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("u.db");
        let event = |id: &str| {
            let mut e = crate::ledger::event::tests::event("agent", 1_000_000, 5);
            e.request_id = id.into();
            e.cost_nanos = Some(123_456_789);
            e.metadata = Some("{\"k\":1}".into());
            Arc::new(e)
        };
        spill(&db, &[event("a"), event("b")]).unwrap();
        let mut torn = OpenOptions::new()
            .append(true)
            .open(spill_path(&db))
            .unwrap();
        torn.write_all(b"{\"agent_id\":\"x\"").unwrap();
        let (events, unreadable) = read_spill(&db).unwrap().unwrap();
        assert_eq!(
            events,
            vec![event("a").as_ref().clone(), event("b").as_ref().clone()]
        );
        assert_eq!(unreadable, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
