//! The learning curve of a run as a PNG: train loss (left axis) and validation AUC (right
//! axis) per epoch. Text uses DejaVu Sans compiled into the binary (the `dejavu` crate,
//! drawn with ab_glyph), so no system font library is needed.

use bst_core::train::EpochReport;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

/// File name of the learning curve in a run folder.
pub const LEARNING_CURVE: &str = "learning_curve.png";

const SIZE: (u32, u32) = (900, 540);
const LOSS: RGBColor = RGBColor(31, 119, 180);
const AUC: RGBColor = RGBColor(214, 39, 40);

/// Registers the bundled font as plotters' `sans-serif` (once).
fn register_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the bundled DejaVu Sans font does not load".to_string())
    })
    .clone()
}

/// `lo..hi` of the finite values, padded by 10% (and at least `min_pad`) on each side.
fn padded_range(values: impl Iterator<Item = f64>, min_pad: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(min_pad);
    lo - pad..hi + pad
}

/// Draws train loss and validation AUC per epoch of `epochs` into the PNG `path`.
pub fn learning_curve(path: &Path, epochs: &[EpochReport]) -> Result<(), String> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let n = epochs.len().max(1) as f64;
    let x_range = 0.5..n + 0.5;
    let loss_range = padded_range(epochs.iter().map(|e| e.train_loss), 0.005);
    let auc_range = padded_range(epochs.iter().map(|e| e.valid.auc), 0.005);
    let loss: Vec<(f64, f64)> = epochs
        .iter()
        .map(|e| (e.epoch as f64, e.train_loss))
        .filter(|p| p.1.is_finite())
        .collect();
    let auc: Vec<(f64, f64)> = epochs
        .iter()
        .map(|e| (e.epoch as f64, e.valid.auc))
        .filter(|p| p.1.is_finite())
        .collect();

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Learning curve", ("sans-serif", 26))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), loss_range)
        .map_err(|e| err(&e))?
        .set_secondary_coord(x_range, auc_range);
    let whole = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{}", x.round())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("train loss")
        .x_labels(epochs.len() + 2)
        .x_label_formatter(&whole)
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("validation AUC")
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|e| err(&e))?;
    // A curve: its line (with its legend entry) and a marker per epoch, drawn against the
    // primary (`draw_series`) or the secondary (`draw_secondary_series`) axis.
    macro_rules! curve {
        ($draw:ident, $points:expr, $color:expr, $label:literal) => {
            chart
                .$draw(LineSeries::new($points.clone(), $color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label($label)
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], $color.stroke_width(2))
                });
            chart
                .$draw($points.iter().map(|&p| Circle::new(p, 4, $color.filled())))
                .map_err(|e| err(&e))?;
        };
    }
    curve!(draw_series, loss, LOSS, "train loss");
    curve!(draw_secondary_series, auc, AUC, "validation AUC");
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
