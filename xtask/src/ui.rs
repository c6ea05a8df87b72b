//! Terminal output: one line per step, so a long run says what it is doing.

use std::time::Instant;

pub struct Step {
    name: String,
    started: Instant,
}

/// Announces a step; call [`Step::done`] when it finishes.
pub fn step(name: impl Into<String>) -> Step {
    let name = name.into();
    eprintln!("==> {name}");
    Step { name, started: Instant::now() }
}

impl Step {
    pub fn done(self) {
        eprintln!("    {} done in {:.1}s", self.name, self.started.elapsed().as_secs_f64());
    }
}

pub fn info(line: impl AsRef<str>) {
    eprintln!("    {}", line.as_ref());
}
