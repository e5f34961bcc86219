//! The integration tests: one binary, so hyper, rustls and `support/` are linked once. Each
//! module is one class of tests (see SECURITY.md); run one with `tests/run --test it -- sni::`.
//! Every test starts the real `egressd` binary on loopback (`support/`) and drives it with
//! real clients, except `layers` (reads the source tree) and `properties` (the parsers,
//! in-process), and the scheduler's clock tests (in-process on a hand-moved clock).

mod support;

mod cli;
mod clients;
mod connect_tunnels;
mod console;
mod denials;
mod dns;
mod egress_client;
mod faults;
mod file_faults;
mod hostile_input;
mod hot_reload;
mod http_forwarding;
mod identity;
mod layers;
mod mtls;
mod properties;
mod refusals;
mod schedules;
mod secrets;
mod shared_state;
mod sni;
mod soak;
mod trace;
