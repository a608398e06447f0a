//! The import direction of `src/lib.rs`'s Layout: a module uses only modules below it. Reads
//! every `src/**/*.rs`, collects what each one names through `crate::X` (also inside
//! `use crate::{X, …}` groups) and `super::super::X`, and fails naming `file:line` for each
//! import the table below does not allow. Keep the table and the Layout doc in step.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Leaves: they import nothing in the crate except the leaves listed before them.
const LOW: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("ids", &[]),
    ("picture", &[]),
    ("progress", &[]),
    ("response", &[]),
    ("thread", &[]),
    ("tls", &[]),
    ("udp", &[]),
    ("auth", &["config", "ids"]),
    ("logging", &["config"]),
];

/// Above the leaves, level by level: each module may import every leaf and every module on a
/// lower level, never one on its own level or above.
const LEVELS: &[&[&str]] = &[
    &["capture", "audio"],
    &["media"],
    &["rtc", "rtsp", "signaling"],
    &["metrics", "discovery", "systemd", "reload"],
    &["http"],
    &["daemon"],
    &["cli"],
];

/// Which top-level modules `module` may import.
fn allowed(module: &str) -> Option<BTreeSet<&'static str>> {
    if let Some((_, ok)) = LOW.iter().find(|(m, _)| *m == module) {
        return Some(ok.iter().copied().collect());
    }
    let level = LEVELS.iter().position(|l| l.contains(&module))?;
    let mut ok: BTreeSet<&str> = LOW.iter().map(|(m, _)| *m).collect();
    ok.extend(LEVELS[..level].iter().flat_map(|l| l.iter().copied()));
    Some(ok)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named by `crate::…` on `line`; `group` carries an open
/// `use crate::{ … }` across lines.
fn crate_refs(line: &str, group: &mut Option<usize>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    if let Some(depth) = group.as_mut() {
        // Inside `use crate::{`: every name at depth 1 is a top-level module.
        let mut at_start = true;
        for (i, c) in line.char_indices() {
            match c {
                '{' => *depth += 1,
                '}' => *depth -= 1,
                ',' => at_start = true,
                c if c.is_whitespace() => {}
                _ => {
                    if at_start && *depth == 1 {
                        let name = ident(&line[i..]);
                        if !name.is_empty() && name != "self" {
                            found.push(name.to_owned());
                        }
                    }
                    at_start = false;
                }
            }
            if *depth == 0 {
                *group = None;
                rest = &line[i + 1..];
                break;
            }
        }
        if group.is_some() {
            return found;
        }
    }
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(inner) = after.strip_prefix('{') {
            *group = Some(1);
            let mut more = crate_refs(inner, group);
            found.append(&mut more);
            if group.is_some() {
                return found;
            }
            // The group closed on this line; `crate_refs` scanned the rest already.
            return found;
        }
        let name = ident(after);
        if !name.is_empty() {
            found.push(name.to_owned());
        }
    }
    found
}

/// `super::super::X` resolved against the file's module path (`depth` extra inline modules,
/// such as `mod tests`, sit between the file and the line).
fn super_refs(line: &str, module_path: &[String], depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("super::") {
        let mut tail = &rest[at..];
        let mut ups = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            ups += 1;
            tail = t;
        }
        rest = tail;
        // The path of the module the line is in, then go up `ups` times.
        let mut path: Vec<String> = module_path.to_vec();
        path.extend((0..depth).map(|_| "<inline>".to_owned()));
        if ups > path.len() {
            continue;
        }
        path.truncate(path.len() - ups);
        let top = match path.first() {
            Some(top) => top.clone(),
            None => ident(tail).to_owned(),
        };
        if !top.is_empty() && top != "<inline>" {
            found.push(top);
        }
    }
    found
}

/// `src/capture/v4l2.rs` → `["capture", "v4l2"]`, `src/media/mod.rs` → `["media"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every import that breaks the table, as `file:line: a imports b`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    assert!(files.len() > 20, "found the sources in {}", src.display());
    let mut bad = Vec::new();
    for file in files {
        let path = module_path(src, &file);
        let Some(module) = path.first().cloned() else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue; // the crate root and the binary see everything
        }
        let Some(ok) = allowed(&module) else {
            bad.push(format!(
                "{}: module `{module}` is not in the layering table (tests/layering.rs)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        let mut group = None;
        let mut inline_depth = 0;
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.starts_with("mod ") && code.ends_with('{') {
                inline_depth += 1;
            }
            let mut names = crate_refs(code, &mut group);
            names.extend(super_refs(code, &path, inline_depth));
            for name in names {
                if name != module && !ok.contains(name.as_str()) {
                    bad.push(format!(
                        "{}:{}: `{module}` imports `{name}`, which it may not (allowed: {})",
                        file.display(),
                        n + 1,
                        ok.iter().copied().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn imports_go_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports against the layering (src/lib.rs, # Layout):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_form_of_import() {
    let mut group = None;
    assert_eq!(crate_refs("use crate::media::X;", &mut group), ["media"]);
    assert_eq!(
        crate_refs("let a = crate::rtc::f(crate::ids::g());", &mut group),
        ["rtc", "ids"]
    );
    assert!(crate_refs("pub(crate) fn f() {}", &mut group).is_empty());
    assert_eq!(
        crate_refs("use crate::{media::{A, B}, systemd};", &mut group),
        ["media", "systemd"]
    );
    assert_eq!(group, None);
    assert!(crate_refs("use crate::{", &mut group).is_empty());
    assert_eq!(
        crate_refs("    rtc::RtcHandle, config,", &mut group),
        ["rtc", "config"]
    );
    assert_eq!(crate_refs("};", &mut group), Vec::<String>::new());
    assert_eq!(group, None);
    let still = ["media".to_owned(), "still".to_owned()];
    assert_eq!(super_refs("use super::super::jpeg;", &still, 1), ["media"]);
    assert_eq!(super_refs("use super::super::jpeg;", &still, 0), ["jpeg"]);
    assert_eq!(allowed("media").map(|a| a.contains("capture")), Some(true));
    assert_eq!(allowed("capture").map(|a| a.contains("media")), Some(false));
    assert_eq!(allowed("rtc").map(|a| a.contains("signaling")), Some(false));
}
