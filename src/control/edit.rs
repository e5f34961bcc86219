//! Allowlist edits from the admin API: the console's Add button and bin icon.
//!
//! An edit is what an operator with a text editor would do, nothing more: `allowlist.domains`
//! in the watched file gains or loses one string, with every comment and the layout kept
//! (`toml_edit`), the new text is validated as a whole (a reload would refuse it otherwise),
//! written atomically with the file's mode, and then loaded by the normal reload. So an added
//! entry waits out the activation delay and a removal cuts live tunnels, exactly as for a
//! hand edit.
//!
//! Edits are refused when `admin_allowlist_edit` is off (the default for a non-loopback admin
//! listener) or the file cannot be replaced (a Kubernetes ConfigMap mount is read-only); the
//! console shows why.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use toml_edit::{Array, DocumentMut, RawString, Value};

use super::config::Config;
use crate::policy::allowlist::{Allowlist, Pattern};
use crate::policy::host::Host;
use crate::util::fsio::replace_keeping_mode;
use crate::util::sync::lock;

/// Why an edit was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// Edits are off, or the file cannot be replaced.
    #[error("{0}")]
    ReadOnly(String),
    #[error("{0}")]
    InvalidEntry(String),
    #[error("{0:?} is already on the allowlist (line {1})")]
    Duplicate(String, usize),
    #[error("{0:?} is not on the allowlist")]
    NotFound(String),
    /// The file does not have the shape an edit can keep (no `allowlist.domains` array).
    #[error("{0}")]
    Shape(String),
    /// The edited file would not load; it was not written.
    #[error("the edited file would not load: {}", .0.join("; "))]
    WouldNotLoad(Vec<String>),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Edits the watched config file's allowlist, one edit at a time.
pub struct AllowlistEditor {
    path: PathBuf,
    /// `admin_allowlist_edit`.
    enabled: bool,
    lock: Mutex<()>,
}

impl AllowlistEditor {
    pub fn new(path: PathBuf, enabled: bool) -> Self {
        AllowlistEditor {
            path,
            enabled,
            lock: Mutex::new(()),
        }
    }

    /// `Ok` when an edit could be written now, or why not.
    pub fn writable(&self) -> Result<(), String> {
        if !self.enabled {
            return Err("editing is off (proxy.admin_allowlist_edit = false, the default when the admin listener is not on loopback); edit the config file instead".into());
        }
        probe_writable(&self.path)
    }

    /// Adds `entry` (validated as `egressd check` would); returns the pattern as written.
    /// Blocking: call it from a blocking thread.
    pub fn add(&self, entry: &str) -> Result<Pattern, EditError> {
        let pattern = Pattern::parse(entry.trim())
            .map_err(|err| EditError::InvalidEntry(format!("{:?}: {err}", entry.trim())))?;
        self.edit(|text| add_entry(text, &pattern))?;
        Ok(pattern)
    }

    /// Removes the entry equal to `entry` (compared as patterns, so case and a trailing dot
    /// do not matter). Blocking.
    pub fn remove(&self, entry: &str) -> Result<Pattern, EditError> {
        let pattern = Pattern::parse(entry.trim())
            .map_err(|err| EditError::InvalidEntry(format!("{:?}: {err}", entry.trim())))?;
        self.edit(|text| remove_entry(text, &pattern))?;
        Ok(pattern)
    }

    fn edit(
        &self,
        change: impl FnOnce(&str) -> Result<String, EditError>,
    ) -> Result<(), EditError> {
        let _one_at_a_time = lock(&self.lock);
        self.writable().map_err(EditError::ReadOnly)?;
        // Write through a symlink, not over it: the link is the operator's layout.
        let file = std::fs::canonicalize(&self.path).map_err(|source| EditError::Io {
            path: self.path.clone(),
            source,
        })?;
        let text = std::fs::read_to_string(&file).map_err(|source| EditError::Io {
            path: file.clone(),
            source,
        })?;
        let edited = change(&text)?;
        if let Err(err) = Config::parse_for_reload(&self.path, &edited) {
            return Err(EditError::WouldNotLoad(err.problems()));
        }
        replace_keeping_mode(&file, edited.as_bytes())
            .map_err(|source| EditError::Io { path: file, source })
    }
}

