//! The Markdown's links: every relative link and `#anchor` in the repository's Markdown files must
//! resolve as GitHub resolves it, so a page moved or a heading renamed fails here rather than in a
//! reader's browser.
//!
//! - The files are those git would commit (`git ls-files --cached --others --exclude-standard`):
//!   a link to an ignored file (anything under `target/`) is broken even where it exists locally,
//!   and a new page is checked before it is added.
//! - Links are read with a CommonMark parser, GitHub's extensions on, so text in code spans and
//!   code blocks is never taken for a link. Images count as links; links in raw HTML
//!   (`<a href>`, `<img src>`) are not read.
//! - A link is relative to the file that holds it; `#anchor` alone is within that file. Anchors
//!   are checked in Markdown targets only: GitHub's `#L10` line anchors on source files are left
//!   alone.
//! - External links (anything with a scheme: `http:`, `https:`, `mailto:`) are not followed: the
//!   tests have no network.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::Path,
    process::Command,
};

use percent_encoding::percent_decode_str;
use pulldown_cmark::{BrokenLink, Event, LinkType, Options, Parser, Tag, TagEnd};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn every_relative_link_and_anchor_in_the_markdown_resolves() {
    let repository = Repository::from_git(Path::new(ROOT));
    // A check that found nothing to check would pass too.
    for page in ["README.md", "deploy/README.md", "docs/local-stack.md"] {
        assert!(
            repository.markdown.contains_key(page),
            "{page} is not among the Markdown files checked: {:?}",
            repository.markdown.keys()
        );
    }
    assert!(
        repository.markdown["README.md"].links.len() >= 10,
        "the README's links were not read: {:?}",
        repository.markdown["README.md"].links
    );
    let problems = repository.broken_links();
    assert!(
        problems.is_empty(),
        "{} broken link(s) in the Markdown:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn heading_ids_are_computed_as_github_computes_them() {
    let page = Page::parse(
        "# Quick start: the local stack\n\
         ## The `SEND_CONCURRENCY` we ship: 32\n\
         ## Without a cluster: `dapr run -f .`\n\
         ## 1. What you need\n\
         ## *Emphasis* and [a link](x.md)\n\
         ## Données, État\n\
         Setext heading\n\
         --------------\n\
         ## Metrics\n\
         ## Metrics\n\
         ## Metrics\n\
         ## Metrics-1\n",
    );
    let expected = [
        "quick-start-the-local-stack",
        "the-send_concurrency-we-ship-32",
        "without-a-cluster-dapr-run--f-",
        "1-what-you-need",
        "emphasis-and-a-link",
        "données-état",
        "setext-heading",
        "metrics",
        "metrics-1",
        "metrics-2",
        "metrics-1-1",
    ];
    assert_eq!(
        page.ids,
        expected
            .map(String::from)
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
}

#[test]
fn a_link_to_a_missing_file_fails_naming_the_file_the_link_and_why() {
    let repository = repository(&[
        (
            "README.md",
            "# Title\n\nSee\n[the guide](docs/gone.md) and [the code](src/lib.rs).\n",
        ),
        ("src/lib.rs", ""),
    ]);
    assert_eq!(
        repository.broken_links(),
        ["README.md:4: `docs/gone.md`: docs/gone.md does not exist, or git would not commit it"]
    );
}

#[test]
fn a_missing_anchor_fails_within_the_file_and_in_another() {
    let repository = repository(&[
        (
            "README.md",
            "# Title\n\n[here](#title) [nowhere](#nope) [there](docs/a.md#section) \
             [not there](docs/a.md#title)\n",
        ),
        (
            "docs/a.md",
            "# Section\n\nBack to [the top](../README.md#title).\n",
        ),
    ]);
    assert_eq!(
        repository.broken_links(),
        [
            "README.md:3: `#nope`: README.md has no heading with the id `nope` (its ids: title)",
            "README.md:3: `docs/a.md#title`: docs/a.md has no heading with the id `title` \
             (its ids: section)",
        ]
    );
}

#[test]
fn links_in_code_are_not_links() {
    let repository = repository(&[(
        "README.md",
        "`[inline](gone.md)`\n\n```sh\n[fenced](gone.md)\n```\n\n    [indented](gone.md)\n",
    )]);
    assert_eq!(repository.markdown["README.md"].links, Vec::<Link>::new());
    assert_eq!(repository.broken_links(), Vec::<String>::new());
}

#[test]
fn external_links_folders_and_line_anchors_resolve_and_nothing_leaves_the_repository() {
    let repository = repository(&[
        (
            "docs/a.md",
            "[web](https://example.com/x.md) [plain](http://example.com) [mail](mailto:a@b.c) \
             <https://example.com> <a@b.c> [folder](../deploy/) [root](../) [line](../src/lib.rs#L3) \
             [sibling](b.md) [space](my%20file.md) [query](b.md?plain=1) [top](#)\n\n\
             [outside](../../elsewhere.md)\n",
        ),
        ("docs/b.md", ""),
        ("docs/my file.md", ""),
        ("deploy/base/k.yaml", ""),
        ("src/lib.rs", ""),
    ]);
    assert_eq!(
        repository.broken_links(),
        ["docs/a.md:3: `../../elsewhere.md`: it leads out of the repository"]
    );
}

#[test]
fn an_undefined_reference_fails_while_brackets_in_prose_do_not() {
    let repository = repository(&[(
        "README.md",
        "[a reference][defined] and [another][nowhere], [just brackets] in prose.\n\n\
         [defined]: README.md\n",
    )]);
    assert_eq!(
        repository.broken_links(),
        ["README.md:1: `[nowhere]`: no link reference definition `[nowhere]` in README.md"]
    );
}

/// A repository of these files, Markdown (`*.md`) parsed from its text.
fn repository(files: &[(&str, &str)]) -> Repository {
    Repository::new(files.iter().map(|(path, text)| {
        (
            path.to_string(),
            path.ends_with(".md").then(|| text.to_string()),
        )
    }))
}

/// What links may point at, and the Markdown that holds them.
struct Repository {
    /// Every file, by its path from the root, `/`-separated as git prints it.
    files: BTreeSet<String>,
    /// Every folder that holds a file; `""` is the root.
    folders: BTreeSet<String>,
    /// The Markdown files, parsed.
    markdown: BTreeMap<String, Page>,
}

impl Repository {
    /// The files git would commit in the work tree at `root`, with its Markdown read.
    fn from_git(root: &Path) -> Self {
        let output = Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(root)
            .output()
            .expect("git is needed to list the repository's files");
        assert!(
            output.status.success(),
            "git ls-files failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let files = output
            .stdout
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| String::from_utf8(f.to_vec()).expect("a file name that is not UTF-8"))
            // Deleted from the work tree but still in the index: gone, as far as a link goes.
            .filter(|f| root.join(f).exists())
            .map(|f| {
                let text = f.ends_with(".md").then(|| {
                    fs::read_to_string(root.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"))
                });
                (f, text)
            });
        Self::new(files)
    }

    /// A repository of `files`, each with its text when it is Markdown.
    fn new(files: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        let mut repository = Self {
            files: BTreeSet::new(),
            folders: BTreeSet::from([String::new()]),
            markdown: BTreeMap::new(),
        };
        for (path, text) in files {
            let mut folder = path.as_str();
            while let Some((parent, _)) = folder.rsplit_once('/') {
                repository.folders.insert(parent.to_string());
                folder = parent;
            }
            if let Some(text) = text {
                repository.markdown.insert(path.clone(), Page::parse(&text));
            }
            repository.files.insert(path);
        }
        repository
    }

    /// One line per broken link: `file:line: `link`: why`.
    fn broken_links(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (file, page) in &self.markdown {
            for link in &page.links {
                if let Err(why) = self.resolve(file, &link.destination) {
                    problems.push(format!(
                        "{file}:{}: `{}`: {why}",
                        link.line, link.destination
                    ));
                }
            }
            for (line, reference) in &page.undefined_references {
                problems.push(format!(
                    "{file}:{line}: `[{reference}]`: no link reference definition \
                     `[{reference}]` in {file}"
                ));
            }
        }
        problems
    }

    /// Whether `destination`, a link in the Markdown file `from`, leads somewhere.
    fn resolve(&self, from: &str, destination: &str) -> Result<(), String> {
        if destination.is_empty() {
            return Err("the link is empty".into());
        }
        if has_scheme(destination) || destination.starts_with("//") {
            return Ok(());
        }
        let (path, anchor) = match destination.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (destination, None),
        };
        // A query (`?plain=1`) changes how GitHub shows a file, not which file it is.
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let target = if path.is_empty() {
            from.to_string()
        } else {
            join(from, &decode(path)?)?
        };
        if !self.files.contains(&target) && !self.folders.contains(&target) {
            return Err(format!(
                "{target} does not exist, or git would not commit it"
            ));
        }
        let (Some(anchor), Some(page)) = (anchor, self.markdown.get(&target)) else {
            return Ok(());
        };
        let anchor = decode(anchor)?;
        // `#` alone is the top of the page.
        if anchor.is_empty() || page.ids.contains(&anchor) {
            return Ok(());
        }
        let ids: Vec<&str> = page.ids.iter().map(String::as_str).collect();
        Err(format!(
            "{target} has no heading with the id `{anchor}` (its ids: {})",
            ids.join(", ")
        ))
    }
}

/// Whether `link` starts with a URI scheme (RFC 3986: a letter, then letters, digits, `+`, `-` or
/// `.`, then `:`), as `https:` and `mailto:` do: it is not a path in the repository.
fn has_scheme(link: &str) -> bool {
    link.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `path` decoded from the percent-encoding a link may use (`my%20file.md`).
fn decode(path: &str) -> Result<String, String> {
    percent_decode_str(path)
        .decode_utf8()
        .map(|p| p.into_owned())
        .map_err(|e| format!("`{path}` is not UTF-8 once percent-decoded: {e}"))
}

/// The repository path that `path` names from the file `from`: relative to `from`'s folder, or
/// to the root when it starts with `/`, as GitHub resolves links in a repository.
fn join(from: &str, path: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        from.split('/').collect()
    };
    // `from` names a file: its own name is not part of the folder.
    if !path.starts_with('/') {
        parts.pop();
    }
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("it leads out of the repository".into());
                }
            }
            name => parts.push(name),
        }
    }
    Ok(parts.join("/"))
}

