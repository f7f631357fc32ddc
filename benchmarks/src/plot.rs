//! Horizontal bar charts as SVG, laid out for a page 800 px wide: a label
//! column sized to the longest label, one bar a row with its value (and
//! its ratio to the plot's reference) written after it, a one-line caption
//! under the title saying what was measured and on what, and at most six
//! grid lines. The layout is computed first, text boxes included, so that
//! tests can check that nothing overlaps or leaves the page.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub struct Bar {
    pub label: String,
    pub value: f64,
    /// An upper mark (p95, p99) drawn as a whisker past the bar's end.
    pub whisker: Option<f64>,
    /// The bar over the plot's reference (the caption names it).
    pub ratio: Option<f64>,
    /// Bars of one series share a color; by default each bar is its own.
    pub series: Option<usize>,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: f64) -> Bar {
        Bar {
            label: label.into(),
            value,
            whisker: None,
            ratio: None,
            series: None,
        }
    }

    pub fn series(mut self, series: usize) -> Bar {
        self.series = Some(series);
        self
    }

    pub fn whisker(mut self, whisker: f64) -> Bar {
        self.whisker = Some(whisker).filter(|w| w.is_finite());
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Bar {
        self.ratio = Some(ratio).filter(|r| r.is_finite());
        self
    }
}

pub struct Plot<'a> {
    pub title: &'a str,
    /// What was measured and on what, in one line.
    pub caption: &'a str,
    pub unit: &'a str,
    pub bars: &'a [Bar],
}

pub const WIDTH: f64 = 800.0;
const MARGIN: f64 = 16.0;
const TITLE_SIZE: f64 = 16.0;
const CAPTION_SIZE: f64 = 12.0;
const TEXT_SIZE: f64 = 13.0;
const ROW: f64 = 26.0;
const BAR: f64 = 16.0;
const LABEL_COLUMN_MAX: f64 = 400.0;
const FONT: &str = "DejaVu Sans, Verdana, sans-serif";
const COLORS: [&str; 6] = [
    "#3b6ea5", "#d9822b", "#4f9a57", "#b5485d", "#7a5ea8", "#8a7f4a",
];

/// A piece of text where the layout put it: `x`, `y` its box's top left
/// corner; `anchor_end` when `x + width` is where it is anchored.
#[derive(Debug, Clone)]
pub struct TextBox {
    pub text: String,
    pub size: f64,
    pub bold: bool,
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub anchor_end: bool,
    pub fill: &'static str,
}

impl TextBox {
    fn new(text: String, size: f64, bold: bool, x: f64, y: f64, anchor_end: bool) -> TextBox {
        let width = text_width(&text, size, bold);
        TextBox {
            x: if anchor_end { x - width } else { x },
            y,
            width,
            height: size * 1.25,
            text,
            size,
            bold,
            anchor_end,
            fill: "#222",
        }
    }

    fn overlaps(&self, o: &TextBox) -> bool {
        self.x < o.x + o.width
            && o.x < self.x + self.width
            && self.y < o.y + o.height
            && o.y < self.y + self.height
    }
}

/// Every element of a plot, in pixels.
#[derive(Debug)]
pub struct Layout {
    pub height: f64,
    pub texts: Vec<TextBox>,
    /// x, y, width, height, color index.
    bars: Vec<(f64, f64, f64, f64, usize)>,
    /// x from, x to, y.
    whiskers: Vec<(f64, f64, f64)>,
    /// x of each grid line, from `top` to `bottom`.
    grid: Vec<f64>,
    top: f64,
    bottom: f64,
}

/// A width no rendering of `text` exceeds, in DejaVu Sans (Debian's
/// default sans, and wider than most): advances by class of character,
/// rounded up. The tests render every text of the real plots with
/// rsvg-convert and check the ink stays inside this width.
pub fn text_width(text: &str, size: f64, bold: bool) -> f64 {
    let em: f64 = text
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' | 'I' => 0.32,
            ' ' | 'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '/' | '-' => 0.42,
            'm' | 'w' | 'M' | 'W' | '%' | '@' => 1.0,
            c if c.is_ascii_uppercase() => 0.78,
            c if c.is_ascii() => 0.64,
            _ => 1.0,
        })
        .sum();
    em * size * if bold { 1.12 } else { 1.0 }
}