/// Whether `path` can be replaced the way an edit replaces it: a temp file in the same
/// directory, renamed over the file.
fn probe_writable(path: &Path) -> Result<(), String> {
    let file = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.permissions().readonly() {
        return Err(format!(
            "{} is read-only; make it writable to edit the allowlist here",
            file.display()
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".egressd-write-probe.{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => Err(format!(
            "{} is on a read-only file system (a Kubernetes ConfigMap mount?); change the allowlist where the file comes from",
            dir.display()
        )),
        Err(e) => Err(format!("cannot create files in {}: {e}", dir.display())),
    }
}

/// The `allowlist.domains` array of `doc`.
fn domains(doc: &mut DocumentMut) -> Result<&mut Array, EditError> {
    doc.get_mut("allowlist")
        .and_then(|t| t.as_table_like_mut())
        .and_then(|t| t.get_mut("domains"))
        .and_then(|d| d.as_array_mut())
        .ok_or_else(|| {
            EditError::Shape(
                "the file has no `domains = [...]` array under [allowlist]; add one by hand first"
                    .into(),
            )
        })
}

fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Shape(format!("the file is not valid TOML: {e}")))
}

/// The index of the entry equal to `pattern`, if any.
fn position(array: &Array, pattern: &Pattern) -> Option<usize> {
    array.iter().position(|value| {
        value
            .as_str()
            .and_then(|s| Pattern::parse(s).ok())
            .is_some_and(|p| &p == pattern)
    })
}

/// 1-based line of array element `index` in `text`.
fn line_of(text: &str, array: &Array, index: usize) -> usize {
    let offset = array
        .get(index)
        .and_then(|v| v.span())
        .map_or(0, |span| span.start);
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `text` with `pattern` appended to `allowlist.domains`, in the array's own layout.
pub fn add_entry(text: &str, pattern: &Pattern) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let array = domains(&mut doc)?;
    if let Some(i) = position(array, pattern) {
        // DocumentMut drops spans; the read-only Document keeps them.
        let spanned = toml_edit::Document::parse(text)
            .map_err(|e| EditError::Shape(format!("the file is not valid TOML: {e}")))?;
        let line = spanned
            .get("allowlist")
            .and_then(|t| t.as_table_like())
            .and_then(|t| t.get("domains"))
            .and_then(|d| d.as_array())
            .map_or(0, |a| line_of(text, a, i));
        return Err(EditError::Duplicate(pattern.to_string(), line));
    }
    let value = Value::from(pattern.to_string());
    if !is_multiline(array) {
        array.push(value);
        return Ok(doc.to_string());
    }
    // One entry a line: the new one goes on the line after the last entry, indented like
    // it. The last entry's end-of-line comment stays on its line; comment lines before `]`
    // stay after the new entry. So `remove_entry` gives back the file as it was.
    let tail = after_last_value(array);
    let (end_of_line, rest) = match tail.find('\n') {
        Some(nl) => tail.split_at(nl),
        None => (tail.as_str(), ""),
    };
    let indent = array
        .iter()
        .last()
        .map(|v| {
            let prefix = decor_prefix(v);
            prefix[prefix.rfind('\n').map_or(0, |i| i + 1)..].to_string()
        })
        .unwrap_or_else(|| "  ".into());
    let prefix = format!("{end_of_line}\n{indent}");
    let rest = rest.to_string();
    if array.is_empty() {
        // No layout to follow: one entry a line, each with a comma.
        array.set_trailing_comma(true);
    }
    if let Some(last) = array.iter_mut().last() {
        last.decor_mut().set_suffix("");
    }
    array.push_formatted(value.decorated(prefix, ""));
    array.set_trailing(rest);
    Ok(doc.to_string())
}

/// Whether the array has an entry a line (a line break anywhere between its brackets).
fn is_multiline(array: &Array) -> bool {
    array.iter().any(|v| decor_prefix(v).contains('\n')) || raw(array.trailing()).contains('\n')
}

/// What follows the last entry up to `]`, less the trailing comma: the entry's suffix (it
/// holds the line break when there is no trailing comma) and the array's trailing text.
fn after_last_value(array: &Array) -> String {
    let suffix = array
        .iter()
        .last()
        .and_then(|v| v.decor().suffix())
        .map(raw)
        .unwrap_or_default();
    format!("{suffix}{}", raw(array.trailing()))
}

