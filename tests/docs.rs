//! The README and `docs/` checked against the code, so an example never
//! drifts from what the binary accepts and prints:
//! - every internal link (a file, or a heading's anchor) resolves;
//! - every `netbr` command shown in a `console` block parses with the real
//!   command line;
//! - every `console` block marked `<!-- session -->` runs, in order, in a
//!   fresh sandbox (`host` and `lan` from the README's topology), and what
//!   each command prints matches what the block shows.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser as _;

mod support;

/// The README and every page under `docs/`.
fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced code block: its info string, the line before its opening fence,
/// and its lines.
struct Block {
    info: String,
    marker: String,
    line: usize,
    lines: Vec<String>,
}

/// The fenced blocks of a Markdown text, and its lines outside them.
fn split_fences(text: &str) -> (Vec<Block>, Vec<(usize, String)>) {
    let (mut blocks, mut prose) = (Vec::new(), Vec::new());
    let mut open: Option<Block> = None;
    let mut previous = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(fence) = line.strip_prefix("```") {
            match open.take() {
                Some(block) => blocks.push(block),
                None => {
                    open = Some(Block {
                        info: fence.trim().to_string(),
                        marker: previous.trim().to_string(),
                        line: i + 1,
                        lines: Vec::new(),
                    })
                }
            }
        } else if let Some(block) = &mut open {
            block.lines.push(line.to_string());
        } else {
            prose.push((i + 1, line.to_string()));
        }
        previous = line.to_string();
    }
    (blocks, prose)
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    split_fences(text)
        .1
        .iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// Targets of the Markdown links `[text](target)` in a line, code spans
/// left out.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => in_code = !in_code,
            b']' if !in_code && bytes.get(i + 1) == Some(&b'(') => {
                if let Some(end) = line[i + 2..].find(')') {
                    out.push(line[i + 2..i + 2 + end].to_string());
                    i += 2 + end;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every broken internal link in `file` (whose text is `text`), as
/// `file:line: target (why)`.
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for (n, line) in split_fences(text).1 {
        for target in link_targets(&line) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.to_path_buf()
            } else {
                file.parent().expect("a file's directory").join(path)
            };
            let headings = || {
                if path.is_empty() {
                    anchors(text)
                } else {
                    anchors(&read(&dest))
                }
            };
            let why = if !dest.exists() {
                Some("no such file")
            } else if !anchor.is_empty()
                && (dest.extension().is_none_or(|e| e != "md")
                    || !headings().iter().any(|a| a == anchor))
            {
                Some("no such heading")
            } else {
                None
            };
            if let Some(why) = why {
                broken.push(format!("{}:{n}: {target} ({why})", file.display()));
            }
        }
    }
    broken
}

#[test]
fn every_internal_link_in_the_docs_resolves() {
    let broken: Vec<String> = doc_files()
        .iter()
        .flat_map(|f| broken_links(f, &read(f)))
        .collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_finds_a_missing_page_and_a_missing_heading() {
    let file = repo_root().join("README.md");
    let text = "# Top\n[ok](#top) [page](docs/nope.md) [anchor](#nowhere) `[code](x.md)`\n\
                ```\n[fenced](y.md)\n```\n[site](https://example.org/x)\n";
    let broken = broken_links(&file, text);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("docs/nope.md (no such file)"));
    assert!(broken[1].contains("#nowhere (no such heading)"));
    assert_eq!(
        slug("Docker: `netbr docker-plugin`"),
        "docker-netbr-docker-plugin"
    );
}

/// The command of a console line (`# cmd` or `$ cmd`), its trailing
/// `# comment` and a trailing `&` (run in the background) dropped.
fn command_of(line: &str) -> Option<String> {
    let cmd = line
        .strip_prefix("# ")
        .or_else(|| line.strip_prefix("$ "))?;
    let cmd = cmd.split_once(" # ").map_or(cmd, |(c, _)| c).trim();
    Some(cmd.strip_suffix('&').unwrap_or(cmd).trim().to_string())
}

/// Words of a command line, with '…' and "…" quoting.
fn words(cmd: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in cmd.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => (word, any) = (word + &c.to_string(), true),
        }
    }
    if any {
        out.push(word);
    }
    out
}

#[test]
fn every_netbr_command_shown_in_the_docs_parses() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for file in doc_files() {
        for block in split_fences(&read(&file)).0 {
            if block.info != "console" {
                continue;
            }
            for (i, line) in block.lines.iter().enumerate() {
                let Some(cmd) = command_of(line) else {
                    continue;
                };
                let argv = words(&cmd);
                if argv.first().map(String::as_str) != Some("netbr") {
                    continue;
                }
                checked += 1;
                if let Err(e) = netbr::cli::Cli::try_parse_from(&argv) {
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    bad.push(format!(
                        "{}:{}: {cmd}: {first}",
                        file.display(),
                        block.line + 1 + i
                    ));
                }
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} netbr commands found in the docs"
    );
    assert!(
        bad.is_empty(),
        "commands netbr refuses:\n{}",
        bad.join("\n")
    );
}

