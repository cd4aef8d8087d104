//! Docs that cannot drift from each other or from the code: every relative link and anchor in the
//! README and `docs/` resolves, every reject code and run outcome the code can produce is explained
//! in the operations page, and no source file cites a README section as its specification (the
//! README is a front page; the specifications live in `docs/`). The configuration page is checked
//! against the variables the code reads in `template_consistency`; the diagram against its source
//! by `python3 tools/diagram.py --check` and the crate docs by `cargo doc` with warnings as errors,
//! both in `./dev test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use shared::codes::{Outcome, RejectCode};
use shared::store::RunOutcome;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, punctuation other than `-` and
/// `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page's headings (outside code blocks), with GitHub's `-1`, `-2`
/// suffixes for repeats.
fn anchors(page: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_code = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let base = slug(&text.replace('`', ""));
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The targets of the inline links `[text](target)` on a page, outside code blocks and spans.
fn links(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Code spans may hold `](` that is no link.
        let text: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].trim().to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let name = page
                .strip_prefix(root())
                .unwrap_or(&page)
                .display()
                .to_string();
            if !target.exists() {
                broken.push(format!("{name}: {link} (no such file)"));
                continue;
            }
            if !anchor.is_empty() {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{name}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser still reading the pages?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every run outcome, spelled as manifests and events spell it. The match makes a new outcome a
/// compile error here until it is listed (and so documented).
fn run_outcomes() -> Vec<String> {
    let all = [
        RunOutcome::Succeeded,
        RunOutcome::Partial,
        RunOutcome::Failed,
        RunOutcome::TimedOut,
        RunOutcome::Cancelled,
    ];
    for o in all {
        match o {
            RunOutcome::Succeeded
            | RunOutcome::Partial
            | RunOutcome::Failed
            | RunOutcome::TimedOut
            | RunOutcome::Cancelled => {}
        }
    }
    all.iter()
        .map(|o| {
            serde_json::to_value(o)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn every_reject_code_and_outcome_is_explained_in_the_operations_page() {
    let page = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let row = |name: &str| page.contains(&format!("| `{name}` |"));
    let mut missing: Vec<String> = Vec::new();
    missing.extend(
        RejectCode::ALL
            .iter()
            .filter(|c| !row(c.as_str()))
            .map(|c| format!("reject code {c}")),
    );
    missing.extend(
        run_outcomes()
            .into_iter()
            .filter(|o| !row(o))
            .map(|o| format!("run outcome {o}")),
    );
    missing.extend(
        Outcome::ALL
            .iter()
            .filter(|o| !page.contains(&format!("`{}`", o.as_str())))
            .map(|o| format!("message outcome {o}")),
    );
    assert!(
        missing.is_empty(),
        "not explained in docs/operations.md (a table row `| `name` |` each): {missing:?}"
    );
}

/// Every Rust source file in the workspace (not target/).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_cites_the_readme_as_its_specification() {
    let mut files = Vec::new();
    for dir in ["shared", "functions", "tools", "tests", "fuzz"] {
        if root().join(dir).exists() {
            sources(&root().join(dir), &mut files);
        }
    }
    assert!(files.len() > 50, "only {} sources found", files.len());
    let cites = ["README.md", "README's", "the README", "README ("];
    let this = file!().rsplit('/').next().unwrap();
    let mut found = Vec::new();
    for f in files {
        if f.ends_with(this) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if cites.iter().any(|c| line.contains(c)) {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cite the docs/ page instead of the README:\n{}",
        found.join("\n")
    );
}

/// A path into the repository written in backticks (`tests/tests/...`, `shared/src/...`) names a
/// file or folder that exists: moving code moves its mentions. Paths with a placeholder (`<run>`,
/// `*`, `{`) and the part after `:` or `#` are not checked.
#[test]
fn every_repository_path_the_readme_and_docs_name_exists() {
    let roots = [
        "tests/",
        "shared/",
        "tools/",
        "infra/",
        "functions/",
        "docs/",
        "fuzz/",
        ".ci/",
    ];
    let mut missing = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page
            .strip_prefix(root())
            .unwrap_or(&page)
            .display()
            .to_string();
        for (n, line) in text.lines().enumerate() {
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 0 || !roots.iter().any(|r| span.starts_with(r)) {
                    continue;
                }
                let path = span.split([':', '#', '(', ' ']).next().unwrap_or_default();
                if path.contains(['<', '*', '{', '$']) {
                    continue;
                }
                checked += 1;
                if !root().join(path).exists() {
                    missing.push(format!("{name}:{}: {path}", n + 1));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} paths found: is the parser still reading the pages?"
    );
    assert!(
        missing.is_empty(),
        "paths the docs name that do not exist:\n{}",
        missing.join("\n")
    );
}
