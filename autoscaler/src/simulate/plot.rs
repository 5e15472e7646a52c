//! The PNG: one panel per policy, stacked, on the same axes. Each shows the queue depth
//! (shaded, right axis) and the desired and ready replicas (left axis) over time.
//!
//! Text goes through `ab_glyph` with a TrueType font read at run time and registered as
//! plotters' `sans-serif` family, so no system font library is needed.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::SimulateError;
use super::pods::Sample;

/// Size of the image in pixels.
pub const SIZE: (u32, u32) = (1400, 900);

/// One panel: a title and a run's samples.
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    /// Shown above the panel.
    pub title: &'a str,
    /// The run's state over time.
    pub samples: &'a [Sample],
}

const DEPTH: RGBColor = RGBColor(230, 120, 30);
const DESIRED: RGBColor = RGBColor(31, 90, 180);
const READY: RGBColor = RGBColor(60, 170, 60);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Draws `panels` under `title` into the PNG at `path`, with `max_replicas` as the top of
/// the replica axis and time running to `end`.
pub fn draw(
    path: &Path,
    font: &Path,
    title: &str,
    panels: &[Panel<'_>],
    max_replicas: u32,
    end: Duration,
) -> Result<(), SimulateError> {
    register(font)?;
    let failed = |error: &dyn std::fmt::Display| SimulateError::Plot {
        path: path.to_owned(),
        message: error.to_string(),
    };
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let body = root
        .titled(title, ("sans-serif", 24).into_font().color(&BLACK))
        .map_err(|e| failed(&e))?;
    let end_min = (end.as_secs_f64() / 60.0).max(1.0 / 60.0);
    let depth_max = panels
        .iter()
        .flat_map(|p| p.samples.iter().map(|s| s.depth))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.05;
    // Headroom above the maximum for the legend.
    let replicas_max = f64::from(max_replicas) * 1.3 + 1.0;
    for (area, panel) in body.split_evenly((panels.len().max(1), 1)).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 19))
            .margin_left(15)
            .margin_right(15)
            .margin_top(8)
            .margin_bottom(4)
            .x_label_area_size(42)
            .y_label_area_size(55)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0f64..end_min, 0f64..replicas_max)
            .map_err(|e| failed(&e))?
            .set_secondary_coord(0f64..end_min, 0f64..depth_max);
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .x_desc("time (minutes)")
            .y_desc("replicas")
            .x_labels(16)
            .y_labels(usize::try_from(max_replicas).unwrap_or(10).min(20) + 2)
            .x_label_formatter(&|m| format!("{m:.0}"))
            .y_label_formatter(&|r| {
                // No labels in the legend's headroom.
                if *r <= f64::from(max_replicas) {
                    format!("{r:.0}")
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| failed(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("queue depth (envelopes)")
            .y_labels(8)
            .y_label_formatter(&|d| format!("{d:.0}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| failed(&e))?;

        let width = usize::try_from(SIZE.0).unwrap_or(1400);
        let depth = depth_outline(panel.samples, end, width);
        let mut area_points = vec![(0.0, 0.0)];
        area_points.extend(depth.iter().copied());
        area_points.push((end_min, 0.0));
        chart
            .draw_secondary_series(std::iter::once(Polygon::new(
                area_points,
                DEPTH.mix(0.3).filled(),
            )))
            .map_err(|e| failed(&e))?
            .label("queue depth (right axis)")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 22, y + 6)], DEPTH.mix(0.5).filled()));
        chart
            .draw_secondary_series(LineSeries::new(depth, DEPTH.stroke_width(1)))
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(LineSeries::new(
                steps(panel.samples, end, |s| s.ready),
                READY.stroke_width(5),
            ))
            .map_err(|e| failed(&e))?
            .label("ready replicas")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], READY.stroke_width(5)));
        chart
            .draw_series(LineSeries::new(
                steps(panel.samples, end, |s| s.desired),
                DESIRED.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label("desired replicas")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], DESIRED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

/// Registers the font at `path` as `sans-serif`, once per process (plotters keeps the
/// bytes for the life of the program).
fn register(path: &Path) -> Result<(), SimulateError> {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    let bytes = std::fs::read(path).map_err(|source| SimulateError::ReadFont {
        path: path.to_owned(),
        source,
    })?;
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| SimulateError::InvalidFont {
        path: path.to_owned(),
    })?;
    let _ = REGISTERED.set(());
    Ok(())
}

/// A step function of `value` over the samples, in (minutes, value) points, to `end`.
fn steps(samples: &[Sample], end: Duration, value: impl Fn(&Sample) -> u32) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for sample in samples {
        let (t, v) = (minutes(sample.at), f64::from(value(sample)));
        match points.last() {
            Some(&(_, previous)) if previous == v => continue,
            Some(&(_, previous)) => points.push((t, previous)),
            None => {}
        }
        points.push((t, v));
    }
    if let Some(&(_, last)) = points.last() {
        points.push((minutes(end), last));
    }
    points
}

/// The highest depth in each of `buckets` equal slices of `[0, end]`, as a step outline
/// in (minutes, depth) points: a pixel column's peak survives, the noise of thousands of
/// arrivals and completions does not.
fn depth_outline(samples: &[Sample], end: Duration, buckets: usize) -> Vec<(f64, f64)> {
    let buckets = buckets.max(1);
    let width = end.as_secs_f64() / buckets as f64;
    let mut points = Vec::with_capacity(2 * buckets);
    // The sample in force at the start of the bucket.
    let mut current = 0;
    let mut next = 0;
    for bucket in 0..buckets {
        let (low, high) = (bucket as f64 * width, (bucket + 1) as f64 * width);
        let mut peak = samples
            .get(current)
            .filter(|s| s.at.as_secs_f64() <= low)
            .map_or(0, |s| s.depth);
        while let Some(sample) = samples.get(next)
            && sample.at.as_secs_f64() < high
        {
            peak = peak.max(sample.depth);
            current = next;
            next += 1;
        }
        points.push((low / 60.0, peak as f64));
        points.push((high / 60.0, peak as f64));
    }
    points
}

fn minutes(d: Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, depth: u64, desired: u32, ready: u32) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            depth,
            desired,
            ready,
        }
    }

    #[test]
    fn steps_hold_each_value_until_the_next_change() {
        let samples = [sample(0, 0, 0, 0), sample(60, 5, 2, 0), sample(120, 9, 2, 2)];
        let points = steps(&samples, Duration::from_secs(240), |s| s.desired);
        assert_eq!(points, vec![(0.0, 0.0), (1.0, 0.0), (1.0, 2.0), (4.0, 2.0)]);
    }

    #[test]
    fn the_depth_outline_keeps_each_slice_peak() {
        let samples = [
            sample(0, 0, 0, 0),
            sample(10, 7, 0, 0),
            sample(11, 2, 0, 0),
            sample(50, 0, 0, 0),
        ];
        let points = depth_outline(&samples, Duration::from_secs(60), 3);
        let peaks: Vec<f64> = points.iter().step_by(2).map(|p| p.1).collect();
        // [0, 20): peak 7; [20, 40): 2 carries on; [40, 60): 2 until 50.
        assert_eq!(peaks, vec![7.0, 2.0, 2.0]);
    }
}