/// A line as compared: white space folded, and every run of hex digits
/// that holds a digit (counts, addresses, ports, ages, hashes) made `#`.
fn shape(line: &str) -> String {
    let folded = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in folded.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Whether `actual` is what `shown` shows: line by line in shape, where a
/// shown `...` stands for any number of lines.
fn matches(shown: &[String], actual: &[String]) -> bool {
    match shown.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| shape(first) == shape(a) && matches(rest, more)),
    }
}

#[test]
fn output_is_compared_in_shape() {
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    assert!(matches(
        &lines("endpoint web 172.30.0.2/16 (veth nb725797a9 on netbr0)\n...\n3 flow(s)"),
        &lines("endpoint web 172.30.0.3/16 (veth nb3f2a1b9c on netbr0)\na\nb\n12  flow(s)")
    ));
    assert!(!matches(
        &lines("published *:8080/tcp"),
        &lines("published 8080/tcp")
    ));
    assert!(!matches(&lines("a\n..."), &lines("b")));
}

/// Runs one `<!-- session -->` block in a fresh sandbox, substituting the
/// sandbox's unique namespace names (and unique endpoint names) for the
/// block's, and back in what commands print.
fn run_session(file: &Path, block: &Block) {
    let sb = support::sandbox();
    let mut names: HashMap<String, String> = HashMap::from([
        ("host".to_string(), sb.host.clone()),
        ("lan".to_string(), sb.lan.clone()),
    ]);
    // Endpoints without --netns get a namespace of their name: keep those
    // unique on the machine too.
    for line in &block.lines {
        let argv = command_of(line).map(|c| words(&c)).unwrap_or_default();
        if let Some(at) = argv.windows(2).position(|w| w == ["endpoint", "add"]) {
            if let Some(name) = argv.get(at + 2) {
                names.insert(name.clone(), format!("{name}-{}", sb.suffix));
            }
        }
    }
    let to_sandbox = |word: &str| {
        names.iter().fold(word.to_string(), |w, (doc, real)| {
            replace_name(&w, doc, real)
        })
    };
    let from_sandbox = |text: &str| {
        names
            .iter()
            .fold(text.to_string(), |t, (doc, real)| t.replace(real, doc))
    };
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in &block.lines {
        match command_of(line) {
            Some(cmd) => steps.push((cmd, Vec::new())),
            None => steps
                .last_mut()
                .unwrap_or_else(|| panic!("{}: output before any command", file.display()))
                .1
                .push(line.clone()),
        }
    }
    for (cmd, shown) in steps {
        let argv: Vec<String> = words(&cmd).iter().map(|w| to_sandbox(w)).collect();
        let program = match argv[0].as_str() {
            "netbr" => env!("CARGO_BIN_EXE_netbr").to_string(),
            other => other.to_string(),
        };
        let out = Command::new("timeout")
            .arg("60")
            .arg(&program)
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let printed = from_sandbox(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        assert!(
            out.status.success(),
            "{}:{}: `{cmd}` failed ({}):\n{printed}",
            file.display(),
            block.line,
            out.status
        );
        let keep = |l: &&str| !l.trim().is_empty();
        let actual: Vec<String> = printed.lines().filter(keep).map(str::to_string).collect();
        let shown: Vec<String> = shown
            .iter()
            .map(String::as_str)
            .filter(keep)
            .map(str::to_string)
            .collect();
        assert!(
            matches(&shown, &actual),
            "{}:{}: `{cmd}` printed what the docs do not show.\n--- docs:\n{}\n--- netbr:\n{}",
            file.display(),
            block.line,
            shown.join("\n"),
            actual.join("\n")
        );
    }
}

/// `text` with every `name` that stands alone (not part of a longer name
/// such as `web2` or `--netns`) replaced by `by`.
fn replace_name(text: &str, name: &str, by: &str) -> String {
    let part_of_name =
        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(name) {
        let before = rest[..at].chars().last().or(out.chars().last());
        let after = rest[at + name.len()..].chars().next();
        out.push_str(&rest[..at]);
        if part_of_name(before) || part_of_name(after) {
            out.push_str(name);
        } else {
            out.push_str(by);
        }
        rest = &rest[at + name.len()..];
    }
    out + rest
}

#[test]
fn names_are_replaced_where_they_stand_alone() {
    assert_eq!(
        replace_name("--netns host --net=/run/netns/web web2 web", "web", "web-1"),
        "--netns host --net=/run/netns/web-1 web2 web-1"
    );
    assert_eq!(
        replace_name("hostname host", "host", "nbh-1"),
        "hostname nbh-1"
    );
}

#[test]
fn every_session_in_the_docs_runs_as_shown() {
    let mut ran = 0;
    for file in doc_files() {
        for block in split_fences(&read(&file)).0 {
            if block.info == "console" && block.marker == "<!-- session -->" {
                run_session(&file, &block);
                ran += 1;
            }
        }
    }
    assert!(ran >= 2, "only {ran} sessions found in the docs");
}

#[test]
fn the_readme_is_a_short_read() {
    let lines = read(&repo_root().join("README.md")).lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; move detail to docs/"
    );
}
