//! `crowdtrain contract fit`: the accuracy function a(M) from measured
//! learning curves. This module reads the curves (files are the CLI's
//! business); fitting is `crowdtrain_contract::fit`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use crowdtrain_contract::Accuracy;
use crowdtrain_contract::fit::{Candidate, CurvePoint, Errors, errors, fit_both};
use crowdtrain_contract::scenario::{SCENARIO_BYTES_MAX, accuracy_section, accuracy_table, replace_accuracy};
use crowdtrain_store::trajectory::read_trajectory;
use crowdtrain_train::reward::Metric;
use serde::{Deserialize, Serialize};

use super::MetricArgs;
use crate::output;
use crate::plot::{self, Series};

/// Fit the accuracy function a(M) of a scenario to measured learning
/// curves: a saturating power law and the paper's generalization bound,
/// each with its error, the better one written as an `[accuracy]` section.
/// M is verified work units (inner steps x batch size per accepted
/// submission), which is also what `sim diloco` counts as samples.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// Learning curves to fit: the JSON output of `crowdtrain sim diloco
    /// --json` (a file), or a coordinator's --state directory (its verified
    /// ledger and test evaluations).
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<PathBuf>,

    /// A run kept out of the fit (same kinds as SOURCE): its final value is
    /// predicted and the error reported. Repeatable.
    #[arg(long = "held-out", value_name = "SOURCE")]
    held_out: Vec<PathBuf>,

    /// Fit only the first part of the curves: points whose M is at most this
    /// share of the largest M among the sources. The later points are
    /// predicted and the errors reported.
    #[arg(long, default_value_t = 1.0, value_name = "SHARE")]
    fit_fraction: f64,

    #[command(flatten)]
    metric: MetricArgs,

    /// A scenario file whose [accuracy] section the fit replaces: the
    /// whole scenario is written to --out (or printed).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,

    /// Write the [accuracy] section (or, with --scenario, the scenario) here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Plot the points and both fitted curves (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// A measured learning curve: (M, accuracy, loss) in increasing M.
struct Curve {
    path: PathBuf,
    kind: &'static str,
    points: Vec<(f64, f64, f64)>,
    /// Rounds without an evaluation (a state whose coordinator stopped
    /// before evaluating them).
    unevaluated: usize,
}

/// The part of `sim diloco --json` a curve needs.
#[derive(Deserialize)]
struct SimOutput {
    rounds: Vec<SimRound>,
}

#[derive(Deserialize)]
struct SimRound {
    samples: u64,
    diloco_test_accuracy: f64,
    diloco_test_loss: f64,
}

/// Largest simulation output read (a 10,000-round run is ~4 MB).
const SIM_JSON_BYTES_MAX: u64 = 64 << 20;

