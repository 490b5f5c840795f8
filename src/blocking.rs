//! The same API as [`crate::DaemonManager`] for callers without an async
//! runtime, as zbus's `blocking` module does. Each manager owns a small
//! single-threaded tokio runtime; do not call it from inside another runtime's
//! async context (tokio forbids blocking there).
//!
//! ```no_run
//! use daemon_lifecycle::{blocking::DaemonManager, DaemonConfig, DaemonStatus};
//!
//! let config = DaemonConfig::new("/usr/local/bin/queen-rbee", "/run/queen-rbee.pid");
//! let manager = DaemonManager::new(config);
//! let pid = manager.start()?;
//! println!("Started daemon with PID {pid}");
//! if let DaemonStatus::Stale(pid) = manager.status()? {
//!     eprintln!("Stale PID file found (PID {pid}), cleaning up");
//!     manager.cleanup_stale()?;
//! }
//! manager.stop()?;
//! # Ok::<(), daemon_lifecycle::DaemonError>(())
//! ```

use std::sync::Arc;

use crate::backend::{Backend, BackendKind, DaemonStatus, StatusReport};
use crate::config::DaemonConfig;
use crate::error::Result;
use crate::manager::BackendChoice;

/// Blocking twin of [`crate::DaemonManager`], with the same method names.
#[derive(Debug)]
pub struct DaemonManager {
    inner: crate::DaemonManager,
    runtime: tokio::runtime::Runtime,
}

impl DaemonManager {
    /// See [`crate::DaemonManager::new`].
    pub fn new(config: DaemonConfig) -> Self {
        Self::wrap(crate::DaemonManager::new(config))
    }

    /// See [`crate::DaemonManager::with_choice`].
    pub fn with_choice(config: DaemonConfig, choice: BackendChoice) -> Self {
        Self::wrap(crate::DaemonManager::with_choice(config, choice))
    }

    /// See [`crate::DaemonManager::with_backend`].
    pub fn with_backend(config: DaemonConfig, backend: Arc<dyn Backend>) -> Self {
        Self::wrap(crate::DaemonManager::with_backend(config, backend))
    }

    fn wrap(inner: crate::DaemonManager) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot build a tokio runtime");
        DaemonManager { inner, runtime }
    }

    /// The config this manager acts on.
    pub fn config(&self) -> &DaemonConfig {
        self.inner.config()
    }

    /// See [`crate::DaemonManager::backend_kind`].
    pub fn backend_kind(&self) -> Result<BackendKind> {
        self.runtime.block_on(self.inner.backend_kind())
    }

    /// See [`crate::DaemonManager::start`].
    pub fn start(&self) -> Result<u32> {
        self.runtime.block_on(self.inner.start())
    }

    /// See [`crate::DaemonManager::stop`].
    pub fn stop(&self) -> Result<()> {
        self.runtime.block_on(self.inner.stop())
    }

    /// See [`crate::DaemonManager::kill`].
    pub fn kill(&self) -> Result<()> {
        self.runtime.block_on(self.inner.kill())
    }

    /// See [`crate::DaemonManager::status`].
    pub fn status(&self) -> Result<DaemonStatus> {
        self.runtime.block_on(self.inner.status())
    }

    /// See [`crate::DaemonManager::status_report`].
    pub fn status_report(&self) -> Result<StatusReport> {
        self.runtime.block_on(self.inner.status_report())
    }

    /// See [`crate::DaemonManager::restart`].
    pub fn restart(&self) -> Result<u32> {
        self.runtime.block_on(self.inner.restart())
    }

    /// See [`crate::DaemonManager::reload`].
    pub fn reload(&self) -> Result<()> {
        self.runtime.block_on(self.inner.reload())
    }

    /// See [`crate::DaemonManager::wait_ready`].
    pub fn wait_ready(&self, timeout_secs: u64) -> Result<()> {
        self.runtime.block_on(self.inner.wait_ready(timeout_secs))
    }

    /// See [`crate::DaemonManager::get_pid`].
    pub fn get_pid(&self) -> Result<Option<u32>> {
        self.runtime.block_on(self.inner.get_pid())
    }

    /// See [`crate::DaemonManager::is_running`].
    pub fn is_running(&self) -> bool {
        self.runtime.block_on(self.inner.is_running())
    }

    /// See [`crate::DaemonManager::cleanup_stale`].
    pub fn cleanup_stale(&self) -> Result<()> {
        self.runtime.block_on(self.inner.cleanup_stale())
    }
}
