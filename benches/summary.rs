//! The closing table of a benchmark run: one row per issue-9 target the run measured (the figure,
//! the target, whether the figure meets it), after the machine line, ready to paste into
//! benches/RESULTS.md. It decides nothing: each benchmark computes its own figures and verdicts.

use crate::machine::Machine;

/// The rows gathered during one run, in the order they were measured.
#[derive(Default)]
pub struct Summary {
    rows: Vec<Row>,
}

struct Row {
    name: String,
    measured: String,
    target: String,
    met: Option<bool>,
}

impl Summary {
    /// Adds a row; `met` is `None` when the run gives no verdict (no target at this setting, or a
    /// part of it was skipped).
    pub fn add(&mut self, name: impl Into<String>, measured: String, target: String, met: Option<bool>) {
        self.rows.push(Row { name: name.into(), measured, target, met });
    }

    /// The machine line and the Markdown table `| row | measured | target | met? |`.
    pub fn render(&self, title: &str, machine: &Machine) -> String {
        let mut out = format!("\n## Summary: {title}\n\n{}\n\n", machine.line());
        out.push_str("| row | measured | target | met? |\n|---|---|---|---|\n");
        for row in &self.rows {
            out.push_str(&format!("| {} | {} | {} | {} |\n", row.name, row.measured, row.target, met(row.met)));
        }
        out
    }
}

/// The "met?" cell: yes, no, or n/a when there is no verdict.
pub fn met(verdict: Option<bool>) -> &'static str {
    match verdict {
        Some(true) => "yes",
        Some(false) => "no",
        None => "n/a",
    }
}
