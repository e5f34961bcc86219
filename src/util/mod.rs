//! Neutral helpers that every layer may use and that know nothing of egressd's rules: clock
//! and time formatting, HTTP body types and made-up text responses, the accept loop, the
//! log writer, file watching, and locks that survive a panic. Nothing here imports from a layer.

pub mod body;
pub mod deadline;
pub mod drain;
pub mod fdlimit;
pub mod fsio;
pub mod listener;
pub mod logwriter;
pub mod sync;
pub mod time;
pub mod trim;
pub mod watch;
