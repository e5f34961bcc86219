//! The open-files limit. Every client connection costs egressd a descriptor, and every
//! tunnel or forwarded request another for its upstream, so `proxy.max_connections` is only
//! reachable when the soft `RLIMIT_NOFILE` allows about twice as many. Many systems start
//! services at a soft limit of 1024 with a much higher hard limit; like Go's runtime and
//! nginx's `worker_rlimit_nofile`, egressd lifts its soft limit to the hard one at start.

/// Descriptors egressd needs beside its connections: listeners, the config watcher, state
/// files, DNS sockets, spare splice pipes, log output.
const RESERVE: u64 = 256;

/// The soft limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub was: u64,
    pub now: u64,
}

/// Lifts the soft open-files limit to the hard limit. `None` where the limit cannot be read
/// (not Linux), or is unlimited.
#[cfg(target_os = "linux")]
pub fn raise() -> Option<Raised> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current?;
    let Some(hard) = limit.maximum else {
        return Some(Raised { was, now: was });
    };
    if was >= hard {
        return Some(Raised { was, now: was });
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    let now = if setrlimit(Resource::Nofile, raised).is_ok() {
        hard
    } else {
        was
    };
    Some(Raised { was, now })
}

#[cfg(not(target_os = "linux"))]
pub fn raise() -> Option<Raised> {
    None
}

/// The warning to log when `limit` open files cannot carry `max_connections` connections
/// with an upstream each.
pub fn shortfall(max_connections: usize, limit: u64) -> Option<String> {
    let needed = max_connections as u64 * 2 + RESERVE;
    (needed > limit).then(|| {
        format!(
            "proxy.max_connections = {max_connections} needs about {needed} open files (a client and an upstream socket each) but the limit is {limit}; \
             past about {} connections, accepts and dials fail with \"too many open files\": raise the hard limit (systemd LimitNOFILE=, docker --ulimit nofile=) or lower proxy.max_connections",
            limit.saturating_sub(RESERVE) / 2
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_short_of_two_files_a_connection_is_named() {
        let cases = [
            ("plenty", 10_000, 65_536, false),
            ("exactly enough", 10_000, 20_256, false),
            ("one short", 10_000, 20_255, true),
            ("the common 1024 soft limit", 10_000, 1024, true),
        ];
        for (name, max, limit, warns) in cases {
            let warning = shortfall(max, limit);
            assert_eq!(warning.is_some(), warns, "{name}: {warning:?}");
        }
        let text = shortfall(10_000, 1024).unwrap();
        assert!(text.contains("past about 384 connections"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn raise_leaves_the_soft_limit_at_the_hard_one() {
        let raised = raise().expect("Linux has a limit");
        assert!(raised.now >= raised.was);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit.current, Some(raised.now));
    }
}
