//! Shared fixtures: a scriptable provider, intents, and ledgers on a manual clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payledger::*;

pub const T0: u64 = 1_800_000_000_000;

pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

pub fn intent(amount: u64) -> Intent {
    Intent {
        amount: Amount::new(amount).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_1").unwrap(),
        customer: CustomerRef::new("cus_1").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

/// A provider that charges for real (in memory), with scriptable faults.
#[derive(Default)]
pub struct FakeProvider {
    pub charges: Mutex<HashMap<String, (String, u64)>>,
    pub charge_calls: AtomicUsize,
    pub query_calls: AtomicUsize,
    /// Sleep this long before replying to a charge (after charging).
    pub reply_delay: Mutex<Duration>,
    /// Reply with this instead of the truth (after charging).
    pub reply_override: Mutex<Option<ChargeReply>>,
    /// Forget the next charge right after making it (the provider "loses" it).
    pub lose_next: Mutex<bool>,
    pub lost: Mutex<Vec<(String, String, u64)>>,
    /// Every query fails (the provider is unreachable for queries).
    pub queries_fail: Mutex<bool>,
}

impl FakeProvider {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn charge_calls(&self) -> usize {
        self.charge_calls.load(Ordering::SeqCst)
    }
}

impl Provider for FakeProvider {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        let n = self.charge_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let txn = format!("ch_{n}");
        let reference = request.provider_reference.as_str().to_string();
        if std::mem::take(&mut *self.lose_next.lock().unwrap()) {
            self.lost
                .lock()
                .unwrap()
                .push((reference, txn.clone(), request.amount.minor()));
        } else {
            self.charges
                .lock()
                .unwrap()
                .insert(reference, (txn.clone(), request.amount.minor()));
        }
        std::thread::sleep(*self.reply_delay.lock().unwrap());
        if let Some(reply) = self.reply_override.lock().unwrap().clone() {
            return reply;
        }
        ChargeReply::Charged {
            transaction_id: txn,
            amount_minor: request.amount.minor(),
        }
    }

    fn query(&self, reference: &ProviderReference) -> QueryReply {
        self.query_calls.fetch_add(1, Ordering::SeqCst);
        if *self.queries_fail.lock().unwrap() {
            return QueryReply::Failed(UnknownReason::Timeout);
        }
        match self.charges.lock().unwrap().get(reference.as_str()) {
            Some((txn, amount)) => QueryReply::Succeeded {
                transaction_id: txn.clone(),
                amount_minor: *amount,
            },
            None => QueryReply::NotFound,
        }
    }
}

pub fn reconcile_config() -> ReconcileConfig {
    ReconcileConfig::new(
        NotFoundPolicy::new(60_000, 5_000, 3).unwrap(),
        6,
        1_000,
        60_000,
        100,
    )
    .unwrap()
}

pub fn config(clock: &Arc<ManualClock>) -> LedgerConfig {
    LedgerConfig {
        segment_len: 1 << 20,
        reconcile: reconcile_config(),
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        ..LedgerConfig::default()
    }
}

/// [`config`] with an index whose applies and reads the test can make fail or wait.
pub fn faulty_index_config(clock: &Arc<ManualClock>) -> (LedgerConfig, IndexFaults) {
    let faults = IndexFaults::default();
    let config = LedgerConfig {
        index_faults: Some(faults.clone()),
        ..config(clock)
    };
    (config, faults)
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(UnixMillis(T0)))
}

/// The commit frames of a (version 2) segment's bytes: (start, end, records) of each, in order.
pub fn frames(segment: &[u8]) -> Vec<(usize, usize, u32)> {
    use payledger::journal::format::{FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN};
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while let Some(Ok(Some(header))) = segment.get(pos..).map(FrameHeader::decode) {
        let end = pos + FRAME_HEADER_LEN + header.body_len as usize;
        frames.push((pos, end, header.records));
        pos = end;
    }
    frames
}

/// A file whose `sync_data` runs `sync` on the inner file instead of syncing it directly;
/// everything else is the inner file's. Fault storages build their files from it.
pub struct SyncWith<F> {
    pub inner: Box<dyn payledger::journal::storage::StorageFile>,
    pub sync: F,
}

impl<F> std::fmt::Debug for SyncWith<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWith")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F> payledger::journal::storage::StorageFile for SyncWith<F>
where
    F: Fn(&dyn payledger::journal::storage::StorageFile) -> std::io::Result<()> + Send + Sync,
{
    fn file_len(&self) -> std::io::Result<u64> {
        self.inner.file_len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(data, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        (self.sync)(&*self.inner)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.preallocate(len)
    }
}

/// A [`SimDisk`] whose file syncs first run `on_sync`: e.g. to let a test clock move while a
/// sync is in progress.
#[derive(Clone)]
pub struct OnSync {
    pub disk: SimDisk,
    pub on_sync: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for OnSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnSync").finish_non_exhaustive()
    }
}

impl payledger::journal::storage::Storage for OnSync {
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.disk.create_dir_all(dir)
    }
    fn exists(&self, path: &std::path::Path) -> bool {
        self.disk.exists(path)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.disk.list(dir)
    }
    fn open(
        &self,
        path: &std::path::Path,
        create: bool,
    ) -> std::io::Result<Box<dyn payledger::journal::storage::StorageFile>> {
        let on_sync = Arc::clone(&self.on_sync);
        Ok(Box::new(SyncWith {
            inner: self.disk.open(path, create)?,
            sync: move |file: &dyn payledger::journal::storage::StorageFile| {
                on_sync();
                file.sync_data()
            },
        }))
    }
    fn open_read(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Box<dyn payledger::journal::storage::StorageFile>> {
        self.disk.open_read(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.disk.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.disk.remove(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.disk.sync_dir(dir)
    }
    fn try_lock(
        &self,
        dir: &std::path::Path,
    ) -> std::io::Result<Option<Box<dyn payledger::journal::storage::DirLock>>> {
        self.disk.try_lock(dir)
    }
    fn background_writes(&self) -> bool {
        self.disk.background_writes()
    }
}
