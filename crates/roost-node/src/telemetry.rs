//! Logging and metrics set-up: structured `tracing` logs whose filter can be changed at run
//! time (admin API `PUT /api/v1/log-level`), and the global Prometheus recorder.
//!
//! Both are process-wide: the binary calls [`init_logging`] once; [`prometheus`] installs the
//! recorder on first use and hands the same handle to every node in the process (tests start
//! several nodes in one process).

use crate::config::{LogConfig, LogFormat};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl LogHandle {
    /// The filter directives in force.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }

    /// Replaces the filter; the error says why the directives were rejected.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        crate::config::validate_log_level(directives).map_err(|e| e.to_string())?;
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.reload.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock() = directives.to_owned();
        Ok(())
    }
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogInitError {
    /// `log.level` is not a valid filter.
    #[error("log.level {level:?}: {source}")]
    Level {
        /// The directives.
        level: String,
        /// Why they were rejected.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("a global log subscriber is already installed: {0}")]
    Installed(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber. Call once, after the config validated.
pub fn init_logging(cfg: &LogConfig) -> Result<LogHandle, LogInitError> {
    let filter = EnvFilter::try_new(&cfg.level).map_err(|source| LogInitError::Level {
        level: cfg.level.clone(),
        source,
    })?;
    let (layer, reload) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    match cfg.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()?,
    }
    Ok(LogHandle {
        reload,
        current: Arc::new(Mutex::new(cfg.level.clone())),
    })
}

/// The process's Prometheus recorder, installed on first call. `None` if another recorder
/// was installed by someone else.
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            crate::metrics::describe();
            roost_cluster::metrics::describe();
            Some(handle)
        })
        .as_ref()
}
