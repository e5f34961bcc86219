//! Deployed functions, as the watched config declares them: only productive functions can
//! be scheduled or invoked, and undeploying one deletes its schedules. Part of the
//! [`super::Policy`], so a reload swaps them with the allowlist in one step.

use http::Uri;

/// Whether a function is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeployState {
    Productive,
    Undeployed,
}

/// One `[[functions]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// `[a-z0-9-]`, 1 to 63 characters, unique.
    pub name: String,
    pub state: DeployState,
    /// Where invocations are sent (`POST`): `http://` (over mTLS where an `[[mtls]]` entry
    /// covers the host) or `https://` (TLS verified against the Mozilla roots, under the
    /// CONNECT port rules).
    pub url: Uri,
}

/// Why a function entry is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    #[error("a name is 1 to 63 characters of a-z, 0-9 and -")]
    Name,
    #[error("\"anonymous\" is reserved: it names requests without a function's credentials in the log and metrics")]
    Reserved,
    #[error("expected \"productive\" or \"undeployed\"")]
    State,
    #[error("expected an http:// or https:// URL with a host, e.g. \"http://fn-refresh.functions.test/invoke\"")]
    Url,
}

/// The longest function name.
pub const MAX_NAME_CHARS: usize = 63;

pub fn parse_name(name: &str) -> Result<String, FunctionError> {
    let valid = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name == super::identity::ANONYMOUS {
        return Err(FunctionError::Reserved);
    }
    valid.then(|| name.to_string()).ok_or(FunctionError::Name)
}

pub fn parse_state(state: &str) -> Result<DeployState, FunctionError> {
    match state {
        "productive" => Ok(DeployState::Productive),
        "undeployed" => Ok(DeployState::Undeployed),
        _ => Err(FunctionError::State),
    }
}

pub fn parse_url(url: &str) -> Result<Uri, FunctionError> {
    let uri: Uri = url.parse().map_err(|_| FunctionError::Url)?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(FunctionError::Url),
    }
}

/// The functions in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Functions(Vec<Function>);

impl Functions {
    pub fn new(functions: Vec<Function>) -> Self {
        Functions(functions)
    }

    pub fn get(&self, name: &str) -> Option<&Function> {
        self.0.iter().find(|f| f.name == name)
    }

    /// Whether `name` is deployed as productive.
    pub fn is_productive(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|f| f.state == DeployState::Productive)
    }

    pub fn all(&self) -> &[Function] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_states_and_urls() {
        for (name, ok) in [
            ("refresh-token", true),
            ("a", true),
            (&"a".repeat(63), true),
            ("", false),
            (&"a".repeat(64), false),
            ("Refresh", false),
            ("refresh_token", false),
        ] {
            assert_eq!(parse_name(name).is_ok(), ok, "{name:?}");
        }
        assert_eq!(parse_state("productive"), Ok(DeployState::Productive));
        assert_eq!(parse_state("deployed"), Err(FunctionError::State));
        for (url, ok) in [
            ("http://fn.functions.test/invoke", true),
            ("https://fn.functions.test/invoke", true),
            ("ftp://fn.functions.test/", false),
            ("/invoke", false),
            ("fn.functions.test", false),
        ] {
            assert_eq!(parse_url(url).is_ok(), ok, "{url}");
        }
    }
}