/// 1, 2 or 5 times a power of ten: grid steps a reader adds up at a glance.
fn nice_step(range: f64, most: usize) -> f64 {
    let rough = range / most as f64;
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| range / s <= most as f64)
        .unwrap_or(10.0 * power)
}

fn number(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn value_text(b: &Bar, unit: &str) -> String {
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    match &b.ratio {
        Some(r) => format!("{}{unit} · {r:.2}x", number(b.value)),
        None => format!("{}{unit}", number(b.value)),
    }
}

pub fn layout(p: &Plot) -> Result<Layout> {
    if p.bars.is_empty() {
        bail!("plot {:?}: no bars", p.title);
    }
    let mut texts = vec![
        TextBox::new(p.title.into(), TITLE_SIZE, true, MARGIN, MARGIN, false),
        TextBox::new(p.caption.into(), CAPTION_SIZE, false, MARGIN, 40.0, false),
    ];
    texts[1].fill = "#555";
    let label_column = p
        .bars
        .iter()
        .map(|b| text_width(&b.label, TEXT_SIZE, false))
        .fold(0.0, f64::max)
        .min(LABEL_COLUMN_MAX);
    let values: Vec<String> = p.bars.iter().map(|b| value_text(b, p.unit)).collect();
    let value_room = values
        .iter()
        .map(|v| text_width(v, TEXT_SIZE, false))
        .fold(0.0, f64::max)
        + 8.0;
    let x0 = MARGIN + label_column + 10.0;
    let x1 = WIDTH - MARGIN - value_room;
    if x1 - x0 < 120.0 {
        bail!(
            "plot {:?}: labels and values leave {:.0} px for the bars",
            p.title,
            x1 - x0
        );
    }
    let high = p
        .bars
        .iter()
        .map(|b| b.whisker.unwrap_or(0.0).max(b.value))
        .fold(0.0, f64::max);
    let step = nice_step(high.max(f64::MIN_POSITIVE), 5);
    let top_value = (high / step).ceil().max(1.0) * step;
    let scale = (x1 - x0) / top_value;
    let top = 66.0;
    let mut bars = Vec::new();
    let mut whiskers = Vec::new();
    for (i, (b, value)) in p.bars.iter().zip(values).enumerate() {
        let row = top + i as f64 * ROW;
        let mid = row + ROW / 2.0;
        let end = x0 + b.value.max(0.0) * scale;
        bars.push((
            x0,
            mid - BAR / 2.0,
            (end - x0).max(1.0),
            BAR,
            b.series.unwrap_or(i),
        ));
        let mut after = end;
        if let Some(w) = b.whisker.filter(|w| *w > b.value) {
            let w = x0 + w * scale;
            whiskers.push((end, w, mid));
            after = w;
        }
        let text_y = mid - TEXT_SIZE * 0.625;
        let mut label = TextBox::new(b.label.clone(), TEXT_SIZE, false, x0 - 10.0, text_y, true);
        if label.width > label_column {
            bail!(
                "plot {:?}: label {:?} is wider than the label column; shorten it",
                p.title,
                b.label
            );
        }
        label.x = label.x.max(MARGIN);
        texts.push(label);
        texts.push(TextBox::new(
            value,
            TEXT_SIZE,
            false,
            after + 6.0,
            text_y,
            false,
        ));
    }
    let bottom = top + p.bars.len() as f64 * ROW;
    let mut grid = Vec::new();
    let mut v = 0.0;
    while v <= top_value + step / 2.0 {
        let x = x0 + v * scale;
        grid.push(x);
        let tick_text = if step >= 1.0 {
            format!("{v:.0}")
        } else {
            number(v)
        };
        let mut tick = TextBox::new(tick_text, CAPTION_SIZE, false, x, bottom + 4.0, false);
        tick.x -= tick.width / 2.0;
        tick.fill = "#555";
        texts.push(tick);
        v += step;
    }
    let mut unit = TextBox::new(p.unit.into(), CAPTION_SIZE, false, x1, bottom + 22.0, true);
    unit.fill = "#555";
    texts.push(unit);
    let l = Layout {
        height: (bottom + 22.0 + CAPTION_SIZE * 1.25 + MARGIN).ceil(),
        texts,
        bars,
        whiskers,
        grid,
        top,
        bottom,
    };
    l.check().with_context(|| format!("plot {:?}", p.title))?;
    Ok(l)
}

impl Layout {
    /// Every text inside the page, none over another or over a bar.
    fn check(&self) -> Result<()> {
        for (i, a) in self.texts.iter().enumerate() {
            if a.x < 0.0 || a.x + a.width > WIDTH || a.y < 0.0 || a.y + a.height > self.height {
                bail!("{:?} does not fit in the page; shorten it", a.text);
            }
            if let Some(b) = self.texts[i + 1..].iter().find(|b| a.overlaps(b)) {
                bail!("{:?} runs into {:?}; shorten one", a.text, b.text);
            }
            let covered = self.bars.iter().any(|(x, y, w, h, _)| {
                a.x < x + w && *x < a.x + a.width && a.y < y + h && *y < a.y + a.height
            });
            if covered {
                bail!("a bar covers {:?}", a.text);
            }
        }
        Ok(())
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One text element as the plot writes it (the tests render it alone).
pub fn svg_text(t: &TextBox) -> String {
    let (x, anchor) = if t.anchor_end {
        (t.x + t.width, "end")
    } else {
        (t.x, "start")
    };
    // The baseline sits at 80% of the box: ascenders above, descenders below.
    format!(
        "<text x=\"{x:.1}\" y=\"{:.1}\" font-family=\"{FONT}\" font-size=\"{}\"{} text-anchor=\"{anchor}\" fill=\"{}\">{}</text>\n",
        t.y + t.height * 0.8,
        t.size,
        if t.bold { " font-weight=\"bold\"" } else { "" },
        t.fill,
        escape(&t.text)
    )
}

pub fn svg(l: &Layout) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h}\" viewBox=\"0 0 {WIDTH} {h}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        h = l.height
    );
    for x in &l.grid {
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            l.top, l.bottom
        );
    }
    for (x, y, w, h, i) in &l.bars {
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{}\"/>",
            COLORS[i % COLORS.len()]
        );
    }
    for (from, to, y) in &l.whiskers {
        let _ = writeln!(
            s,
            "<line x1=\"{from:.1}\" y1=\"{y:.1}\" x2=\"{to:.1}\" y2=\"{y:.1}\" stroke=\"#222\" stroke-width=\"1.5\"/>\n<line x1=\"{to:.1}\" y1=\"{:.1}\" x2=\"{to:.1}\" y2=\"{:.1}\" stroke=\"#222\" stroke-width=\"1.5\"/>",
            y - 5.0,
            y + 5.0
        );
    }
    for t in &l.texts {
        s.push_str(&svg_text(t));
    }
    s.push_str("</svg>\n");
    s
}

