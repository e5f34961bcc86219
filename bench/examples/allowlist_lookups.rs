//! Instruction counts per allowlist decision, for callgrind (repeatable where criterion's
//! nanoseconds are not on a shared machine):
//!
//! ```text
//! cargo build --release -p egressd-bench --example allowlist_lookups
//! valgrind --tool=callgrind --toggle-collect=allowlist_lookups::run \
//!     target/release/examples/allowlist_lookups wildcard 40960
//! ```
//!
//! The collected cost divided by the count is the cost of one `Allowlist::find`, on the same
//! 100k-entry list and hosts as `benches/allowlist.rs`.

use std::hint::black_box;

use egressd::policy::allowlist::Allowlist;
use egressd::policy::host::Host;
use egressd_bench::allowlist::{allowlist, Mix, ENTRIES};

#[inline(never)]
fn run(list: &Allowlist, hosts: &[Host], count: usize) -> usize {
    hosts
        .iter()
        .cycle()
        .take(count)
        .filter(|h| list.find(black_box(h)).is_some())
        .count()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mix = match args.next().as_deref() {
        Some("exact") => Mix::ExactHit,
        Some("wildcard") => Mix::WildcardHit,
        Some("miss") => Mix::Miss,
        other => panic!("usage: allowlist_lookups exact|wildcard|miss [COUNT], not {other:?}"),
    };
    let count: usize = args.next().map_or(40_960, |c| c.parse().expect("a count"));
    let list = allowlist(ENTRIES);
    let hosts = mix.hosts(ENTRIES, 4096);
    let hits = run(&list, &hosts, count);
    println!("{}: {hits} of {count} lookups matched", mix.name());
}
