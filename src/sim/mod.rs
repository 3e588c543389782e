//! The deterministic chaos simulation behind `payledger simulate`: the real [`Ledger`](crate::Ledger), the
//! real journal on a [`SimDisk`](crate::SimDisk) and the real [`Reconciler`](crate::Reconciler), driven by logical clients against
//! a simulated provider, with crashes, disk faults and clock drift, all from one seed.
//!
//! Invariants checked: no order is charged twice at the provider unless the provider lost a
//! charge, and each such order ends in conflict; every acknowledged event survives every crash;
//! replaying the journal reproduces the live states; after a heal phase every key is settled
//! (succeeded, declined, exhausted), in review or in conflict; nothing panics.
//!
//! Everything runs on one thread in an order the seed decides, so the same seed and
//! configuration always give byte-identical reports.
//!
//! Files: `profile.rs`, `config.rs`, `report.rs`, `world.rs` (the world and its steps),
//! `clients.rs`, `checks.rs`, `provider.rs` (the simulated provider).

mod checks;
mod clients;
mod config;
mod profile;
mod provider;
mod report;
pub mod store_chaos;
mod world;

use crate::error::{Error, Result};

#[cfg(feature = "testing")]
pub use config::Broken;
pub use config::SimConfig;
pub use profile::Profile;
pub use report::SimReport;
use world::World;

/// Runs a simulation. `progress` is called after each step with (steps done, steps total).
///
/// # Errors
/// Only for failures of the simulation itself (e.g. its temporary index directory); every
/// violation of a payledger invariant is reported in the [`SimReport`].
pub fn run(config: SimConfig, mut progress: impl FnMut(u64, u64)) -> Result<SimReport> {
    if let Some(dir) = &config.dir
        && dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Io {
            context: format!("--dir {} must be a new or empty directory", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let mut world = World::new(config)?;
    let ops = world.config.ops;
    for step in 0..ops {
        world.step()?;
        progress(step + 1, ops);
    }
    world.heal()?;
    world.check_end()?;
    world.report.power_loss = world.disk.power_loss_counts();
    let faults = world.provider.state().faults.clone();
    for (name, count) in faults {
        *world.report.faults.entry(name).or_default() += count;
    }
    if let Some(dir) = world.config.dir.clone() {
        world.ledger = None;
        world.export(&dir)?;
    }
    Ok(world.report)
}