fn read_curve(path: &Path) -> anyhow::Result<Curve> {
    if path.is_dir() {
        let database = crate::cmd::ledger::database(path)?;
        let trajectory = read_trajectory(&database, None)
            .with_context(|| format!("reading the run in {}", path.display()))?;
        let mut points = Vec::new();
        let mut unevaluated = 0;
        for point in trajectory.points.iter().filter(|point| point.checkpoint.round.is_some()) {
            match (point.test_accuracy, point.test_loss) {
                (Some(accuracy), Some(loss)) if point.contribution > 0 => {
                    points.push((point.contribution as f64, accuracy, loss))
                }
                _ => unevaluated += 1,
            }
        }
        return Ok(Curve { path: path.to_owned(), kind: "state", points, unevaluated });
    }
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    anyhow::ensure!(
        size <= SIM_JSON_BYTES_MAX,
        "{} is {size} bytes, more than the {SIM_JSON_BYTES_MAX} a simulation's output can be",
        path.display()
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let output: SimOutput = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the JSON of `crowdtrain sim diloco --json`", path.display()))?;
    let points = output
        .rounds
        .iter()
        .map(|round| (round.samples as f64, round.diloco_test_accuracy, round.diloco_test_loss))
        .collect();
    Ok(Curve { path: path.to_owned(), kind: "sim", points, unevaluated: 0 })
}

fn value_of(metric: &Metric, accuracy: f64, loss: f64) -> f64 {
    metric.value(accuracy, loss)
}

#[derive(Serialize)]
struct SourceReport {
    path: PathBuf,
    kind: &'static str,
    /// "fit" or "held-out".
    role: &'static str,
    points: usize,
    unevaluated_rounds: usize,
    first_contribution: Option<f64>,
    final_contribution: Option<f64>,
    final_value: Option<f64>,
}

/// One predicted final value.
#[derive(Serialize)]
struct Prediction {
    source: PathBuf,
    contribution: f64,
    measured: f64,
    predicted: f64,
    /// predicted - measured.
    error: f64,
    /// contribution / the largest contribution fitted: how far beyond the
    /// fitted range the prediction reaches.
    extrapolation_factor: f64,
}

#[derive(Serialize)]
struct FormReport {
    form: &'static str,
    accuracy: serde_json::Value,
    rmse: f64,
    max_error: f64,
    /// Fitted to the first 50, 60, 70 and 80% of the fitted points' distinct
    /// M, the errors on the rest (mean RMSE, largest error): how well the
    /// form extrapolates.
    extrapolation: Option<ErrorsReport>,
    /// Errors on every point kept out of the fit (held-out runs and the
    /// later part of the fitted ones), if any.
    held_out: Option<ErrorsReport>,
    /// The final value of each held-out run, and of each fitted run whose
    /// end was cut off by --fit-fraction.
    predictions: Vec<Prediction>,
}

#[derive(Serialize)]
struct ErrorsReport {
    rmse: f64,
    max_error: f64,
    points: usize,
}

impl From<Errors> for ErrorsReport {
    fn from(errors: Errors) -> Self {
        Self { rmse: errors.rmse, max_error: errors.max_error, points: errors.points }
    }
}

#[derive(Serialize)]
struct FitReport {
    metric: &'static str,
    reference_loss: Option<f64>,
    sources: Vec<SourceReport>,
    fit_fraction: f64,
    fit_points: usize,
    /// Both forms, the chosen first.
    fits: Vec<FormReport>,
    chosen: &'static str,
    /// What chose: "extrapolation" (the lower extrapolation RMSE) or "fit"
    /// (the lower RMSE on all the points, for curves too short to split).
    criterion: &'static str,
    /// The chosen form's `[accuracy]` section.
    section: String,
    out: Option<PathBuf>,
    plot: Option<PathBuf>,
}

pub fn run(args: &FitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.fit_fraction > 0.0 && args.fit_fraction <= 1.0,
        "--fit-fraction must be in (0, 1], got {}",
        args.fit_fraction
    );
    let metric = args.metric.metric()?;
    let fitted: Vec<Curve> =
        args.sources.iter().map(|path| read_curve(path)).collect::<anyhow::Result<_>>()?;
    let held: Vec<Curve> =
        args.held_out.iter().map(|path| read_curve(path)).collect::<anyhow::Result<_>>()?;
    let point = |&(m, accuracy, loss): &(f64, f64, f64)| CurvePoint {
        contribution: m,
        value: value_of(&metric, accuracy, loss),
    };
    let largest = fitted.iter().flat_map(|curve| &curve.points).fold(0.0f64, |max, p| max.max(p.0));
    let threshold = args.fit_fraction * largest;
    let fit_points: Vec<CurvePoint> =
        fitted.iter().flat_map(|curve| &curve.points).filter(|p| p.0 <= threshold).map(point).collect();
    let later: Vec<CurvePoint> = fitted
        .iter()
        .flat_map(|curve| &curve.points)
        .filter(|p| p.0 > threshold)
        .chain(held.iter().flat_map(|curve| &curve.points))
        .map(point)
        .collect();
    let fitted_max = fit_points.iter().fold(0.0f64, |max, p| max.max(p.contribution));
    let (fits, criterion) = fit_both(&fit_points).context("no accuracy function fits these curves")?;
    // What each form predicts for each run's final point kept out of the fit.
    let finals: Vec<(&Curve, CurvePoint)> = fitted
        .iter()
        .chain(&held)
        .filter_map(|curve| curve.points.last().map(|last| (curve, point(last))))
        .filter(|(curve, last)| held.iter().any(|h| std::ptr::eq(h, *curve)) || last.contribution > threshold)
        .collect();
    let reports: Vec<FormReport> = fits
        .iter()
        .map(|Candidate { fit, extrapolation }| FormReport {
            form: fit.form.kind(),
            accuracy: serde_json::to_value(accuracy_table(&fit.accuracy)).expect("a table is JSON"),
            rmse: fit.errors.rmse,
            max_error: fit.errors.max_error,
            extrapolation: extrapolation.map(Into::into),
            held_out: (!later.is_empty()).then(|| errors(&fit.accuracy, &later).into()),
            predictions: finals
                .iter()
                .map(|(curve, last)| {
                    let predicted = fit.accuracy.value(last.contribution);
                    Prediction {
                        source: curve.path.clone(),
                        contribution: last.contribution,
                        measured: last.value,
                        predicted,
                        error: predicted - last.value,
                        extrapolation_factor: last.contribution / fitted_max,
                    }
                })
                .collect(),
        })
        .collect();
    let chosen = &fits[0].fit;
    let section = accuracy_section(&chosen.accuracy);
    let written = match &args.scenario {
        Some(path) => {
            let text = read_scenario(path)?;
            replace_accuracy(&text, &chosen.accuracy)
                .with_context(|| format!("invalid scenario {}", path.display()))?
        }
        None => section.clone(),
    };
    if let Some(out) = &args.out {
        std::fs::write(out, &written).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if let Some(path) = &args.plot {
        draw(path, &metric, &fitted, &held, threshold, &fits)?;
    }
    let sources = fitted
        .iter()
        .map(|curve| (curve, "fit"))
        .chain(held.iter().map(|curve| (curve, "held-out")))
        .map(|(curve, role)| SourceReport {
            path: curve.path.clone(),
            kind: curve.kind,
            role,
            points: curve.points.len(),
            unevaluated_rounds: curve.unevaluated,
            first_contribution: curve.points.first().map(|p| p.0),
            final_contribution: curve.points.last().map(|p| p.0),
            final_value: curve.points.last().map(|p| point(p).value),
        })
        .collect();
    let report = FitReport {
        metric: metric.name(),
        reference_loss: match metric {
            Metric::NegLoss { reference_loss } => Some(reference_loss),
            Metric::Accuracy => None,
        },
        sources,
        fit_fraction: args.fit_fraction,
        fit_points: fit_points.len(),
        fits: reports,
        chosen: chosen.form.kind(),
        criterion: criterion.name(),
        section,
        out: args.out.clone(),
        plot: args.plot.clone(),
    };
    if args.json {
        return output::print_json(&report);
    }
    print_human(&report, &written, args.out.is_none());
    Ok(())
}

fn read_scenario(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    anyhow::ensure!(size <= SCENARIO_BYTES_MAX, "{} is larger than a scenario file can be", path.display());
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn points(value: f64) -> String {
    format!("{:+.2} pt", 100.0 * value)
}

fn print_human(report: &FitReport, written: &str, print_written: bool) {
    for source in &report.sources {
        let range = match (source.first_contribution, source.final_contribution, source.final_value) {
            (Some(first), Some(last), Some(value)) => {
                format!("M {first:.0} to {last:.0}, final {} {value:.4}", report.metric)
            }
            _ => "no evaluated points".into(),
        };
        let skipped = if source.unevaluated_rounds > 0 {
            format!(" ({} rounds not evaluated)", source.unevaluated_rounds)
        } else {
            String::new()
        };
        println!(
            "{} {} ({}): {} points, {range}{skipped}",
            source.role,
            source.path.display(),
            source.kind,
            source.points
        );
    }
    println!("fitted on {} points (fit fraction {})", report.fit_points, report.fit_fraction);
    let mut table = output::table(&[
        "form",
        "parameters",
        "RMSE",
        "max error",
        "extrapolation RMSE",
        "held-out RMSE",
        "predicted finals",
    ]);
    for form in &report.fits {
        let parameters = form
            .accuracy
            .as_object()
            .map(|table| {
                table
                    .iter()
                    .filter(|(key, _)| key.as_str() != "kind")
                    .map(|(key, value)| {
                        format!("{key} = {}", value.as_f64().map_or(value.to_string(), |v| format!("{v:.6}")))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let predictions = form
            .predictions
            .iter()
            .map(|p| {
                format!(
                    "M {:.0} ({:.1}x): {:.4} vs {:.4} measured ({})",
                    p.contribution,
                    p.extrapolation_factor,
                    p.predicted,
                    p.measured,
                    points(p.error)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        table.add_row(vec![
            form.form.to_string(),
            parameters,
            format!("{:.2} pt", 100.0 * form.rmse),
            format!("{:.2} pt", 100.0 * form.max_error),
            form.extrapolation.as_ref().map_or("-".into(), |e| format!("{:.2} pt", 100.0 * e.rmse)),
            form.held_out
                .as_ref()
                .map_or("-".into(), |e| format!("{:.2} pt ({} points)", 100.0 * e.rmse, e.points)),
            if predictions.is_empty() { "-".into() } else { predictions },
        ]);
    }
    println!("{table}");
    let why = match report.criterion {
        "extrapolation" => "it predicts the later part of the curve from the earlier part better",
        _ => "the lower RMSE; the curve is too short to judge extrapolation",
    };
    println!("chosen: {} ({why})", report.chosen);
    if print_written {
        print!("{written}");
    } else if let Some(out) = &report.out {
        println!("wrote {}", out.display());
    }
    if let Some(plot) = &report.plot {
        println!("plot: {}", plot.display());
    }
}

fn draw(
    path: &Path,
    metric: &Metric,
    fitted: &[Curve],
    held: &[Curve],
    threshold: f64,
    fits: &[Candidate; 2],
) -> anyhow::Result<()> {
    let as_points = |points: &mut dyn Iterator<Item = &(f64, f64, f64)>| -> Vec<(f64, f64)> {
        points.map(|&(m, accuracy, loss)| (m, value_of(metric, accuracy, loss))).collect()
    };
    let mut markers = vec![Series {
        name: "fitted points".into(),
        points: as_points(&mut fitted.iter().flat_map(|c| &c.points).filter(|p| p.0 <= threshold)),
    }];
    let kept_out = as_points(
        &mut fitted
            .iter()
            .flat_map(|c| &c.points)
            .filter(|p| p.0 > threshold)
            .chain(held.iter().flat_map(|c| &c.points)),
    );
    if !kept_out.is_empty() {
        markers.push(Series { name: "held-out points".into(), points: kept_out });
    }
    let all = markers.iter().flat_map(|series| &series.points);
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), &(m, _)| (lo.min(m), hi.max(m)));
    let curve = |accuracy: &Accuracy| -> Vec<(f64, f64)> {
        (0..=200).map(|i| lo * (hi / lo).powf(i as f64 / 200.0)).map(|m| (m, accuracy.value(m))).collect()
    };
    let lines: Vec<Series> = fits
        .iter()
        .map(|Candidate { fit, .. }| Series {
            name: format!("{} (RMSE {:.2} pt)", fit.form.kind(), 100.0 * fit.errors.rmse),
            points: curve(&fit.accuracy),
        })
        .collect();
    plot::chart(
        path,
        &plot::Chart {
            title: &format!("a(M) fitted to measured {}", metric.name()),
            x_label: "total contribution M (verified work units, log scale)",
            y_label: metric.name(),
            lines: &lines,
            markers: &markers,
            log_x: true,
        },
    )
}
