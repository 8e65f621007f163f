//! `wardenctl metrics --prometheus` is valid Prometheus text and counts the
//! calls that were made.

use std::collections::{BTreeMap, HashMap};

use warden_testkit::{config_text, wardenctl, BrokerProcess, TestDir};

use crate::{stderr, stdout, users, RULES};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A small parser of the text exposition format: `# HELP`/`# TYPE` lines
/// and `name{label="value",...} number` samples. Fails on anything else.
fn parse(text: &str) -> anyhow::Result<(HashMap<String, String>, Vec<Sample>)> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
            let name = name.ok_or_else(|| anyhow::anyhow!("bad comment: {line}"))?;
            anyhow::ensure!(valid_name(name), "bad metric name in {line}");
            match kw {
                Some("HELP") => {}
                Some("TYPE") => {
                    anyhow::ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail),
                        "bad type in {line}"
                    );
                    anyhow::ensure!(
                        types.insert(name.to_owned(), tail.to_owned()).is_none(),
                        "TYPE twice: {line}"
                    );
                }
                _ => anyhow::bail!("unknown comment {line}"),
            }
            continue;
        }
        anyhow::ensure!(!line.trim().is_empty(), "empty line");
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("no value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .map_err(|_| anyhow::anyhow!("bad value in {line}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| anyhow::anyhow!("unclosed labels: {line}"))?;
                let mut labels = BTreeMap::new();
                for pair in body.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("bad label: {line}"))?;
                    anyhow::ensure!(valid_name(k), "bad label name in {line}");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| anyhow::anyhow!("unquoted label: {line}"))?;
                    anyhow::ensure!(
                        !v.contains('"') && !v.contains('\\'),
                        "unescaped label value: {line}"
                    );
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (n, labels)
            }
        };
        anyhow::ensure!(valid_name(name), "bad metric name: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        anyhow::ensure!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.push((name.to_owned(), labels, value));
    }
    Ok((types, samples))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

#[test]
#[ignore = "needs root"]
fn prometheus_output_parses_and_counts_the_calls() -> anyhow::Result<()> {
    let (alice, bob, _) = users("prometheus_output_parses_and_counts_the_calls");
    let dir = TestDir::new("metrics")?;
    let conf = format!(
        "{RULES}\n[[rule]]\nactions = [\"call\"]\nnames = [\"warden.metrics\"]\nadmins = true\n"
    );
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    for _ in 0..7 {
        let out = wardenctl(Some(&alice), broker.socket(), &["ping"])?;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    // Counted under its name only while something serves it: a provider.
    let mut secret = crate::provider(&alice, broker.socket(), "svc.secret", 0)?;
    for _ in 0..2 {
        let out = wardenctl(Some(&bob), broker.socket(), &["call", "svc.secret"])?;
        assert_eq!(out.status.code(), Some(1));
    }
    let _ = secret.kill();
    let _ = secret.wait();
    // A name nothing serves is counted as unresolved.
    let out = wardenctl(Some(&bob), broker.socket(), &["call", "zz.made.up"])?;
    assert_eq!(out.status.code(), Some(1));
    // Not for non-administrators.
    let out = wardenctl(Some(&bob), broker.socket(), &["metrics"])?;
    assert!(
        stderr(&out).starts_with("error: denied"),
        "{}",
        stderr(&out)
    );

    let out = wardenctl(None, broker.socket(), &["metrics", "--prometheus"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let (types, samples) = parse(&text).map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    assert_eq!(
        types
            .get("warden_call_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        value(&samples, "warden_calls_total", &[("method", "warden.ping")]),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, "warden_calls_total", &[("method", "svc.secret")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, "warden_unresolved_calls_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, "warden_calls_total", &[("method", "zz.made.up")]),
        None,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "warden_call_errors_total",
            &[("method", "svc.secret"), ("code", "denied")]
        ),
        Some(2.0),
        "{text}"
    );
    // Histogram: cumulative buckets ending in +Inf = _count = calls.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "warden_call_duration_seconds_bucket"
                && l.get("method").map(String::as_str) == Some("warden.ping")
        })
        .map(|s| s.2)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last().copied(), Some(7.0));
    assert_eq!(
        value(
            &samples,
            "warden_call_duration_seconds_count",
            &[("method", "warden.ping")]
        ),
        Some(7.0)
    );
    assert!(value(&samples, "warden_connections", &[]).is_some_and(|c| c >= 1.0));
    Ok(())
}
