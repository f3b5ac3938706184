//! Server-side SVG charts: no JavaScript, and the markup can be checked in plain HTTP tests.

use std::fmt::Write;

use relay_store::dashboard::SeriesPoint;

/// Escapes text for SVG/HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 34.0;

/// A round axis maximum at or above `max`.
fn nice_max(max: i64) -> i64 {
    if max <= 5 {
        return 5;
    }
    let magnitude = 10f64.powi((max as f64).log10().floor() as i32);
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        let v = (m * magnitude) as i64;
        if v >= max {
            return v;
        }
    }
    max
}

/// Delivered (green) and failed (red) bars per step, with a labelled y axis (`unit`, e.g.
/// "events per hour") and time labels formatted by `label`.
pub fn delivered_vs_failed(
    points: &[SeriesPoint],
    unit: &str,
    label: impl Fn(i64) -> String,
) -> String {
    let mut out = String::new();
    let max = nice_max(
        points
            .iter()
            .map(|p| p.delivered.max(p.failed))
            .max()
            .unwrap_or(0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Delivered and failed events, {}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(unit)
    );
    for i in 0..=4 {
        let v = max * i / 4;
        let y = TOP + plot_h - plot_h * (v as f64) / (max as f64);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            super::views::fmt_int(v)
        );
    }
    let _ = write!(
        out,
        r#"<text class="axis unit" x="0" y="0" text-anchor="middle" transform="translate(12 {:.1}) rotate(-90)">{}</text>"#,
        TOP + plot_h / 2.0,
        escape(unit)
    );
    let n = points.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.38).max(1.0);
    let label_every = (points.len() / 6).max(1);
    for (i, p) in points.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.1;
        for (value, class, dx) in [(p.delivered, "ok", 0.0), (p.failed, "bad", bar)] {
            if value > 0 {
                let h = (plot_h * value as f64 / max as f64).max(1.0);
                let _ = write!(
                    out,
                    r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}"><title>{} {}: {}</title></rect>"#,
                    x + dx,
                    TOP + plot_h - h,
                    escape(&label(p.bucket_ms)),
                    if class == "ok" { "delivered" } else { "failed" },
                    super::views::fmt_int(value)
                );
            }
        }
        if i % label_every == 0 {
            let _ = write!(
                out,
                r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + bar,
                HEIGHT - BOTTOM + 16.0,
                escape(&label(p.bucket_ms))
            );
        }
    }
    let _ = write!(
        out,
        r#"<line class="base" x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}"/></svg>"#,
        WIDTH - RIGHT,
        TOP + plot_h,
        TOP + plot_h
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_bars_are_titled() {
        assert_eq!(nice_max(0), 5);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(130), 200);
        assert_eq!(nice_max(2_400), 2_500);
        let svg = delivered_vs_failed(
            &[SeriesPoint {
                bucket_ms: 0,
                accepted: 3,
                delivered: 3,
                failed: 1,
            }],
            "events per hour",
            |_| "00:00".into(),
        );
        assert!(svg.contains("00:00 delivered: 3"), "{svg}");
        assert!(svg.contains("00:00 failed: 1"), "{svg}");
        assert!(svg.contains(">events per hour<"), "{svg}");
    }
}
