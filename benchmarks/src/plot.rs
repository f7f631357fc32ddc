//! SVG bar charts (plotters): one bar per label, optional p95 whisker.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub struct Bar {
    pub label: String,
    pub value: f64,
    pub whisker: Option<f64>,
}

/// Bars on a linear axis, or on a log axis when they differ by more than
/// 10x (a linear one would flatten the small ones to nothing). Each label
/// sits above its bar's whisker.
pub fn bars(path: &Path, title: &str, unit: &str, data: &[Bar]) -> Result<()> {
    let high = data
        .iter()
        .map(|b| b.whisker.unwrap_or(b.value).max(b.value))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let low = data
        .iter()
        .map(|b| b.value)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    if low.is_finite() && high / low > 10.0 {
        let (bottom, top) = (low / 2.0, high * 2.0);
        draw(
            path,
            title,
            &format!("{unit} (log scale)"),
            data,
            (bottom..top).log_scale(),
            bottom,
            |v| v * 1.05,
        )
    } else {
        let top = high * 1.15;
        draw(path, title, unit, data, 0f64..top, 0.0, |v| v + top * 0.01)
    }
}

fn draw<Y>(
    path: &Path,
    title: &str,
    unit: &str,
    data: &[Bar],
    y: Y,
    bottom: f64,
    above: impl Fn(f64) -> f64,
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    // Wide enough per bar that its label (about 7 px a character at
    // this size) does not run into the next one.
    let longest = data.iter().map(|b| b.label.len()).max().unwrap_or(0) as u32;
    let width = ((7 * longest + 24).max(160) * data.len() as u32).max(480);
    let root = SVGBackend::new(path, (width, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..data.len()).into_segmented(), y)
        .map_err(|x| e(&x))?;
    let labels: Vec<String> = data.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(data.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(unit)
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(data.iter().enumerate().map(|(i, b)| {
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), bottom),
                    (SegmentValue::Exact(i + 1), b.value.max(bottom)),
                ],
                Palette99::pick(i).mix(0.85).filled(),
            );
            r.set_margin(0, 0, 14, 14);
            r
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(data.iter().enumerate().filter_map(|(i, b)| {
            let w = b.whisker?;
            Some(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), b.value),
                    (SegmentValue::CenterOf(i), w),
                ],
                BLACK.stroke_width(2),
            ))
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(data.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!("{:.1}", b.value),
                (
                    SegmentValue::CenterOf(i),
                    above(b.whisker.unwrap_or(b.value).max(b.value)),
                ),
                TextStyle::from(("sans-serif", 13).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