/// `text` without the entry equal to `pattern`. Only the entry's own line goes: from the line
/// break before it to the one after it, so its end-of-line comment goes with it, and every
/// other comment stays — the previous line's, own-line comments above it, and those after it.
/// An entry sharing its line with others takes only itself and its comma.
pub fn remove_entry(text: &str, pattern: &Pattern) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let array = domains(&mut doc)?;
    let Some(index) = position(array, pattern) else {
        return Err(EditError::NotFound(pattern.to_string()));
    };
    let before = decor_prefix(array.get(index).expect("found"));
    let is_last = index + 1 == array.len();
    let after = if is_last {
        after_last_value(array)
    } else {
        decor_prefix(array.get(index + 1).expect("not last"))
    };
    array.remove(index);
    let joined = join_around_removed(&before, &after, is_last);
    match array.get_mut(index) {
        Some(next) => {
            next.decor_mut().set_prefix(joined);
        }
        None => {
            if let Some(last) = array.iter_mut().last() {
                last.decor_mut().set_suffix("");
            }
            array.set_trailing(joined);
        }
    }
    Ok(doc.to_string())
}

/// What stays between the removed entry's neighbours: `before` is the text between the
/// previous comma (or `[`) and the entry, `after` the text between its comma and the next
/// entry (or `]`, when `next_is_bracket`).
fn join_around_removed(before: &str, after: &str, next_is_bracket: bool) -> String {
    let Some(line_start) = before.rfind('\n') else {
        // The entry shared its line with the previous one: what follows it stays whole.
        return after.to_string();
    };
    let kept = &before[..line_start];
    if let Some(line_end) = after.find('\n') {
        // Its own line, up to the line break that ends it, goes.
        return format!("{kept}{}", &after[line_end..]);
    }
    // What came after the entry on its line takes its place.
    if !next_is_bracket {
        return format!("{kept}{}", &before[line_start..]);
    }
    let comment_ends_kept = kept.rsplit('\n').next().unwrap_or("").contains('#');
    if comment_ends_kept {
        format!("{kept}\n{after}")
    } else {
        format!("{kept}{after}")
    }
}

fn raw(s: &RawString) -> String {
    s.as_str().unwrap_or_default().to_string()
}

fn decor_prefix(value: &Value) -> String {
    value.decor().prefix().map(raw).unwrap_or_default()
}

/// What the console shows while an entry is typed, before it is added: the pattern as
/// stored, or the error with its fix; and the pitfalls of the entry against the current list.
#[derive(Debug, serde::Serialize)]
pub struct EntryCheck {
    pub input: String,
    pub pattern: Option<String>,
    pub kind: Option<&'static str>,
    pub error: Option<String>,
    pub hints: Vec<String>,
}

pub fn check_entry(input: &str, list: &Allowlist) -> EntryCheck {
    let trimmed = input.trim();
    let pattern = match Pattern::parse(trimmed) {
        Ok(p) => p,
        Err(err) => {
            return EntryCheck {
                input: input.to_string(),
                pattern: None,
                kind: None,
                error: Some(err.to_string()),
                hints: vec![],
            }
        }
    };
    let error = list
        .patterns()
        .iter()
        .position(|p| p == &pattern)
        .map(|id| match list.line(id as u32) {
            Some(line) => format!("\"{pattern}\" is already on the allowlist (line {line})"),
            None => format!("\"{pattern}\" is already on the allowlist"),
        });
    EntryCheck {
        input: input.to_string(),
        kind: Some(pattern_kind(&pattern)),
        hints: if error.is_some() {
            vec![]
        } else {
            pitfalls(&pattern, list)
        },
        pattern: Some(pattern.to_string()),
        error,
    }
}

/// `exact`, `wildcard` or `ip`, as the API and console name them.
pub fn pattern_kind(pattern: &Pattern) -> &'static str {
    match pattern {
        Pattern::Exact(_) => "exact",
        Pattern::Wildcard(_) => "wildcard",
        Pattern::Ip(_) => "ip",
    }
}

