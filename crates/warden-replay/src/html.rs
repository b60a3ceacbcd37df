//! The HTML report: one self-contained page (no script, no external resource), with the
//! tables of the text report and, per rule, an inline SVG chart of its hits and of the
//! requests it refused (or would refuse) over time, under a chart of all requests and all
//! refusals.

use std::fmt::Write as _;

use crate::report::{rfc3339, Report, Series};

/// Columns of every chart.
const BINS: usize = 120;
const W: f64 = 720.0;
const H: f64 = 120.0;

/// Escapes text for HTML.
#[must_use]
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The series re-binned over `[t0, t1]` (unix seconds) in [`BINS`] columns.
fn rebin(s: &Series, t0: u64, t1: u64) -> (Vec<[u64; 2]>, u64) {
    let width = (t1.saturating_sub(t0) + 1).div_ceil(BINS as u64).max(1);
    let mut out = vec![[0u64; 2]; BINS];
    for (i, b) in s.buckets.iter().enumerate() {
        let t = s.start_s + i as u64 * s.step_s;
        let k = ((t.saturating_sub(t0)) / width) as usize;
        if let Some(o) = out.get_mut(k.min(BINS - 1)) {
            o[0] += b[0];
            o[1] += b[1];
        }
    }
    (out, width)
}

fn chart(out: &mut String, title: &str, s: &Series, t0: u64, t1: u64, labels: [&str; 2]) {
    let (bins, width) = rebin(s, t0, t1);
    let max = bins
        .iter()
        .map(|b| b[0].max(b[1]))
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |i: usize| i as f64 * W / BINS as f64;
    let y = |v: u64| H - v as f64 * (H - 4.0) / max as f64;
    let bar = W / BINS as f64;
    let _ = write!(
        out,
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {W} {}\" width=\"{W}\" height=\"{}\" role=\"img\" aria-label=\"{}\">",
        escape(title),
        H + 18.0,
        H + 18.0,
        escape(title)
    );
    let _ = write!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#ddd\"/>"
    );
    for (i, b) in bins.iter().enumerate() {
        if b[0] > 0 {
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#9bb7d4\"><title>{}: {} {}, {} {}</title></rect>",
                x(i),
                y(b[0]),
                bar,
                H - y(b[0]),
                escape(&rfc3339((t0 + i as u64 * width) * 1000)),
                b[0],
                labels[0],
                b[1],
                labels[1]
            );
        }
    }
    let mut path = String::new();
    for (i, b) in bins.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1} L{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(i),
            y(b[1]),
            x(i) + bar,
            y(b[1])
        );
    }
    let _ = write!(
        out,
        "<path d=\"{}\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\"/>",
        path.trim_end()
    );
    let _ = write!(
        out,
        "<text x=\"2\" y=\"{}\" font-size=\"10\">{}</text><text x=\"{W}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <text x=\"4\" y=\"12\" font-size=\"10\">max {max} per {width} s</text></svg>",
        H + 14.0,
        escape(&rfc3339(t0 * 1000)),
        H + 14.0,
        escape(&rfc3339(t1 * 1000)),
    );
    let _ = write!(
        out,
        "<p class=\"legend\"><span class=\"a\">&#9632;</span> {} <span class=\"b\">&#9644;</span> {}</p></figure>",
        labels[0], labels[1]
    );
}

/// The page.
#[must_use]
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let t0 = r.series.start_s;
    let t1 = t0 + (r.series.buckets.len() as u64 * r.series.step_s).max(1) - 1;
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>warden replay: {}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         figure{{margin:1em 0}}figcaption{{font-weight:bold}}.legend{{margin:0;font-size:12px}}.a{{color:#9bb7d4}}.b{{color:#c0392b}}</style></head><body>",
        escape(&r.rules_file)
    );
    let _ = write!(
        o,
        "<h1>warden replay</h1><p>Rules <code>{}</code> over {}: {} lines, {} requests from {} to {}, \
         {} bad lines, {} out of order; provenance {}. Reached the upstream: {}.</p>",
        escape(&r.rules_file),
        escape(&r.files.join(", ")),
        r.lines,
        r.requests,
        escape(r.first.as_deref().unwrap_or("-")),
        escape(r.last.as_deref().unwrap_or("-")),
        r.bad_lines,
        r.out_of_order,
        escape(&r.provenance),
        r.reached_upstream
    );
    o.push_str("<h2>Rules</h2><table><tr><th>rule</th><th>action</th><th>mode</th><th>hits</th><th>would block</th><th>decided</th><th>first hit</th><th>top keys</th></tr>");
    for rule in &r.rules {
        let keys: Vec<String> = rule
            .top_keys
            .iter()
            .map(|k| format!("{} ({})", escape(&k.key), k.hits))
            .collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&rule.name),
            rule.action,
            rule.mode,
            rule.hits,
            rule.would_block,
            rule.decided,
            escape(rule.first_hit.as_deref().unwrap_or("-")),
            keys.join("<br>")
        );
    }
    o.push_str("</table>");
    if !r.labels.is_empty() {
        o.push_str("<h2>Labels</h2><table><tr><th>label</th><th>requests</th><th>reached upstream</th><th>after 10 s</th><th>first refusal after (ms)</th><th>requests before</th><th>clients refused</th></tr>");
        for l in &r.labels {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{:.4} %</td><td>{:.4} %</td><td>{}</td><td>{}</td><td>{}/{}</td></tr>",
                escape(&l.label),
                l.requests,
                l.share_reached * 100.0,
                l.share_reached_after_10s * 100.0,
                l.first_refusal_after_ms
                    .map_or_else(|| "never".into(), |v| v.to_string()),
                l.requests_before_first_refusal
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                l.users_refused,
                l.users
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<h2>Over time</h2>");
    chart(
        &mut o,
        "all requests",
        &r.series,
        t0,
        t1,
        ["requests", "refused"],
    );
    for rule in &r.rules {
        chart(
            &mut o,
            &format!("{} ({} {})", rule.name, rule.action, rule.mode),
            &rule.series,
            t0,
            t1,
            ["hits", "would block"],
        );
    }
    if r.bad_lines > 0 {
        let _ = write!(o, "<h2>Bad lines ({})</h2><ul>", r.bad_lines);
        for b in &r.bad {
            let _ = write!(
                o,
                "<li><code>{}:{}</code>: {}</li>",
                escape(&b.file),
                b.line,
                escape(&b.error)
            );
        }
        o.push_str("</ul>");
    }
    o.push_str("</body></html>\n");
    o
}