/// A Markdown file's heading ids and links.
#[derive(Debug, Default)]
struct Page {
    /// The ids GitHub gives its headings, which `#anchor`s name.
    ids: BTreeSet<String>,
    /// Its links and images.
    links: Vec<Link>,
    /// `[text][label]` and `[text][]` whose label no `[label]: ...` defines, by line.
    undefined_references: Vec<(usize, String)>,
}

/// A link as written, and the line it starts on.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    destination: String,
}

impl Page {
    fn parse(text: &str) -> Self {
        let undefined = RefCell::new(Vec::new());
        // A shortcut `[text]` with no definition is plain text on GitHub, and common in prose;
        // a full or collapsed reference is meant as a link.
        let mut note_undefined = |link: BrokenLink<'_>| {
            if matches!(link.link_type, LinkType::Reference | LinkType::Collapsed) {
                undefined
                    .borrow_mut()
                    .push((link.span.start, link.reference.to_string()));
            }
            None
        };
        let options = Options::ENABLE_TABLES
            | Options::ENABLE_FOOTNOTES
            | Options::ENABLE_STRIKETHROUGH
            | Options::ENABLE_TASKLISTS;
        let parser =
            Parser::new_with_broken_link_callback(text, options, Some(&mut note_undefined));
        let line = |offset: usize| text[..offset].matches('\n').count() + 1;

