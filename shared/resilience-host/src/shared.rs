//! Shared data: the only state all of Envoy's workers see, updated by compare-and-swap.
//!
//! Envoy keeps one store per `vm_id` behind one mutex; each value carries a CAS token, bumped on
//! every write. To change a value a worker reads it with its token, computes the new value and
//! writes it back conditionally; if another worker wrote in between, the write fails with
//! `CasMismatch` and the worker tries again from a fresh read. [`cas_update`] runs that loop a
//! bounded number of times, so a pathological contention can cost latency but never hang a request.
//!
//! Why [`crate::abi`] instead of the SDK's `get_shared_data`/`set_shared_data`: the SDK panics on
//! any status it does not expect (some hosts answer `Unimplemented`), and a panic traps the VM.
//! Here every status is a value. The store has no delete and no eviction: callers must keep their
//! key space bounded by configuration.
//!
//! Each operation takes the [`Host`] it runs on (`get_on`, `set_on`, `cas_update_on`); `get`, `set`
//! and `cas_update` are the same on [`WasmHost`], for code not yet written against the trait.

use crate::abi::HostStatus;
use crate::host::Host;
use crate::wasm::WasmHost;

/// Why a shared-data operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedError {
    /// The host answered with an unexpected status (the raw code).
    Host(u32),
    /// Every attempt lost the race to another worker.
    Contended,
}

crate::counters! {
    /// The shared-data trouble one worker saw since its last stats flush. Every filter counts the
    /// same three things under the same names, so they live here once.
    #[derive(Copy, PartialEq, Eq)]
    pub struct SharedDataTrouble {
        /// Operations the host refused with an unexpected status.
        shared_data_errors,
        /// Updates that lost every CAS attempt to other workers.
        cas_contended,
        /// Stored values that could not be decoded and were started afresh.
        state_resets,
    }
}

impl SharedDataTrouble {
    /// Counts a failed shared-data operation under its kind.
    pub fn count(&mut self, e: SharedError) {
        match e {
            SharedError::Contended => self.cas_contended = self.cas_contended.saturating_add(1),
            SharedError::Host(_) => {
                self.shared_data_errors = self.shared_data_errors.saturating_add(1)
            }
        }
    }
}

impl SharedError {
    /// Stable name for stats.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedError::Host(_) => "host_error",
            SharedError::Contended => "cas_contended",
        }
    }
}

/// A value and the token that a conditional write must present.
pub struct Versioned {
    pub value: Option<Vec<u8>>,
    pub cas: u32,
}

/// [`get_on`] the real host.
pub fn get(key: &str) -> Result<Versioned, SharedError> {
    get_on(&WasmHost, key)
}

/// Read `key`. A missing key is `value: None` with `cas: 0` (no real token is 0). An
/// empty value is `None` too, with its token (Envoy hands it back as no bytes at all).
pub fn get_on<H: Host>(host: &H, key: &str) -> Result<Versioned, SharedError> {
    match host.get_shared_data(key) {
        Ok(Some((bytes, cas))) => Ok(Versioned {
            value: (!bytes.is_empty()).then_some(bytes),
            cas,
        }),
        Ok(None) => Ok(Versioned {
            value: None,
            cas: 0,
        }),
        Err(HostStatus(code)) => Err(SharedError::Host(code)),
    }
}

/// The result of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Ok,
    CasMismatch,
}

/// [`set_on`] the real host.
pub fn set(key: &str, value: &[u8], cas: u32) -> Result<Written, SharedError> {
    set_on(&WasmHost, key, value, cas)
}

/// Write `value` if the stored token is still `cas` (0 writes unconditionally).
pub fn set_on<H: Host>(
    host: &H,
    key: &str,
    value: &[u8],
    cas: u32,
) -> Result<Written, SharedError> {
    match host.set_shared_data(key, value, cas) {
        Ok(()) => Ok(Written::Ok),
        Err(HostStatus::CAS_MISMATCH) => Ok(Written::CasMismatch),
        Err(HostStatus(code)) => Err(SharedError::Host(code)),
    }
}

/// What the update function decided after seeing the current value.
pub enum Update<T> {
    /// Write these bytes (conditionally) and return `T` if the write wins.
    Write(Vec<u8>, T),
    /// Nothing to change; return `T`.
    Keep(T),
}

/// Default number of read-modify-write attempts before giving up as contended.
pub const DEFAULT_CAS_ATTEMPTS: u32 = 8;

/// [`cas_update_on`] the real host.
pub fn cas_update<T>(
    key: &str,
    attempts: u32,
    f: impl FnMut(Option<&[u8]>) -> Update<T>,
) -> Result<T, SharedError> {
    cas_update_on(&WasmHost, key, attempts, f)
}

/// The token a write presents for a key its read found missing.
///
/// Envoy creates a missing key whatever token the write presents, but checks the token against a
/// key that exists, and 0 skips the check. So a create with 0 overwrites a key that another worker
/// created since the read: two workers that both saw the key missing would both "win", and one
/// update would be lost (the padding cap let one hold too many through exactly this). A create
/// with a non-zero token fails on the racer's key instead, and the loop starts again from it.
/// Tokens count up from 1 across the whole store, so the racer's token equals this one only if
/// its write was the store's 4,294,967,295th.
const CREATE: u32 = u32::MAX;

/// Read-modify-write `key` under CAS, retrying at most `attempts` times.
///
/// `f` sees the current bytes (or `None`) and may run several times; it must be a pure function
/// of what it sees. A key the read found missing is created only if it is still missing when
/// the write lands ([`CREATE`]). A host that refuses that token for a missing key gets the
/// unconditional create instead.
pub fn cas_update_on<H: Host, T>(
    host: &H,
    key: &str,
    attempts: u32,
    mut f: impl FnMut(Option<&[u8]>) -> Update<T>,
) -> Result<T, SharedError> {
    let mut create = CREATE;
    let mut refused_create = false;
    for _ in 0..attempts.max(1) {
        let current = get_on(host, key)?;
        if current.cas == 0 && refused_create {
            // Still missing after the host refused our create: it does not take tokens for
            // missing keys, so create the way it does.
            create = 0;
        }
        match f(current.value.as_deref()) {
            Update::Keep(t) => return Ok(t),
            Update::Write(bytes, t) => {
                let cas = if current.cas == 0 {
                    create
                } else {
                    current.cas
                };
                match set_on(host, key, &bytes, cas)? {
                    Written::Ok => return Ok(t),
                    Written::CasMismatch => refused_create = current.cas == 0,
                }
            }
        }
    }
    Err(SharedError::Contended)
}
