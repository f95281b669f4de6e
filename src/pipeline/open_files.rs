//! The open-file limit: every device connection is a file descriptor, so the
//! server raises its soft limit to the hard limit at start and says what it got.

use pingantong_telemetry::events;

/// Descriptors the server needs besides device connections: listeners, the
/// database pool, the broker link, outgoing webhook and mail connections, logs.
pub const RESERVED: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    #[error("cannot read or raise the open-file limit: {0}")]
    Syscall(#[from] std::io::Error),
}

/// The limit in force after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft limit as far as the hard limit allows.
///
/// Raising the hard limit itself takes privileges the server should not have
/// (CAP_SYS_RESOURCE); that is the service manager's job (`LimitNOFILE=` in
/// ops/pingantong.service).
pub fn raise() -> Result<OpenFiles, OpenFilesError> {
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    Ok(OpenFiles { soft, hard })
}

/// Report the limit against what `max_connections` asks for; call once the
/// metrics recorder is installed.
pub fn report(got: Result<OpenFiles, OpenFilesError>, max_connections: usize) {
    match got {
        Ok(OpenFiles { soft, hard }) => events::OpenFilesLimit {
            soft,
            hard,
            wanted: wanted(max_connections),
            room: soft.saturating_sub(RESERVED),
        }
        .emit(),
        Err(e) => events::OpenFilesLimitUnknown { error: &e }.emit(),
    }
}

/// Descriptors a server configured for `max_connections` device connections needs.
pub fn wanted(max_connections: usize) -> u64 {
    (max_connections as u64).saturating_add(RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let got = raise().unwrap();
        assert!(got.soft <= got.hard);
        // Linux and the BSDs let an unprivileged process go up to the hard
        // limit (macOS caps it lower, at kern.maxfilesperproc).
        if cfg!(target_os = "linux") {
            assert_eq!(got.soft, got.hard);
        }
    }

    #[test]
    fn capacity_counts_the_server_own_files() {
        assert_eq!(wanted(100_000), 101_024);
        assert_eq!(wanted(usize::MAX), u64::MAX);
    }
}
