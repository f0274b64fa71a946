//! The plain HTML status page: paused forges first, evaluations, the latest evaluation's jobs,
//! forge and loop health.
//!
//! Deliberately small and dependency-free; every interpolated value goes through [`escape`].

use std::fmt::Write;

use reconix_status::ForgeHealthState;
use reconix_status::views::{EvaluationDetail, EvaluationSummary, LoopSummary};

use crate::ForgeView;

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// Renders the whole page.
pub(crate) fn render(
    list: &[EvaluationSummary],
    latest: Option<&EvaluationDetail>,
    loops: &[LoopSummary],
    forges: &[ForgeView],
) -> String {
    let mut h = String::new();
    h.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"3\">",
        "<title>reconix</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}",
        "table{border-collapse:collapse;margin-bottom:2rem}",
        "td,th{padding:.25rem .75rem;border-bottom:1px solid #ddd;text-align:left}",
        "code{font-size:.9em}.succeeded,.finished{color:#187a2f}",
        ".failed,.eval-failed,.dependency-failed,.timed-out{color:#b3261e}",
        ".building,.evaluating,.running{color:#8a6d00}.queued,.superseded,.cancelled{color:#666}",
        ".alert{background:#b3261e;color:#fff;padding:.75rem 1rem;font-weight:bold}.paused{color:#b3261e;font-weight:bold}",
        ".rate-limited{color:#8a6d00}.ok{color:#187a2f}",
        "</style></head><body><h1>reconix</h1>"
    ));
    // A paused forge gets no commit statuses and no hook repairs: say so before anything else.
    for f in forges.iter().filter(|f| f.paused) {
        let _ = write!(
            h,
            "<p class=\"alert\">forge {} is PAUSED: {}</p>",
            escape(&f.forge),
            escape(
                f.reason
                    .as_deref()
                    .unwrap_or("the forge rejected the token")
            )
        );
    }
    h.push_str("<h2>Evaluations</h2>");
    if list.is_empty() {
        h.push_str("<p>No evaluations yet: the loops are polling the configured branches.</p>");
    } else {
        h.push_str("<table><tr><th>#</th><th>repo</th><th>ref</th><th>rev</th><th>state</th><th>jobs</th></tr>");
        for e in list {
            let counts: Vec<String> = e
                .job_counts
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"{}\">{}</td><td>{}</td></tr>",
                e.id,
                escape(&e.repo.to_string()),
                escape(&e.ref_name),
                escape(short(&e.rev)),
                escape(e.state.as_str()),
                escape(e.state.as_str()),
                escape(&counts.join(", ")),
            );
        }
        h.push_str("</table>");
    }
    if let Some(d) = latest {
        let _ = write!(
            h,
            "<h2>Evaluation {} <small class=\"{}\">{}</small></h2>",
            d.summary.id,
            escape(d.summary.state.as_str()),
            escape(d.summary.state.as_str())
        );
        if let Some(err) = &d.error {
            let _ = write!(h, "<pre class=\"failed\">{}</pre>", escape(err));
        }
        h.push_str("<table><tr><th>attribute</th><th>state</th><th>details</th></tr>");
        for j in &d.jobs {
            let detail = match (&j.error, j.log_available) {
                (Some(err), true) => format!(
                    "{} — <a href=\"/api/v1/jobs/{}/log\">log</a>",
                    escape(err),
                    j.id
                ),
                (Some(err), false) => escape(err),
                (None, true) => format!("<a href=\"/api/v1/jobs/{}/log\">log</a>", j.id),
                (None, false) => String::new(),
            };
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td class=\"{}\">{}</td><td>{}</td></tr>",
                escape(j.attr.as_str()),
                escape(j.state.as_str()),
                escape(j.state.as_str()),
                detail
            );
        }
        h.push_str("</table>");
    }
    if !forges.is_empty() {
        h.push_str("<h2>Forges</h2><table><tr><th>forge</th><th>kind</th><th>state</th><th>reason</th></tr>");
        for f in forges {
            let state = match f.state {
                ForgeHealthState::Ok => "ok",
                ForgeHealthState::Paused => "paused",
                ForgeHealthState::RateLimited => "rate-limited",
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{state}\">{state}</td><td>{}</td></tr>",
                escape(&f.forge),
                f.kind.map_or("", |k| k.as_str()),
                escape(f.reason.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Loops</h2><table><tr><th>loop</th><th>runs</th><th>failures in a row</th><th>last error</th></tr>");
    for l in loops {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&l.name),
            l.runs,
            l.consecutive_failures,
            escape(l.last_error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_should_neutralise_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