pub fn write(path: &Path, p: &Plot) -> Result<()> {
    let l = layout(p)?;
    std::fs::write(path, svg(&l)).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plots of the committed results, as a full run draws them.
    fn committed() -> Vec<(String, Layout)> {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/results.json");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
        crate::report::plots(&r)
            .into_iter()
            .map(|figure| {
                let plot = Plot {
                    title: &figure.title,
                    caption: &figure.caption,
                    unit: figure.unit,
                    bars: &figure.bars,
                };
                (figure.name.to_owned(), layout(&plot).unwrap())
            })
            .collect()
    }

    /// `committed` lays each out, which checks it.
    #[test]
    fn every_plot_of_a_run_lays_out_with_nothing_overlapping() {
        let plots = committed();
        assert!(plots.len() >= 8, "{} plots", plots.len());
        for (name, l) in &plots {
            assert!(l.grid.len() <= 7, "{name}: {} grid lines", l.grid.len());
        }
    }

    #[test]
    fn a_caption_or_label_too_long_is_refused() {
        let bars = [
            Bar::new("short", 1.0),
            Bar::new("longer label", 2.0).ratio(0.5),
        ];
        let long = "a caption that goes on and on ".repeat(6);
        let plot = |caption: &str, bars: &[Bar]| {
            layout(&Plot {
                title: "t",
                caption,
                unit: "ms",
                bars,
            })
            .map(|_| ())
        };
        assert!(plot("fits", &bars).is_ok());
        let e = plot(&long, &bars).unwrap_err();
        assert!(format!("{e:#}").contains("does not fit"), "{e:#}");
        let e = plot("fits", &[Bar::new("a label ".repeat(8), 1.0)]).unwrap_err();
        assert!(format!("{e:#}").contains("label column"), "{e:#}");
    }

    #[test]
    fn grid_steps_are_one_two_or_five() {
        assert_eq!(nice_step(52.7, 5), 20.0);
        assert_eq!(nice_step(9.0, 5), 2.0);
        assert_eq!(nice_step(0.9, 5), 0.2);
        assert_eq!(nice_step(21066.0, 5), 5000.0);
    }

    /// The non-white pixels' horizontal extent of a PNG rendering.
    fn ink(png: &[u8]) -> Option<(u32, u32, u32, u32)> {
        let mut d = png::Decoder::new(std::io::Cursor::new(png));
        d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = d.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        let (w, h) = (info.width, info.height);
        let mut extent: Option<(u32, u32, u32, u32)> = None;
        for y in 0..h {
            for x in 0..w {
                let p = &buf[((y * w + x) as usize) * channels..][..channels];
                let alpha = if channels == 4 { p[3] } else { 255 };
                if alpha > 40 && p[..3].iter().any(|c| *c < 200) {
                    extent = Some(match extent {
                        None => (x, x, y, y),
                        Some((a, b, top, bottom)) => {
                            (a.min(x), b.max(x), top.min(y), bottom.max(y))
                        }
                    });
                }
            }
        }
        extent
    }

    fn render(svg: &str) -> Vec<u8> {
        let out = std::process::Command::new("rsvg-convert")
            .args(["-f", "png"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(svg.as_bytes())?;
                c.wait_with_output()
            })
            .expect("rsvg-convert (Debian's librsvg2-bin; tests/deps.sh installs it)");
        assert!(out.status.success(), "rsvg-convert: {out:?}");
        out.stdout
    }

    /// Each text of the real plots, rendered alone where the layout put
    /// it, inks only inside the box the layout reserved for it: the width
    /// estimate the overlap check relies on holds for the fonts installed.
    #[test]
    fn rendered_text_stays_inside_its_box() {
        for (name, l) in committed() {
            let png = render(&svg(&l));
            let mut d = png::Decoder::new(std::io::Cursor::new(&png));
            d.set_transformations(png::Transformations::EXPAND);
            let info = d.read_info().unwrap().info().clone();
            assert_eq!(
                (info.width as f64, info.height as f64),
                (WIDTH, l.height),
                "{name}"
            );
            for t in l.texts.iter().filter(|t| !t.text.trim().is_empty()) {
                let alone = format!(
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h}\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>{}</svg>",
                    svg_text(t),
                    h = l.height
                );
                let (left, right, top, bottom) = ink(&render(&alone))
                    .unwrap_or_else(|| panic!("{name}: {:?} drew nothing: no font?", t.text));
                assert!(
                    left as f64 >= t.x - 1.0 && right as f64 <= t.x + t.width + 1.0,
                    "{name}: {:?} inks x {left}..{right}, its box {:.0}..{:.0}",
                    t.text,
                    t.x,
                    t.x + t.width
                );
                assert!(
                    top as f64 >= t.y - 1.0 && bottom as f64 <= t.y + t.height + 1.0,
                    "{name}: {:?} inks y {top}..{bottom}, its box {:.0}..{:.0}",
                    t.text,
                    t.y,
                    t.y + t.height
                );
            }
        }
    }
}
