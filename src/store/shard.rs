//! Sharding: a router over N stores, each key in exactly one.
//!
//! A key's *logical shard* is fixed forever by a specified hash: the first 8 bytes of
//! `blake3("payledger shard v1" ‖ key)` as a little-endian `u64`, modulo the map's number of
//! logical shards (a power of two, 1 to 65,536, never changed once a ledger holds keys). A
//! versioned [`ShardMap`] assigns logical shards to physical stores; moving a logical shard to
//! another store is a new map version (copy the shard's keys, then switch the map), never a
//! rehash. `DefaultHasher` is not used: it is not specified and may change between Rust
//! releases, which would move keys.
//!
//! Invariant: everything about one payment key (its events, its lists, its reconciliation)
//! stays in one store, so a store's compare-and-append is the whole key's; `list` and `due`
//! scatter to every store and gather in key order.

use crate::error::{Error, Result};
use crate::model::{
    IdempotencyKey, InputError, PaymentState, PhaseKind, ProviderReference, UnixMillis,
};

use super::{Append, Appended, EventStore, StoredKey};

/// The domain separation of the shard hash (a new hash would be a new string and a new major
/// version of the map).
const SHARD_HASH_CONTEXT: &[u8] = b"payledger shard v1";

/// The most logical shards a map may have.
pub const LOGICAL_SHARDS_MAX: u32 = 1 << 16;

/// The logical shard of `key` among `logical_shards` (a power of two): the specified hash.
pub fn logical_shard(key: &IdempotencyKey, logical_shards: u32) -> u32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(SHARD_HASH_CONTEXT);
    hasher.update(key.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    // A power of two divides 2^64: the modulo is unbiased.
    (u64::from_le_bytes(first) % u64::from(logical_shards)) as u32
}

/// Which physical store holds each logical shard, at one version of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    version: u64,
    stores: Vec<u32>,
}

impl ShardMap {
    /// A map at `version`: `stores[s]` is the physical store of logical shard `s`; the number
    /// of logical shards is `stores.len()`, a power of two up to [`LOGICAL_SHARDS_MAX`].
    ///
    /// # Errors
    /// [`Error::Input`] for a number of logical shards that is not such a power of two.
    pub fn new(version: u64, stores: Vec<u32>) -> Result<Self> {
        let n = stores.len() as u64;
        if n == 0 || !n.is_power_of_two() || n > u64::from(LOGICAL_SHARDS_MAX) {
            return Err(Error::Input(InputError::Config {
                field: "logical_shards",
                value: n,
                min: 1,
                max: u64::from(LOGICAL_SHARDS_MAX),
            }));
        }
        Ok(Self { version, stores })
    }

    /// `logical_shards` logical shards spread round-robin over `physical` stores, version 1.
    ///
    /// # Errors
    /// As [`ShardMap::new`], and for `physical` of 0.
    pub fn spread(logical_shards: u32, physical: u32) -> Result<Self> {
        if physical == 0 {
            return Err(Error::Input(InputError::Config {
                field: "physical_shards",
                value: 0,
                min: 1,
                max: u64::from(LOGICAL_SHARDS_MAX),
            }));
        }
        Self::new(1, (0..logical_shards).map(|s| s % physical).collect())
    }

    /// The map's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The number of logical shards.
    pub fn logical_shards(&self) -> u32 {
        self.stores.len() as u32
    }

    /// The physical store of `key`.
    pub fn store_of(&self, key: &IdempotencyKey) -> usize {
        self.stores[logical_shard(key, self.logical_shards()) as usize] as usize
    }

    /// The map after moving logical shard `shard` to `store`: the next version.
    ///
    /// # Errors
    /// [`Error::Input`] for a shard the map does not have.
    pub fn moved(&self, shard: u32, store: u32) -> Result<Self> {
        let mut stores = self.stores.clone();
        let slot = stores
            .get_mut(shard as usize)
            .ok_or(Error::Input(InputError::Config {
                field: "logical_shard",
                value: u64::from(shard),
                min: 0,
                max: u64::from(self.logical_shards()) - 1,
            }))?;
        *slot = store;
        Ok(Self {
            version: self.version + 1,
            stores,
        })
    }
}

/// N stores behind one [`EventStore`], each key routed by a [`ShardMap`].
#[derive(Debug)]
pub struct Sharded<S> {
    map: ShardMap,
    stores: Vec<S>,
}

impl<S: EventStore> Sharded<S> {
    /// A router over `stores` with `map`.
    ///
    /// # Errors
    /// [`Error::Input`] if the map names a store that is not given.
    pub fn new(map: ShardMap, stores: Vec<S>) -> Result<Self> {
        if let Some(&missing) = map.stores.iter().find(|&&s| s as usize >= stores.len()) {
            return Err(Error::Input(InputError::Config {
                field: "shard_map_store",
                value: u64::from(missing),
                min: 0,
                max: stores.len().saturating_sub(1) as u64,
            }));
        }
        Ok(Self { map, stores })
    }

    /// The map in use.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The stores.
    pub fn stores(&self) -> &[S] {
        &self.stores
    }

    fn store(&self, key: &IdempotencyKey) -> &S {
        &self.stores[self.map.store_of(key)]
    }
}

impl<S: EventStore> EventStore for Sharded<S> {
    fn load(&self, key: &IdempotencyKey) -> Result<Option<StoredKey>> {
        self.store(key).load(key)
    }

    fn append(&self, append: Append<'_>) -> Result<Appended> {
        self.store(append.key).append(append)
    }

    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>> {
        let mut all = Vec::new();
        for store in &self.stores {
            all.extend(store.list(phase, after, limit)?);
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all.truncate(limit);
        Ok(all)
    }

    fn key_of(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        // A reference is derived from its key by a hash: it does not name its shard, so ask
        // every store (webhooks are rare next to charges).
        for store in &self.stores {
            if let Some(key) = store.key_of(reference)? {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        let mut all = Vec::new();
        for store in &self.stores {
            all.extend(store.due(now, limit)?);
        }
        all.sort();
        all.truncate(limit);
        Ok(all)
    }
}
