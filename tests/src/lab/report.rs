//! The lab's outputs: a terminal table, a self-contained HTML report and a Markdown summary.

use std::fmt::Write as _;
use std::path::Path;

/// One measured figure of one variant.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub value: String,
}

/// One way of running a scenario (no protection, Envoy native, the pack…).
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub figures: Vec<Figure>,
}

/// A pass criterion and whether it held.
#[derive(Clone, Debug)]
pub struct Criterion {
    pub description: String,
    pub passed: bool,
}

/// Everything a scenario reports.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: String,
    pub story: String,
    pub variants: Vec<Variant>,
    pub criteria: Vec<Criterion>,
    /// Rendered SVG charts.
    pub charts: Vec<String>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.criteria.iter().all(|c| c.passed)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The table printed at the end of a lab run.
pub fn terminal_table(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(
            out,
            "\n{} — {}",
            r.name,
            if r.passed() { "PASS" } else { "FAIL" }
        );
        let names: Vec<&str> = r
            .variants
            .first()
            .map(|v| v.figures.iter().map(|f| f.name.as_str()).collect())
            .unwrap_or_default();
        let _ = write!(out, "  {:<28}", "variant");
        for n in &names {
            let _ = write!(out, " {:>20}", truncate(n, 20));
        }
        out.push('\n');
        for v in &r.variants {
            let _ = write!(out, "  {:<28}", truncate(&v.name, 28));
            for f in &v.figures {
                let _ = write!(out, " {:>20}", truncate(&f.value, 20));
            }
            out.push('\n');
        }
        for c in &r.criteria {
            let _ = writeln!(
                out,
                "  [{}] {}",
                if c.passed { "ok" } else { "MISSED" },
                c.description
            );
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars()
            .take(n.saturating_sub(1))
            .chain(std::iter::once('…'))
            .collect()
    }
}

/// The self-contained HTML report.
pub fn html(reports: &[ScenarioReport], title: &str, generated: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}.pass{{color:#2a7a2a}}.fail{{color:#b22}}\
         </style></head><body><h1>{t}</h1><p>{g}</p>",
        t = escape(title),
        g = escape(generated)
    );
    for r in reports {
        let _ = write!(
            out,
            "<h2>{} <span class=\"{}\">{}</span></h2><p>{}</p><table><tr><th>variant</th>",
            escape(&r.name),
            if r.passed() { "pass" } else { "fail" },
            if r.passed() { "PASS" } else { "FAIL" },
            escape(&r.story)
        );
        if let Some(v) = r.variants.first() {
            for f in &v.figures {
                let _ = write!(out, "<th>{}</th>", escape(&f.name));
            }
        }
        out.push_str("</tr>");
        for v in &r.variants {
            let _ = write!(out, "<tr><td>{}</td>", escape(&v.name));
            for f in &v.figures {
                let _ = write!(out, "<td>{}</td>", escape(&f.value));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table><ul>");
        for c in &r.criteria {
            let _ = write!(
                out,
                "<li class=\"{}\">{} {}</li>",
                if c.passed { "pass" } else { "fail" },
                if c.passed { "✔" } else { "✘" },
                escape(&c.description)
            );
        }
        out.push_str("</ul>");
        for chart in &r.charts {
            out.push_str(chart);
        }
    }
    out.push_str("</body></html>");
    out
}

/// A Markdown summary (headline figures) for the README.
pub fn markdown(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(
            out,
            "**{}** — {}",
            r.name,
            if r.passed() { "pass" } else { "FAIL" }
        );
        out.push('\n');
        let names: Vec<&str> = r
            .variants
            .first()
            .map(|v| v.figures.iter().map(|f| f.name.as_str()).collect())
            .unwrap_or_default();
        let _ = writeln!(out, "| variant | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(names.len()));
        for v in &r.variants {
            let vals: Vec<&str> = v.figures.iter().map(|f| f.value.as_str()).collect();
            let _ = writeln!(out, "| {} | {} |", v.name, vals.join(" | "));
        }
        out.push('\n');
        for c in &r.criteria {
            let _ = writeln!(
                out,
                "- {} {}",
                if c.passed { "✔" } else { "✘" },
                c.description
            );
        }
        out.push('\n');
    }
    out
}

/// Write `text` to `path`, creating parent directories.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}
