//! Self-contained SVG line charts for the lab report (no scripts, no external assets).

use std::fmt::Write as _;

use super::series::Series;

const COLORS: &[&str] = &[
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// A chart: series over time, with optional shaded time spans (e.g. "outage").
pub struct Chart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    pub spans: &'a [(f64, f64, &'a str)],
    /// Fixed y maximum; `None` scales to the data.
    pub y_max: Option<f64>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Chart<'_> {
    /// Render as an `<svg>` element 640×300.
    pub fn render(&self) -> String {
        let (w, h) = (720.0, 300.0);
        let (left, right, top, bottom) = (56.0, 230.0, 28.0, 36.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let x_max = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(1.0f64, f64::max);
        let data_max = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let y_max = self
            .y_max
            .unwrap_or_else(|| nice_ceiling(data_max.max(1e-9)));
        let sx = |x: f64| left + pw * (x / x_max);
        let sy = |y: f64| top + ph * (1.0 - (y / y_max).clamp(0.0, 1.05));
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(
            out,
            r#"<text x="{left}" y="16" font-size="13" font-weight="bold">{}</text>"#,
            escape(self.title)
        );
        for (from, to, label) in self.spans {
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{ph}" fill="#f3d9d9"/><text x="{:.1}" y="{:.1}" fill="#a33">{}</text>"##,
                sx(*from),
                (sx(*to) - sx(*from)).max(0.0),
                sx(*from) + 3.0,
                top + 12.0,
                escape(label)
            );
        }
        for i in 0..=4 {
            let y = y_max * f64::from(i) / 4.0;
            let _ = write!(
                out,
                r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                sy(y),
                sy(y),
                left - 4.0,
                sy(y) + 4.0,
                fmt_num(y)
            );
        }
        let step = nice_step(x_max / 6.0);
        let ticks = (x_max / step).floor() as u32;
        for i in 0..=ticks {
            let x = step * f64::from(i);
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}s</text>"#,
                sx(x),
                top + ph + 16.0,
                fmt_num(x)
            );
        }
        let _ = write!(
            out,
            r#"<text transform="translate(12,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + ph / 2.0,
            escape(self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS.get(i % COLORS.len()).copied().unwrap_or("#000");
            let pts: Vec<String> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            let ly = top + 14.0 * i as f64 + 8.0;
            let _ = write!(
                out,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                left + pw + 10.0,
                left + pw + 26.0,
                left + pw + 30.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        out.push_str("</svg>");
        out
    }
}

/// A round tick step (1, 2, 5 × 10^n) near `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = if raw.is_finite() && raw > 0.0 {
        raw
    } else {
        1.0
    };
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
