//! Fault injection for the crash-safety tests, compiled into debug builds
//! only (release builds ignore the variables).
//!
//! - `NETD_FAULT=OP/STEP`: the daemon kills itself with SIGKILL (a kill -9
//!   at exactly that point) when an operation reaches that step;
//! - `NETD_FAULT_TRACE=FILE`: every step reached is appended to FILE as
//!   `OP/STEP`, so a test can discover the steps and walk them all.
use std::sync::OnceLock;

struct Settings {
    fault: Option<String>,
    trace: Option<std::path::PathBuf>,
}

fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings {
        fault: std::env::var("NETD_FAULT").ok().filter(|s| !s.is_empty()),
        trace: std::env::var_os("NETD_FAULT_TRACE").map(Into::into),
    })
}

/// A named step of a multi-step operation.
pub fn point(op: &str, step: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let s = settings();
    if s.fault.is_none() && s.trace.is_none() {
        return;
    }
    let name = format!("{op}/{step}");
    if let Some(t) = &s.trace {
        use std::io::Write;
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(t)
            .and_then(|mut f| writeln!(f, "{name}"))
        {
            tracing::warn!("fault trace {}: {e}", t.display());
        }
    }
    if s.fault.as_deref() == Some(name.as_str()) {
        tracing::error!("fault injection: killing the daemon at {name}");
        // SAFETY: raise(2) on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}
