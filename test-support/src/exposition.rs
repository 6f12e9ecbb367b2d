//! A strict parser for the OpenMetrics text exposition a `/metrics` endpoint serves, so a test can
//! both read the values and prove that a scraper would accept the page.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
};

use super::WAIT;

/// A parsed page: every sample by its series, written as on the page (`name{a="b",c="d"}`, or
/// just `name` without labels), and each family's type.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of `series`; panics, listing the page's series, when it is absent.
    pub fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(value) => *value,
            None => panic!(
                "no series {series}; the page has:\n{}",
                self.samples.keys().cloned().collect::<Vec<_>>().join("\n")
            ),
        }
    }
}

impl Exposition {
    /// The sum of the samples of metric `name` whose labels include every `(label, value)` of
    /// `labels` (none: all of them); 0 when none match, as for a counter never incremented.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                let rest = rest.strip_suffix('}').unwrap_or(rest);
                let present: Vec<&str> = rest.split(',').collect();
                metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| present.contains(&format!("{k}=\"{v}\"").as_str()))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// Scrapes with `scrape` until `series` reads `value`, yielding to the other tasks between two
/// scrapes; returns that page. A metric counted just after the answer it follows (a connection's
/// end, say) is read once it is counted, not raced. Bounded in scrapes and in real time, and it
/// moves no clock.
pub async fn wait_for<F, S>(mut scrape: S, series: &str, value: f64) -> Exposition
where
    S: FnMut() -> F,
    F: Future<Output = Exposition>,
{
    let started = std::time::Instant::now();
    let mut page = scrape().await;
    for _ in 0..1_000 {
        if page.samples.get(series) == Some(&value) || started.elapsed() > WAIT {
            break;
        }
        tokio::task::yield_now().await;
        page = scrape().await;
    }
    assert_eq!(page.get(series), value, "{series}");
    page
}

#[derive(Default)]
struct Family {
    help: bool,
    kind: Option<String>,
    has_samples: bool,
}

/// `GET url` as Prometheus scrapes it: asserts 200, the OpenMetrics content type (written out
/// here, the independent check of what the binaries send) and a page [`parse`] accepts.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Exposition {
    let response = http
        .get(url)
        .send()
        .await
        .expect("the metrics page answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "{url}"
    );
    parse(&response.text().await.expect("a text body"))
}

/// Parses `text`, panicking with the offending line on anything a strict scraper would reject:
/// a sample that is not `name{labels} value`, a value that is not a float, a label that is not
/// `name="escaped value"`, a metric without HELP and TYPE before its samples, a family split in
/// two, a repeated series, a histogram whose buckets do not add up, or no final `# EOF`.
pub fn parse(text: &str) -> Exposition {
    let mut page = Exposition::default();
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut current: Option<String> = None;
    let mut eof = false;
    assert!(
        text.ends_with("\n# EOF\n"),
        "the page must end with `# EOF`:\n{text}"
    );
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", n + 1) };
        if eof {
            fail("a line after # EOF");
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = parts.next();
            if !is_metric_name(name) {
                fail("a comment that is not HELP, TYPE or UNIT with a metric name");
            }
            let family = families.entry(name.to_owned()).or_default();
            if family.has_samples {
                fail("metadata after the family's samples");
            }
            match (keyword, rest) {
                ("HELP", Some(_)) if !family.help => family.help = true,
                ("TYPE", Some(kind)) if family.kind.is_none() => {
                    const KINDS: [&str; 9] = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ];
                    if !KINDS.contains(&kind) {
                        fail("an unknown metric type");
                    }
                    family.kind = Some(kind.to_owned());
                    page.types.insert(name.to_owned(), kind.to_owned());
                }
                ("UNIT", Some(unit)) if name.ends_with(&format!("_{unit}")) => {}
                _ => fail("a repeated or malformed HELP, TYPE or UNIT"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| fail("a sample without a value"));
        let value = parse_value(value).unwrap_or_else(|| fail("a value that is not a float"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| fail("unclosed labels")),
            ),
            None => (series, ""),
        };
        if !is_metric_name(name) {
            fail("an invalid metric name");
        }
        check_labels(labels).unwrap_or_else(|why| fail(why));
        let family_name = family_of(name, &families).unwrap_or_else(|| {
            fail("a sample of no family with HELP and TYPE (or with the wrong suffix)")
        });
        if current.as_deref() != Some(family_name.as_str()) {
            let family = families.get_mut(&family_name).expect("found above");
            if family.has_samples {
                fail("a family split in two");
            }
            family.has_samples = true;
            current = Some(family_name);
        }
        if page.samples.insert(series.to_owned(), value).is_some() {
            fail("a repeated series");
        }
    }
    for (name, kind) in &page.types {
        if kind == "histogram" {
            check_histogram(name, &page.samples);
        }
    }
    page
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(value: &str) -> Option<f64> {
    match value {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust would also take "inf" or "infinity"; the format does not.
        _ if value
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => value.parse().ok(),
    }
}

