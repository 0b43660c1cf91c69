//! Reproduction of the paper's experiments (section 6): the two-type grid
//! of 6.1 and the three multi-type scenarios of 6.2, as CSV tables and PNG
//! figures, with our objective printed beside the published one.
//!
//! The published numbers below are the authors' notebook outputs as quoted
//! in the spec; they are shown for comparison, never used as results.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::accuracy::Accuracy;
use crate::baselines::{CompleteInformation, NoContract, complete_information, no_contract};
use crate::error::{ContractError, Result};
use crate::expectation::Method;
use crate::outcomes::Enumeration;
use crate::rewards::reward_value_distribution;
use crate::scenario::Scenario;
use crate::solver::{Solution, solve};

/// The accuracy function of every experiment: a_opt = k = 1.
pub const PAPER_ACCURACY: Accuracy = Accuracy::generalization_bound(1.0, 1.0);
/// v(a) = 100 a.
pub const PAPER_VALUATION_SCALE: f64 = 100.0;

/// One section 6.2 scenario with the published numbers.
#[derive(Debug, Clone, Copy)]
pub struct PublishedScenario {
    /// "S1", "S2", "S3".
    pub name: &'static str,
    /// Costs of types 1..5.
    pub costs: [f64; 5],
    /// E[v(a)] of the authors' published contract.
    pub published_value: f64,
    /// The true optimum reported by the spec's independent solver.
    pub reference_optimum: f64,
}

/// The three section 6.2 scenarios (N = 10, uniform prior).
pub const MULTITYPE: [PublishedScenario; 3] = [
    PublishedScenario {
        name: "S1",
        costs: [0.2, 0.16, 0.12, 0.08, 0.04],
        published_value: 86.47827301929004,
        reference_optimum: 86.4782760,
    },
    PublishedScenario {
        name: "S2",
        costs: [1.0, 0.85, 0.7, 0.55, 0.4],
        published_value: 69.0520951,
        reference_optimum: 69.0532528,
    },
    PublishedScenario {
        name: "S3",
        costs: [0.5, 0.4, 0.03, 0.02, 0.001],
        published_value: 94.0133700,
        reference_optimum: 94.0134924,
    },
];

/// A section 6.2 scenario as a [`Scenario`].
pub fn multitype_scenario(costs: &[f64]) -> Scenario {
    let raw: Vec<(f64, f64)> = costs.iter().map(|&c| (c, 1.0 / costs.len() as f64)).collect();
    Scenario::new(10, PAPER_ACCURACY, PAPER_VALUATION_SCALE, &raw).expect("the paper's scenarios are valid")
}

/// The section 6.1 two-type scenario: c = (0.02, 0.01), prior (p1, 1 - p1).
pub fn two_type_scenario(participants: u32, p1: f64) -> Scenario {
    Scenario::new(participants, PAPER_ACCURACY, PAPER_VALUATION_SCALE, &[(0.02, p1), (0.01, 1.0 - p1)])
        .expect("the paper's grid is valid")
}

/// N = 2, 4, ..., 100 and p1 = linspace(0.01, 0.99, 30), as in the notebook.
pub fn two_type_grid() -> Vec<(u32, f64)> {
    let mut grid = Vec::with_capacity(1500);
    for n in (2..=100).step_by(2) {
        for k in 0..30 {
            grid.push((n, 0.01 + 0.98 * k as f64 / 29.0));
        }
    }
    grid
}

/// One solved point of the two-type grid.
#[derive(Debug, Clone)]
pub struct GridPoint {
    /// N.
    pub participants: u32,
    /// p1, the probability of the high-cost type.
    pub p1: f64,
    /// The optimal contract.
    pub solution: Solution,
    /// The complete-information benchmark.
    pub complete: CompleteInformation,
}

impl GridPoint {
    /// E[v(a)] of the contract minus that of complete information (<= 0).
    pub fn information_cost(&self) -> f64 {
        self.solution.expected_value - self.complete.expected_value
    }
    /// u_i - f_i.
    pub fn information_rents(&self) -> Vec<f64> {
        self.solution.utility.iter().zip(&self.solution.reservations).map(|(u, r)| u - r.utility).collect()
    }
}

/// Solves one grid point.
pub fn solve_grid_point(participants: u32, p1: f64) -> Result<GridPoint> {
    let scenario = two_type_scenario(participants, p1);
    let solution = solve(&scenario, Method::Auto)?;
    let complete = complete_information(&scenario, &solution.reservations);
    Ok(GridPoint { participants, p1, solution, complete })
}

/// One solved section 6.2 scenario.
#[derive(Debug, Clone)]
pub struct MultitypeResult {
    /// The published numbers.
    pub published: PublishedScenario,
    /// The scenario.
    pub scenario: Scenario,
    /// Our optimal contract.
    pub solution: Solution,
    /// Complete-information benchmark.
    pub complete: CompleteInformation,
    /// Free-riding benchmark.
    pub naive: NoContract,
}

