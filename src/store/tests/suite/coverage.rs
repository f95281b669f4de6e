//! Every public function of `Db` is called somewhere in this suite.

use std::collections::BTreeSet;
use std::path::Path;

/// Source files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names of the `pub fn`s declared directly in `impl Db { … }` blocks.
fn public_db_functions(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in source.lines() {
        if line.starts_with("impl Db {") {
            inside = true;
        } else if inside && line.starts_with('}') {
            inside = false;
        } else if inside {
            let decl = line
                .strip_prefix("    pub async fn ")
                .or_else(|| line.strip_prefix("    pub fn "));
            if let Some(rest) = decl {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_public_store_function_is_in_the_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut store = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && !matches!(name.as_str(), "tests" | "migrations") {
            rust_files(&path, &mut store);
        } else if name.ends_with(".rs") {
            store.push(path);
        }
    }
    let mut declared = BTreeSet::new();
    for file in &store {
        declared.extend(public_db_functions(&std::fs::read_to_string(file).unwrap()));
    }
    assert!(
        declared.len() > 100,
        "the scan found only {} functions: has `impl Db` changed its form?",
        declared.len()
    );

    let mut suite = Vec::new();
    rust_files(&root.join("tests/suite"), &mut suite);
    let suite: String = suite
        .iter()
        .filter(|p| !p.ends_with("coverage.rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let missing: Vec<_> = declared
        .iter()
        .filter(|name| {
            !suite.contains(&format!(".{name}(")) && !suite.contains(&format!("Db::{name}("))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} public store functions are called by no test of the suite: {missing:?}",
        missing.len()
    );
}
