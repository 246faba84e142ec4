//! Minimal SVG charts for the HTML report: scatter/line charts with axes and legends, and
//! horizontal stacked bars. Written by hand rather than with plotters because plotters needs a
//! font backend (system fonts through font-kit, or an embedded font file) to lay out any text,
//! even in SVG; these four chart types need only a few primitives and stay deterministic.

use std::fmt::Write;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
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

/// A categorical palette (colour-blind friendly, Okabe–Ito).
pub const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];

/// One series of points.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y, tooltip).
    pub points: Vec<(f64, f64, String)>,
    /// Draw a line through the points (in x order).
    pub line: bool,
    /// Dashed line.
    pub dashed: bool,
    /// Hollow markers (outlined circles), e.g. for modelled rather than measured values.
    pub hollow: bool,
    /// Colour.
    pub color: String,
}

/// A chart of series on linear axes.
pub struct Chart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Series.
    pub series: Vec<Series>,
}

const W: f64 = 560.0;
const H: f64 = 340.0;
const L: f64 = 60.0;
const R: f64 = 160.0;
const T: f64 = 30.0;
const B: f64 = 45.0;

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    // Room for markers (3.5 px) and their outline at both ends of a ~270 px axis.
    let pad = (hi - lo) * 0.08;
    (lo - pad, hi + pad)
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(raw);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + 1e-12 {
        out.push(t);
        t += step;
    }
    out
}

impl Chart {
    /// Renders the chart as an inline `<svg>` element.
    pub fn render(&self) -> String {
        let pts = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = range(pts().map(|p| p.0));
        let (y0, y1) = range(pts().map(|p| p.1));
        let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
        let sy = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
        let mut s = String::new();
        let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#);
        let _ = write!(s, r#"<text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#, (W - R + L) / 2.0, esc(&self.title));
        for t in ticks(x0, x1) {
            let x = sx(t);
            let _ = write!(s, r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##, H - B, H - B + 14.0, fmt_tick(t));
        }
        for t in ticks(y0, y1) {
            let y = sy(t);
            let _ = write!(s, r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##, W - R, L - 4.0, y + 4.0, fmt_tick(t));
        }
        let _ = write!(s, r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#999"/>"##, W - L - R, H - T - B);
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (W - R + L) / 2.0, H - 8.0, esc(&self.x_label));
        let _ = write!(s, r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"#, (H - B + T) / 2.0, esc(&self.y_label));
        for (i, ser) in self.series.iter().enumerate() {
            if ser.line && ser.points.len() > 1 {
                let mut p = ser.points.clone();
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                let path: Vec<String> = p.iter().map(|(x, y, _)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
                let dash = if ser.dashed { r#" stroke-dasharray="5,4""# } else { "" };
                let _ = write!(s, r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"{dash}/>"#, path.join(" "), ser.color);
            }
            let fill = if ser.hollow { "#fff" } else { ser.color.as_str() };
            for (x, y, tip) in &ser.points {
                let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{}" stroke-width="1.5"><title>{}</title></circle>"#, sx(*x), sy(*y), ser.color, esc(tip));
            }
            // Legend: a short line in the series' style (when it has one) through its marker.
            let ly = T + 10.0 + i as f64 * 16.0;
            let lx = W - R + 8.0;
            if ser.line {
                let dash = if ser.dashed { r#" stroke-dasharray="4,3""# } else { "" };
                let _ = write!(s, r#"<line x1="{lx}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{}" stroke-width="1.5"{dash}/>"#, ly - 4.0, lx + 16.0, ly - 4.0, ser.color);
            }
            let _ = write!(s, r#"<circle cx="{}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{}" stroke-width="1.5"/><text x="{}" y="{}">{}</text>"#, lx + 8.0, ly - 4.0, ser.color, lx + 22.0, ly, esc(&ser.label));
        }
        s.push_str("</svg>");
        s
    }
}

fn fmt_tick(t: f64) -> String {
    if t.abs() >= 100.0 || t == 0.0 {
        format!("{t:.0}")
    } else if t.abs() >= 1.0 {
        format!("{t:.1}")
    } else {
        format!("{t:.3}").trim_end_matches('0').to_string()
    }
}

/// Horizontal stacked bars: one row per label, segments (value, colour, legend name).
pub fn stacked_bars(title: &str, unit: &str, rows: &[(String, Vec<f64>)], parts: &[(&str, &str)]) -> String {
    let row_h = 18.0;
    let h = T + 20.0 + rows.len() as f64 * (row_h + 4.0) + 30.0;
    let left = 190.0;
    let width = 290.0;
    let max = rows.iter().map(|r| r.1.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-12);
    let mut s = String::new();
    let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h}" width="{W}" height="{h}" font-family="sans-serif" font-size="11">"#);
    let _ = write!(s, r#"<text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#, W / 2.0, esc(title));
    for (i, (name, color)) in parts.iter().enumerate() {
        let x = left + i as f64 * 110.0;
        let _ = write!(s, r#"<rect x="{x}" y="26" width="10" height="10" fill="{color}"/><text x="{}" y="35">{}</text>"#, x + 14.0, esc(name));
    }
    for (r, (label, vals)) in rows.iter().enumerate() {
        let y = T + 20.0 + r as f64 * (row_h + 4.0);
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 6.0, y + 13.0, esc(label));
        let mut x = left;
        for (v, (name, color)) in vals.iter().zip(parts) {
            let w = v / max * width;
            let _ = write!(s, r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{row_h}" fill="{color}"><title>{}: {v:.4} {}</title></rect>"#, esc(name), esc(unit));
            x += w;
        }
        let _ = write!(s, r#"<text x="{:.1}" y="{}">{:.3} {}</text>"#, x + 4.0, y + 13.0, vals.iter().sum::<f64>(), esc(unit));
    }
    s.push_str("</svg>");
    s
}

/// Vertical bars of a histogram (counts per layer 1..=L, bar `i` in `colors[i]`), each labelled
/// with its share of all tokens.
pub fn histogram(title: &str, counts: &[u64], colors: &[String]) -> String {
    let total = counts.iter().sum::<u64>().max(1) as f64;
    let (w, h) = (300.0, 200.0);
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = (w - 50.0) / counts.len().max(1) as f64;
    let mut s = String::new();
    let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="10">"#);
    let _ = write!(s, r#"<text x="{}" y="14" text-anchor="middle" font-size="12" font-weight="bold">{}</text>"#, w / 2.0, esc(title));
    for (i, &c) in counts.iter().enumerate() {
        let bh = c as f64 / max * (h - 60.0);
        let x = 30.0 + i as f64 * bw;
        let y = h - 25.0 - bh;
        let color = colors.get(i).map(String::as_str).unwrap_or(PALETTE[0]);
        let share = 100.0 * c as f64 / total;
        let _ = write!(s, r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{color}" stroke="#888" stroke-width="0.5"><title>layer {}: {c} tokens</title></rect><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bw - 4.0, i + 1, x + (bw - 4.0) / 2.0, h - 12.0, i + 1);
        if c > 0 {
            let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{share:.0}%</text>"#, x + (bw - 4.0) / 2.0, y - 3.0);
        }
    }
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">exit layer</text></svg>"#, w / 2.0, h - 1.0);
    s
}
