//! Problems found in a config file, each as `file:line: key "value": what to write instead`.
//! Validation collects all of them rather than stopping at the first.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::policy::PortSet;

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if !self.key.is_empty() {
            write!(f, "{}", self.key)?;
            if let Some(value) = &self.value {
                write!(f, " {value:?}")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Collects problems with line numbers computed from spans.
pub struct Problems {
    file: String,
    /// Byte offset at which each line starts, so a span's line is a binary search — a
    /// 100k-entry allowlist asks for 100k of them.
    line_starts: Vec<usize>,
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn new(path: &Path, src: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(
                src.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Problems {
            file: path.display().to_string(),
            line_starts,
            list: Vec::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset)
    }

    pub fn push(&mut self, line: Option<usize>, key: &str, value: Option<String>, message: String) {
        self.list.push(Problem {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            value,
            message,
        });
    }

    pub fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        key: &str,
        value: Option<String>,
        message: impl Into<String>,
    ) {
        let line = Some(self.line_of(spanned.span().start));
        self.push(line, key, value, message.into());
    }

    pub fn addr(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Option<SocketAddr> {
        let Some(value) = raw else {
            return Some(default.parse().expect("default address"));
        };
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.at(
                    value,
                    key,
                    Some(value.get_ref().clone()),
                    "expected an IP address and port, e.g. \"127.0.0.1:3128\"",
                );
                None
            }
        }
    }

    pub fn duration(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = raw else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(err) => {
                self.at(
                    value,
                    key,
                    Some(value.get_ref().clone()),
                    format!("{err}; write e.g. \"10s\", \"5m\" or \"1h 30m\""),
                );
                default
            }
        }
    }

    pub fn positive(
        &mut self,
        raw: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        default: usize,
    ) -> usize {
        let Some(value) = raw else { return default };
        let n = *value.get_ref();
        if n < min {
            self.at(
                value,
                key,
                Some(n.to_string()),
                format!("must be at least {min}"),
            );
            return default;
        }
        n as usize
    }

    pub fn ports(&mut self, raw: &Option<Vec<Spanned<i64>>>, key: &str, default: u16) -> PortSet {
        let Some(values) = raw else {
            return PortSet::new(vec![default]);
        };
        let mut ports = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            match u16::try_from(*value.get_ref()) {
                Ok(p) if p > 0 => ports.push(p),
                _ => self.at(
                    value,
                    &format!("{key}[{i}]"),
                    Some(value.get_ref().to_string()),
                    "a port is a number from 1 to 65535",
                ),
            }
        }
        PortSet::new(ports)
    }
}
