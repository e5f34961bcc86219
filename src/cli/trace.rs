//! `egressd trace`: the redirect audit on the command line — every hop of a URL's redirect
//! chain with its verdict, then the entries to add so that the whole chain is allowed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::explain::load_live;
use crate::control::trace::{Auditor, Report};
use crate::egress::resolve::DnsResolver;
use crate::egress::{EgressClient, EgressOptions, Snapshot};

/// Exit 0 when every hop is allowed and the chain ends; 1 otherwise.
pub fn trace(path: &Path, url: &str) -> ExitCode {
    let Some(config) = load_live(path) else {
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(async {
        // Hops to [[mtls]] hosts present the configured identities, as the proxy would.
        let egress = EgressClient::new(
            Snapshot::handle(config.policy.clone(), config.mtls.clone()),
            DnsResolver::new(&config.dns),
            // A running egressd on this config is not a hop either.
            vec![config.proxy.listen, config.proxy.admin_listen],
            EgressOptions {
                connect_timeout: config.proxy.connect_timeout,
                response_header_timeout: config.proxy.response_header_timeout,
            },
        );
        let auditor = Auditor {
            egress: Arc::new(egress),
        };
        auditor.trace(&config.policy, url).await
    });
    print_report(&report);
    if report.allowed && report.stopped.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(report: &Report) {
    for (i, hop) in report.hops.iter().enumerate() {
        say!("{:>2}  {}", i + 1, hop.url);
        say!("    {}", hop.verdict);
        if !hop.allowed {
            say!("    {}", hop.detail);
        }
        match (&hop.status, &hop.location, &hop.error) {
            (Some(status), Some(location), _) => say!("    {status} -> {location}"),
            (Some(status), None, _) => say!("    {status}"),
            (None, _, Some(error)) => say!("    not fetched: {error}"),
            (None, _, None) => {}
        }
    }
    if let Some(why) = &report.stopped {
        say!("stopped: {why}");
    }
    if report.add.is_empty() {
        if report.allowed && report.stopped.is_none() {
            say!("every hop is allowed");
        }
        return;
    }
    say!("add to [allowlist] domains so that the whole chain is allowed:");
    for entry in &report.add {
        say!("  \"{entry}\",");
    }
}