        let mut page = Page::default();
        let mut ids = HeadingIds::default();
        let mut heading: Option<String> = None;
        for (event, range) in parser.into_offset_iter() {
            match event {
                Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
                Event::End(TagEnd::Heading(_)) => {
                    if let Some(text) = heading.take() {
                        page.ids.insert(ids.next(&text));
                    }
                }
                Event::Text(text) | Event::Code(text) => {
                    if let Some(heading) = heading.as_mut() {
                        heading.push_str(&text);
                    }
                }
                // `<a@b.c>` is a mail address without its `mailto:`.
                Event::Start(
                    Tag::Link {
                        link_type,
                        dest_url,
                        ..
                    }
                    | Tag::Image {
                        link_type,
                        dest_url,
                        ..
                    },
                ) if link_type != LinkType::Email => page.links.push(Link {
                    line: line(range.start),
                    destination: dest_url.to_string(),
                }),
                _ => {}
            }
        }
        page.undefined_references = undefined
            .take()
            .into_iter()
            .map(|(offset, reference)| (line(offset), reference))
            .collect();
        page
    }
}

/// GitHub's heading ids within one page: the heading's text in lower case, without the characters
/// that are neither letters, digits, `_`, `-` nor spaces, and spaces turned into `-`; an id taken
/// already gets `-1`, `-2`, ... (github-slugger, which GitHub's renderer matches).
#[derive(Default)]
struct HeadingIds {
    taken: BTreeSet<String>,
    repeats: HashMap<String, usize>,
}

impl HeadingIds {
    fn next(&mut self, heading: &str) -> String {
        let base: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut id = base.clone();
        while self.taken.contains(&id) {
            let repeats = self.repeats.entry(base.clone()).or_default();
            *repeats += 1;
            id = format!("{base}-{repeats}");
        }
        self.taken.insert(id.clone());
        id
    }
}