/// Solves S1, S2, S3.
pub fn run_multitype() -> Result<Vec<MultitypeResult>> {
    MULTITYPE
        .iter()
        .map(|published| {
            let scenario = multitype_scenario(&published.costs);
            let solution = solve(&scenario, Method::Auto)?;
            let complete = complete_information(&scenario, &solution.reservations);
            let naive = no_contract(&scenario, &solution.reservations);
            Ok(MultitypeResult { published: *published, scenario, solution, complete, naive })
        })
        .collect()
}

/// The comparison table of 6.2 as text (printed by `contract paper`).
pub fn multitype_table(results: &[MultitypeResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario  ours E[v(a)]    published       ours-published  reference opt.  complete-info   no-contract     pools"
    );
    for r in results {
        let pools: Vec<String> = r
            .solution
            .pools
            .iter()
            .map(|p| format!("{{{}}}", p.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(",")))
            .collect();
        let _ = writeln!(
            out,
            "{:<9} {:<15.8} {:<15.8} {:<+15.3e} {:<15.7} {:<15.6} {:<15.6} {}",
            r.published.name,
            r.solution.expected_value,
            r.published.published_value,
            r.solution.expected_value - r.published.published_value,
            r.published.reference_optimum,
            r.complete.expected_value,
            r.naive.expected_value,
            pools.join(" ")
        );
    }
    out
}

/// Writes CSV tables and PNG figures into `dir`; returns the files written.
pub fn write_outputs(dir: &Path, grid: &[GridPoint], multi: &[MultitypeResult]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| ContractError::Output(format!("{}: {e}", dir.display())))?;
    let mut written = Vec::new();
    let write = |name: &str, text: String, written: &mut Vec<PathBuf>| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| ContractError::Output(format!("{}: {e}", path.display())))?;
        written.push(path);
        Ok(())
    };
    let mut csv = String::from(
        "N,p1,m1,m2,t1,t2,tbar1,tbar2,expected_value,complete_info_value,information_cost,rent1,rent2\n",
    );
    for g in grid {
        let s = &g.solution;
        let rents = g.information_rents();
        let _ = writeln!(
            csv,
            "{},{:.6},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8}",
            g.participants,
            g.p1,
            s.contribution[0],
            s.contribution[1],
            s.expected_reward_value[0],
            s.expected_reward_value[1],
            s.max_reward_value[0],
            s.max_reward_value[1],
            s.expected_value,
            g.complete.expected_value,
            g.information_cost(),
            rents[0],
            rents[1]
        );
    }
    write("twotype_grid.csv", csv, &mut written)?;
    let mut csv = String::from(
        "scenario,type,cost,reservation_utility,standalone_contribution,contribution,expected_reward_value,max_reward_value,utility,information_rent\n",
    );
    for r in multi {
        let s = &r.solution;
        for i in 0..s.contribution.len() {
            let _ = writeln!(
                csv,
                "{},{},{},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8},{:.8}",
                r.published.name,
                i + 1,
                r.scenario.types[i].cost,
                s.reservations[i].utility,
                s.reservations[i].contribution,
                s.contribution[i],
                s.expected_reward_value[i],
                s.max_reward_value[i],
                s.utility[i],
                s.utility[i] - s.reservations[i].utility
            );
        }
    }
    write("multitype_contracts.csv", csv, &mut written)?;
    write("multitype_summary.txt", multitype_table(multi), &mut written)?;
    let path = dir.join("twotype.png");
    plot_two_type(&path, grid).map_err(|e| ContractError::Output(format!("{}: {e}", path.display())))?;
    written.push(path);
    let path = dir.join("multitype.png");
    plot_multitype(&path, multi).map_err(|e| ContractError::Output(format!("{}: {e}", path.display())))?;
    written.push(path);
    Ok(written)
}

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

const SHOWN_N: [u32; 4] = [2, 10, 50, 100];

fn line_color(k: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ][k % 5]
}