/// What an operator adding `pattern` may not expect: the apex/subdomain pitfall both ways,
/// an entry already covered by a wildcard, redirects.
fn pitfalls(pattern: &Pattern, list: &Allowlist) -> Vec<String> {
    let mut hints = Vec::new();
    match pattern {
        Pattern::Exact(name) => {
            let covering = list.patterns().iter().enumerate().find(|(_, p)| {
                matches!(p, Pattern::Wildcard(_)) && p.matches(&Host::Domain(name.clone()))
            });
            if let Some((id, wildcard)) = covering {
                let line = list.line(id as u32).map(|l| format!(" (line {l})")).unwrap_or_default();
                hints.push(format!("already covered by \"{wildcard}\"{line}; the exact entry keeps {name} allowed if the wildcard is removed"));
            }
            match name.strip_prefix("www.") {
                Some(apex) => hints.push(format!("\"{name}\" does not cover \"{apex}\": if your URLs have no www, add \"{apex}\" too")),
                None => hints.push(format!("\"{name}\" does not cover its subdomains such as \"www.{name}\": add each one you call, or \"*.{name}\"")),
            }
        }
        Pattern::Wildcard(suffix) => hints.push(format!(
            "\"*.{suffix}\" covers every subdomain of {suffix} but does not cover \"{suffix}\" itself; add \"{suffix}\" too if you call it"
        )),
        Pattern::Ip(_) => hints.push("an IP entry allows that address only by IP; a name that resolves to it still needs its own entry".into()),
    }
    hints.push("if the URL redirects, every host in the chain must be allowed: check it under \"Check a URL\"".into());
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    /// A config whose multi-line `domains` array holds `entries` (one per line).
    fn multiline(entries: &str) -> String {
        format!(
            "# top comment\n[proxy]\nlisten = \"127.0.0.1:3128\"\n\n[allowlist]\n# the list\ndomains = [\n{entries}]\n# after\n"
        )
    }

    const ENTRIES: &str = "  \"www.example.com\",  # the site\n  \"*.example.org\",\n  \"203.0.113.7\",      # a partner\n";

    /// One edit: `before`, with `entry` added or removed, becomes `after`.
    struct Case {
        name: &'static str,
        before: String,
        entry: &'static str,
        after: String,
    }

    fn case(name: &'static str, before: &str, entry: &'static str, after: &str) -> Case {
        Case {
            name,
            before: before.into(),
            entry,
            after: after.into(),
        }
    }

    #[test]
    fn add_keeps_comments_and_layout() {
        let cases = [
            case(
                "multi-line array with a comment on the last entry",
                &multiline(ENTRIES),
                "API.Example.NET.",
                &multiline(&format!("{ENTRIES}  \"api.example.net\",\n")),
            ),
            case(
                "multi-line array without a trailing comma",
                "[allowlist]\ndomains = [\n    \"a.test\"\n]\n",
                "b.test",
                "[allowlist]\ndomains = [\n    \"a.test\",\n    \"b.test\"\n]\n",
            ),
            case(
                "one-line array",
                "[allowlist]\ndomains = [\"a.test\", \"b.test\"] # inline\n",
                "*.c.test",
                "[allowlist]\ndomains = [\"a.test\", \"b.test\", \"*.c.test\"] # inline\n",
            ),
            case(
                "empty array",
                "[allowlist]\ndomains = []\n",
                "a.test",
                "[allowlist]\ndomains = [\"a.test\"]\n",
            ),
            case(
                "empty multi-line array",
                "[allowlist]\ndomains = [\n]\n",
                "a.test",
                "[allowlist]\ndomains = [\n  \"a.test\",\n]\n",
            ),
            case(
                "inline table",
                "allowlist = { domains = [\"a.test\"] }\n",
                "b.test",
                "allowlist = { domains = [\"a.test\", \"b.test\"] }\n",
            ),
        ];
        for case in cases {
            let got = add_entry(&case.before, &p(case.entry)).unwrap();
            assert_eq!(got, case.after, "{}", case.name);
        }
    }

    #[test]
    fn remove_keeps_the_neighbours_comments() {
        let cases = [
            case(
                "middle entry, the previous line's comment stays",
                &multiline(ENTRIES),
                "*.EXAMPLE.org",
                &multiline(&ENTRIES.replace("  \"*.example.org\",\n", "")),
            ),
            case(
                "last entry takes its own comment",
                &multiline(ENTRIES),
                "203.0.113.7",
                &multiline(&ENTRIES.replace("  \"203.0.113.7\",      # a partner\n", "")),
            ),
            case(
                "first entry takes its own comment",
                &multiline(ENTRIES),
                "www.example.com",
                &multiline(&ENTRIES.replace("  \"www.example.com\",  # the site\n", "")),
            ),
            case(
                "one-line array",
                "[allowlist]\ndomains = [\"a.test\", \"b.test\", \"c.test\"]\n",
                "b.test",
                "[allowlist]\ndomains = [\"a.test\", \"c.test\"]\n",
            ),
            case(
                "one-line array, last entry",
                "[allowlist]\ndomains = [\"a.test\", \"b.test\"]\n",
                "b.test",
                "[allowlist]\ndomains = [\"a.test\"]\n",
            ),
        ];
        for case in cases {
            let got = remove_entry(&case.before, &p(case.entry)).unwrap();
            assert_eq!(got, case.after, "{}", case.name);
        }
    }

    /// Found by `tests/properties.rs`: the line break before `]` sat in the removed entry's
    /// suffix, so the previous entry's comment swallowed the `]` and the file no longer parsed.
    #[test]
    fn removing_the_last_entry_without_a_trailing_comma_keeps_the_bracket_on_its_line() {
        let before = "[allowlist]\ndomains = [\n  \"a.test\",  # a\n  \"b.test\"\n]\n";
        let after = remove_entry(before, &p("b.test")).unwrap();
        assert_eq!(after, "[allowlist]\ndomains = [\n  \"a.test\"  # a\n]\n");
        let plain = "[allowlist]\ndomains = [\n  \"a.test\",\n  \"b.test\"\n]\n";
        assert_eq!(
            remove_entry(plain, &p("b.test")).unwrap(),
            "[allowlist]\ndomains = [\n  \"a.test\"\n]\n"
        );
    }

    #[test]
    fn add_then_remove_gives_back_the_file() {
        let cases = [
            ("comments on the entries' lines", multiline(ENTRIES)),
            (
                "a comment line just before the closing bracket",
                multiline(&format!("{ENTRIES}  # \"old.test\", retired in March\n")),
            ),
            (
                "a comment line above an entry",
                multiline("  # partners\n  \"a.test\",\n"),
            ),
            ("only comments", multiline("  # none yet\n")),
            (
                "the bracket on the last entry's line",
                "[allowlist]\ndomains = [\n  \"a.test\"]\n".into(),
            ),
        ];
        for (name, original) in cases {
            let added = add_entry(&original, &p("new.test")).unwrap();
            assert_eq!(
                remove_entry(&added, &p("new.test")).unwrap(),
                original,
                "{name}: in between\n{added}"
            );
        }
        // The new entry goes after the last entry, not after the comment before `]`.
        let added = add_entry(
            &multiline("  \"a.test\",\n  # \"b.test\",\n"),
            &p("new.test"),
        )
        .unwrap();
        assert_eq!(
            added,
            multiline("  \"a.test\",\n  \"new.test\",\n  # \"b.test\",\n")
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let dup = add_entry(&multiline(ENTRIES), &p("WWW.example.com")).unwrap_err();
        assert_eq!(
            dup.to_string(),
            "\"www.example.com\" is already on the allowlist (line 8)"
        );
        let missing = remove_entry(&multiline(ENTRIES), &p("nope.test")).unwrap_err();
        assert_eq!(missing.to_string(), "\"nope.test\" is not on the allowlist");
        let shape = add_entry("[proxy]\n", &p("a.test")).unwrap_err();
        assert!(
            shape.to_string().contains("no `domains = [...]`"),
            "{shape}"
        );
    }

    #[test]
    fn the_editor_writes_a_loadable_file_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let file = dir.join("egressd.toml");
        let original = multiline(ENTRIES);
        std::fs::write(&file, &original).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let editor = AllowlistEditor::new(file.clone(), true);
        editor.add("new.test").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("  \"new.test\",\n"), "{text}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        editor.remove("new.test").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);

        let off = AllowlistEditor::new(file.clone(), false);
        assert!(matches!(off.add("x.test"), Err(EditError::ReadOnly(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn entry_checks_explain_pitfalls() {
        let list = Allowlist::new([p("*.example.org"), p("example.net")]);
        let check = |s: &str| check_entry(s, &list);
        assert_eq!(
            check("*.*.x.test").error.unwrap(),
            "only one leading wildcard is allowed; use \"*.x.test\""
        );
        assert_eq!(
            check("EXAMPLE.net").error.unwrap(),
            "\"example.net\" is already on the allowlist"
        );
        let apex = check("example.com");
        assert_eq!(apex.kind, Some("exact"));
        assert!(
            apex.hints.iter().any(|h| h.contains("\"www.example.com\"")),
            "{:?}",
            apex.hints
        );
        let covered = check("a.example.org");
        assert!(
            covered
                .hints
                .iter()
                .any(|h| h.contains("already covered by \"*.example.org\"")),
            "{:?}",
            covered.hints
        );
        let wildcard = check("*.example.com");
        assert!(
            wildcard
                .hints
                .iter()
                .any(|h| h.contains("does not cover \"example.com\" itself")),
            "{:?}",
            wildcard.hints
        );
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "egressd-edit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
