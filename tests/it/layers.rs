//! The crate's layers import only downwards: a reader sees the architecture in the folder
//! list, and no second route out of egressd can grow by an import going the wrong way.

use std::collections::BTreeSet;
use std::path::Path;

/// (module, the crate modules it may import from). `app` and `cli` wire everything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("util", &[]),
    ("policy", &["util"]),
    ("secrets", &["util"]),
    ("egress", &["policy", "secrets", "util"]),
    ("metrics", &["egress", "policy"]),
    ("proxy", &["egress", "metrics", "policy", "secrets", "util"]),
    ("schedule", &["egress", "metrics", "policy", "util"]),
    (
        "state",
        &["egress", "metrics", "policy", "schedule", "secrets", "util"],
    ),
    (
        "control",
        &[
            "egress", "metrics", "policy", "proxy", "schedule", "secrets", "state", "util",
        ],
    ),
];

/// Every `crate::X` a source file names in code (comments may link anywhere).
fn crate_imports(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .flat_map(|line| {
            line.match_indices("crate::").map(move |(i, _)| {
                line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
        })
        .collect()
}

fn sources(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if dir.is_file() {
        files.push(dir.to_path_buf());
        return files;
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn each_layer_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (module, allowed) in ALLOWED {
        let folder = src.join(module);
        let root = if folder.is_dir() {
            folder
        } else {
            src.join(format!("{module}.rs"))
        };
        let files = sources(&root);
        assert!(!files.is_empty(), "no sources for {module}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for import in crate_imports(&text) {
                if import != *module && !allowed.contains(&import.as_str()) {
                    violations.push(format!("{} imports crate::{import}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