/// Four panels over p1 for a few N: contributions (with standalone levels),
/// expected reward values, information cost, and the low-cost type's rent.
fn plot_two_type(path: &Path, grid: &[GridPoint]) -> PlotResult {
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    let series = |n: u32, f: &dyn Fn(&GridPoint) -> f64| -> Vec<(f64, f64)> {
        grid.iter().filter(|g| g.participants == n).map(|g| (g.p1, f(g))).collect()
    };
    let standalone: Vec<f64> = grid
        .first()
        .map(|g| g.solution.reservations.iter().map(|r| r.contribution).collect())
        .unwrap_or_default();
    type Getter = Box<dyn Fn(&GridPoint) -> f64>;
    // (title, [(value, dashed)]) per panel.
    type Panel = (&'static str, Vec<(Getter, bool)>);
    let specs: Vec<Panel> = vec![
        (
            "Contributions m_i (dashed: type 1 high cost; solid: type 2)",
            vec![
                (Box::new(|g: &GridPoint| g.solution.contribution[0]) as Getter, true),
                (Box::new(|g: &GridPoint| g.solution.contribution[1]) as Getter, false),
            ],
        ),
        (
            "Expected reward values t_i (dashed: type 1; solid: type 2)",
            vec![
                (Box::new(|g: &GridPoint| g.solution.expected_reward_value[0]) as Getter, true),
                (Box::new(|g: &GridPoint| g.solution.expected_reward_value[1]) as Getter, false),
            ],
        ),
        (
            "Information cost E[v(a)] - complete information",
            vec![(Box::new(|g: &GridPoint| g.information_cost()) as Getter, false)],
        ),
        (
            "Information rent of the low-cost type u_2 - f_2",
            vec![(Box::new(|g: &GridPoint| g.information_rents()[1]) as Getter, false)],
        ),
    ];
    for (panel_index, (panel, (title, getters))) in panels.iter().zip(specs.iter()).enumerate() {
        let mut values: Vec<f64> = Vec::new();
        for &n in &SHOWN_N {
            for (get, _) in getters {
                values.extend(series(n, get.as_ref()).iter().map(|p| p.1));
            }
        }
        if panel_index == 0 {
            values.extend(standalone.iter().copied());
        }
        let (lo, hi) =
            values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .caption(*title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..1.0, (lo - pad)..(hi + pad))?;
        chart.configure_mesh().x_desc("p1 (probability of the high-cost type)").draw()?;
        for (k, &n) in SHOWN_N.iter().enumerate() {
            let color = line_color(k);
            for (gi, (get, dashed)) in getters.iter().enumerate() {
                let points = series(n, get.as_ref());
                if *dashed {
                    chart.draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(2)))?;
                } else {
                    let s = chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
                    if gi == getters.len() - 1 {
                        s.label(format!("N = {n}")).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                    }
                }
            }
        }
        if panel_index == 0 {
            for (i, &m) in standalone.iter().enumerate() {
                chart.draw_series(DashedLineSeries::new(
                    vec![(0.0, m), (1.0, m)],
                    2,
                    4,
                    BLACK.stroke_width(1),
                ))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("standalone m*_{}", i + 1),
                    (0.02, m),
                    ("sans-serif", 14),
                )))?;
            }
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

/// Per scenario: contributions per type against standalone contributions,
/// and the cumulative distribution of each type's reward value v(r_i(n))
/// given n_i >= 1 (proportional construction), with t_i marked.
fn plot_multitype(path: &Path, multi: &[MultitypeResult]) -> PlotResult {
    let root = BitMapBackend::new(path, (1500, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let rows = root.split_evenly((2, multi.len().max(1)));
    for (k, r) in multi.iter().enumerate() {
        let s = &r.solution;
        let types = s.contribution.len();
        let top = s
            .contribution
            .iter()
            .chain(s.reservations.iter().map(|x| &x.contribution))
            .fold(0.0f64, |a, &b| a.max(b))
            * 1.15;
        let mut chart = ChartBuilder::on(&rows[k])
            .caption(
                format!("{}: contribution (bar) vs standalone (black)", r.published.name),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5..(types as f64 + 0.5), 0.0..top.max(1.0))?;
        chart.configure_mesh().x_desc("type (1 = highest cost)").y_desc("m").disable_x_mesh().draw()?;
        chart.draw_series((0..types).map(|i| {
            let x = i as f64 + 1.0;
            Rectangle::new([(x - 0.3, 0.0), (x + 0.3, s.contribution[i])], line_color(i).filled())
        }))?;
        chart.draw_series((0..types).map(|i| {
            let x = i as f64 + 1.0;
            let m = s.reservations[i].contribution;
            PathElement::new(vec![(x - 0.4, m), (x + 0.4, m)], BLACK.stroke_width(3))
        }))?;
        let outcomes = Enumeration::new(r.scenario.participants, &r.scenario.probabilities(), 1_000_000)
            .map_err(|e| e.to_string())?;
        let laws: Vec<Vec<(f64, f64)>> =
            (0..types).map(|i| reward_value_distribution(&r.scenario, s, &outcomes, i)).collect();
        let (lo, hi) = laws
            .iter()
            .flatten()
            .filter(|(_, p)| *p > 1e-6)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(v, _)| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.05).max(0.5);
        let mut chart = ChartBuilder::on(&rows[multi.len() + k])
            .caption(
                format!("{}: P(v(r_i) <= x | n_i >= 1), t_i marked", r.published.name),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0.0..1.02)?;
        chart.configure_mesh().x_desc("reward value v(r_i(n))").draw()?;
        for (i, law) in laws.iter().enumerate() {
            let color = line_color(i);
            let mut acc = 0.0;
            let mut points = vec![(lo - pad, 0.0)];
            for &(v, p) in law {
                points.push((v, acc));
                acc += p;
                points.push((v, acc));
            }
            points.push((hi + pad, acc));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("type {}", i + 1))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            let t = s.expected_reward_value[i];
            chart.draw_series(std::iter::once(TriangleMarker::new(
                (t, 0.04 + 0.04 * i as f64),
                8,
                color.filled(),
            )))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
