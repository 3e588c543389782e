//! Names every field of the public configuration without `..`: if a default build grew a
//! field (a sabotage switch, say), this would stop compiling.

use payledger::LedgerConfig;

fn main() {
    let LedgerConfig {
        segment_len,
        create_if_missing,
        read_only,
        index_dir,
        reconcile,
        clock,
        storage,
        ticket_lease_ms,
        index_backlog_max,
        index_cache_bytes,
        index_applier_background,
        index_engine,
    } = LedgerConfig::default();
    let _ = (
        segment_len,
        create_if_missing,
        read_only,
        index_dir,
        reconcile,
        clock,
        storage,
        ticket_lease_ms,
        index_backlog_max,
        index_cache_bytes,
        index_applier_background,
        index_engine,
    );
}
