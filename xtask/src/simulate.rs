//! `cargo xtask simulate`: placeholder until the simulator lands.

pub fn main(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}
