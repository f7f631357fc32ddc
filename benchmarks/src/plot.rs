//! SVG bar charts (plotters): one bar per label, optional p95 whisker.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

pub struct Bar {
    pub label: String,
    pub value: f64,
    pub whisker: Option<f64>,
}

pub fn bars(path: &Path, title: &str, unit: &str, data: &[Bar]) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    let top = data
        .iter()
        .map(|b| b.whisker.unwrap_or(b.value).max(b.value))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15;
    let width = (160 * data.len() as u32).max(480);
    let root = SVGBackend::new(path, (width, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..data.len()).into_segmented(), 0f64..top)
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
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.value),
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
                (SegmentValue::CenterOf(i), b.value + top * 0.02),
                ("sans-serif", 13).into_font(),
            )
        }))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
