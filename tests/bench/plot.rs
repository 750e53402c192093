//! A small SVG line chart, for the plots of docs/PERFORMANCE.md.

use std::fmt::Write as _;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    /// SVG `stroke-dasharray` ("" for a solid line).
    pub dash: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart of `series`, axes from 0, a legend on the right.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, bottom, top, right) = (700.0, 380.0, 60.0, 40.0, 30.0, 230.0);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let max_x = all().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9) * 1.02;
    let max_y = all().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - bottom - top);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" text-anchor="middle" font-size="14">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">{y_label}</text>
"#,
        (w - right + left) / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (w - right + left) / 2.0,
        h - 5.0,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0,
    );
    for (max, horizontal) in [(max_x, true), (max_y, false)] {
        let step = nice_step(max);
        let mut v = 0.0;
        while v <= max {
            let label = if step < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            };
            if horizontal {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
                    x(v),
                    h - bottom + 15.0
                );
            } else {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{:.1}" text-anchor="end">{label}</text><line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#eee"/>"##,
                    left - 5.0,
                    y(v) + 4.0,
                    y(v),
                    w - right,
                    y(v)
                );
            }
            v += step;
        }
    }
    for (i, line) in series.iter().enumerate() {
        let points: Vec<String> = line
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}" points="{}"/>"##,
            line.color,
            line.dash,
            points.join(" ")
        );
        let ly = top + 20.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2" stroke-dasharray="{}"/><text x="{}" y="{}">{}</text>"##,
            w - right + 10.0,
            w - right + 35.0,
            line.color,
            line.dash,
            w - right + 40.0,
            ly + 4.0,
            line.name
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A step of 1, 2 or 5 times a power of ten giving 4 to 10 ticks.
fn nice_step(max: f64) -> f64 {
    let raw = max / 6.0;
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| max / s <= 8.0)
        .unwrap_or(10.0 * power)
}