/// `a="x",b="y\"z"`: names valid and distinct, values quoted with only `\\`, `\"` and `\n`.
fn check_labels(labels: &str) -> Result<(), &'static str> {
    let mut names = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
        if !is_label_name(name) {
            return Err("an invalid label name");
        }
        if names.contains(&name) {
            return Err("a repeated label");
        }
        names.push(name);
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (_, '\\') => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    _ => return Err("an invalid escape in a label value"),
                },
                (i, '"') => break i,
                (_, '\n') => return Err("a raw newline in a label value"),
                _ => {}
            }
        };
        rest = &after[end + 1..];
        if !rest.is_empty() {
            rest = rest
                .strip_prefix(',')
                .ok_or("labels not separated by commas")?;
        }
    }
    Ok(())
}

/// The family sample `name` belongs to: itself, or itself minus the suffix its family's type
/// allows (a counter `x` has samples `x_total` and `x_created`, never `x`).
fn family_of(name: &str, families: &HashMap<String, Family>) -> Option<String> {
    let typed = |family: &str| {
        families
            .get(family)
            .filter(|f| f.help)
            .and_then(|f| f.kind.clone())
    };
    if let Some(kind) = typed(name)
        && !matches!(kind.as_str(), "counter" | "histogram" | "summary")
    {
        return Some(name.to_owned());
    }
    for (suffix, kinds) in [
        ("_total", &["counter"][..]),
        ("_created", &["counter", "histogram", "summary"][..]),
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(family) = name.strip_suffix(suffix)
            && typed(family).is_some_and(|kind| kinds.contains(&kind.as_str()))
        {
            return Some(family.to_owned());
        }
    }
    None
}

/// Buckets are cumulative, end with `le="+Inf"`, and that bucket equals `_count`.
fn check_histogram(name: &str, samples: &BTreeMap<String, f64>) {
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(series, value)| {
            let le = series
                .strip_prefix(&format!("{name}_bucket{{"))?
                .split_once("le=\"")?
                .1
                .split_once('"')?
                .0;
            Some((parse_value(le).expect("a numeric le"), *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(!buckets.is_empty(), "{name}: a histogram without buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: buckets are not cumulative: {buckets:?}"
    );
    let (last_le, last) = *buckets.last().expect("not empty");
    assert_eq!(last_le, f64::INFINITY, "{name}: no +Inf bucket");
    let count = samples
        .iter()
        .find(|(series, _)| series.starts_with(&format!("{name}_count")))
        .map(|(_, value)| *value);
    assert_eq!(count, Some(last), "{name}: _count is not the +Inf bucket");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_well_formed_page() {
        let page = parse(
            "# HELP c Things.\n# TYPE c counter\nc_total{a=\"x\\\"y\",b=\"\"} 3\n\
             # HELP g Level.\n# TYPE g gauge\ng -1.5e3\n\
             # HELP h_seconds Time.\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\n\
             h_seconds_sum 0.5\nh_seconds_count 2\nh_seconds_bucket{le=\"0.1\"} 1\n\
             h_seconds_bucket{le=\"+Inf\"} 2\n# EOF\n",
        );
        assert_eq!(page.get(r#"c_total{a="x\"y",b=""}"#), 3.0);
        assert_eq!(page.get("g"), -1500.0);
        assert_eq!(page.types["h_seconds"], "histogram");
    }

    #[test]
    fn rejects_what_a_scraper_would() {
        for bad in [
            "c_total 1\n# EOF\n",                                           // no HELP/TYPE
            "# TYPE c counter\nc_total 1\n# EOF\n",                         // no HELP
            "# HELP c x\n# TYPE c counter\nc 1\n# EOF\n", // counter without _total
            "# HELP c_total x\n# TYPE c_total counter\nc_total 1\n# EOF\n", // typed as its sample
            "# HELP g x\n# TYPE g gauge\ng one\n# EOF\n", // not a float
            "# HELP g x\n# TYPE g gauge\ng inf\n# EOF\n", // not the format's spelling
            "# HELP g x\n# TYPE g gauge\ng{a=b} 1\n# EOF\n", // unquoted label
            "# HELP g x\n# TYPE g gauge\ng{a=\"\\t\"} 1\n# EOF\n", // bad escape
            "# HELP g x\n# TYPE g gauge\ng{a=\"1\",a=\"2\"} 1\n# EOF\n",
            "# HELP g x\n# TYPE g gauge\ng 1\ng 2\n# EOF\n", // repeated series
            "# HELP g x\n# TYPE g gauge\ng 1\n# EOF\ng 2\n# EOF\n", // after EOF
            "# HELP g x\n# TYPE g gauge\ng 1\n",             // no # EOF
            "# HELP g x\n# TYPE g gauge\ng 1\n# EOF",        // no final newline
            "# HELP g x\n# TYPE g nonsense\ng 1\n# EOF\n",
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n",
        ] {
            let result = std::panic::catch_unwind(|| parse(bad));
            assert!(result.is_err(), "accepted {bad:?}");
        }
    }
}
