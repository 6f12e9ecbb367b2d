//! The chart of a queue drained under autoscaling: the messages not completed (left axis), the
//! desired and the ready replicas (right axis), against seconds. The benchmark's row 7 draws
//! `docs/burst-drain.svg` with it from a real run, `devstack plan --svg` from a planned one.
//! Hand-written SVG: three polylines and their axes are not worth a crate.

use std::fmt::Write as _;

/// One point of a timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the start of the chart.
    pub at: f64,
    /// Messages not completed: waiting or held by a consumer (what KEDA reads).
    pub queue: u64,
    /// The Deployment's desired replicas.
    pub replicas: u64,
    /// Replicas taking messages.
    pub ready: u64,
}

/// What to draw.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    pub title: &'a str,
    /// What the seconds count from: `seconds after the POST (full scale)`.
    pub x_label: &'a str,
    pub points: &'a [Point],
    /// The x axis reaches at least this far (the drain time).
    pub until: f64,
    /// The ideal drain time, marked with a dashed line.
    pub ideal: f64,
    /// The left axis reaches at least this high (the burst's size).
    pub queue_max: u64,
    /// The right axis reaches at least this high (maxReplicaCount).
    pub replicas_max: u64,
}

/// More points than this are thinned (a day of traffic has hundreds of thousands): each span of
/// the x axis keeps its highest queue and replica counts, so no peak goes missing.
const MOST_POINTS: usize = 2000;

/// The chart as an SVG document.
pub fn svg(chart: &Chart<'_>) -> String {
    const W: f64 = 720.0;
    const H: f64 = 380.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 60.0;
    const TOP: f64 = 36.0;
    const BOTTOM: f64 = 74.0;
    let points = thinned(chart.points, chart.until.max(chart.ideal));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let t_max = chart.until.max(chart.ideal).max(1.0);
    let t_step = nice_step(t_max / 8.0);
    let t_max = (t_max / t_step).ceil() * t_step;
    let queue_max = chart.queue_max.max(1) as f64;
    let q_step = nice_step(queue_max / 5.0);
    let q_max = (queue_max / q_step).ceil() * q_step;
    let replicas_max = chart.replicas_max.max(1) as f64;
    let r_step = nice_step(replicas_max / 5.0).max(1.0);
    let r_max = (replicas_max / r_step).ceil() * r_step;
    let x = |t: f64| LEFT + t / t_max * pw;
    let yq = |q: f64| TOP + ph - q / q_max * ph;
    let yr = |r: f64| TOP + ph - r / r_max * ph;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(chart.title)
    );
    // Axes and grid.
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{} H{}" fill="none" stroke="#333"/>"##,
        TOP + ph,
        LEFT + pw
    );
    let _ = writeln!(
        svg,
        r##"<path d="M{},{TOP} V{}" fill="none" stroke="#333"/>"##,
        LEFT + pw,
        TOP + ph
    );
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(t),
            TOP + ph,
            TOP + ph + 16.0,
            t
        );
        t += t_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        TOP + ph + 34.0,
        escape(chart.x_label)
    );
    let mut q = 0.0;
    while q <= q_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#1f77b4">{q}</text>"##,
            LEFT - 6.0,
            yq(q) + 4.0
        );
        q += q_step;
    }
    let mut r = 0.0;
    while r <= r_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" fill="#d62728">{r}</text>"##,
            LEFT + pw + 6.0,
            yr(r) + 4.0
        );
        r += r_step;
    }
    // The ideal: every replica from the first moment.
    let _ = writeln!(
        svg,
        r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#2ca02c" stroke-dasharray="4 3"/><text x="{2:.1}" y="{3}" fill="#2ca02c">ideal {4} s</text>"##,
        x(chart.ideal),
        TOP + ph,
        x(chart.ideal) + 4.0,
        TOP + 12.0,
        chart.ideal
    );
    let line = |points: Vec<(f64, f64)>, colour: &str, dash: &str| {
        let d: Vec<String> = points
            .iter()
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        format!(
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            d.join(" ")
        )
    };
    // Replicas change in steps: each value holds until the next sample.
    let steps_of = |value: fn(&Point) -> u64| {
        let mut steps = Vec::new();
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                steps.push((x(p.at), yr(value(&points[i - 1]) as f64)));
            }
            steps.push((x(p.at), yr(value(p) as f64)));
        }
        steps
    };
    let queue: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (x(p.at), yq(p.queue as f64)))
        .collect();
    let _ = writeln!(svg, "{}", line(queue, "#1f77b4", ""));
    let _ = writeln!(svg, "{}", line(steps_of(|p| p.replicas), "#d62728", ""));
    let _ = writeln!(
        svg,
        "{}",
        line(
            steps_of(|p| p.ready),
            "#ff9896",
            r#" stroke-dasharray="5 3""#
        )
    );
    // Legend, in one row under the plot.
    let legend = [
        ("#1f77b4", "", "messages not completed (left axis)"),
        ("#d62728", "", "desired replicas (right axis)"),
        ("#ff9896", r#" stroke-dasharray="5 3""#, "ready replicas"),
    ];
    for (i, (colour, dash, label)) in legend.iter().enumerate() {
        let y = H - 14.0;
        let lx = LEFT + [0.0, 250.0, 450.0][i];
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            y + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// `points` as they are, or, past [`MOST_POINTS`], one point per span of `until / MOST_POINTS`
/// seconds: at the span's first time, with the highest counts seen in it.
fn thinned(points: &[Point], until: f64) -> Vec<Point> {
    if points.len() <= MOST_POINTS {
        return points.to_vec();
    }
    let span = until.max(1.0) / MOST_POINTS as f64;
    let mut out: Vec<Point> = Vec::with_capacity(MOST_POINTS + 1);
    for p in points {
        match out.last_mut() {
            Some(last) if p.at < last.at + span => {
                last.queue = last.queue.max(p.queue);
                last.replicas = last.replicas.max(p.replicas);
                last.ready = last.ready.max(p.ready);
            }
            _ => out.push(*p),
        }
    }
    out
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: f64, queue: u64, replicas: u64) -> Point {
        Point {
            at,
            queue,
            replicas,
            ready: replicas,
        }
    }

    #[test]
    fn the_chart_has_its_title_axes_ideal_and_three_lines() {
        let points = [point(0.0, 50, 0), point(2.0, 50, 1), point(30.0, 0, 10)];
        let svg = svg(&Chart {
            title: "50 messages <plan>",
            x_label: "seconds",
            points: &points,
            until: 30.0,
            ideal: 25.0,
            queue_max: 50,
            replicas_max: 10,
        });
        assert!(
            svg.starts_with("<svg ") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        assert!(svg.contains("50 messages &lt;plan&gt;"), "{svg}");
        assert!(svg.contains("ideal 25 s"), "{svg}");
        assert_eq!(svg.matches("<polyline ").count(), 3, "{svg}");
    }

    #[test]
    fn many_points_are_thinned_keeping_each_spans_peak() {
        let mut points: Vec<Point> = (0..100_000u32)
            .map(|i| point(f64::from(i), u64::from(i % 7), 3))
            .collect();
        points[54_321].queue = 999;
        let kept = thinned(&points, 100_000.0);
        assert!(kept.len() <= MOST_POINTS + 1, "{}", kept.len());
        assert_eq!(kept.iter().map(|p| p.queue).max(), Some(999));
        assert_eq!(thinned(&points[..10], 10.0), points[..10].to_vec());
    }
}
