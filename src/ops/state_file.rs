//! The state file (`--state-file`): the backend table as the operator left it, so a restart
//! loses nothing changed at run time. Written after every change to a temp file beside it,
//! fsynced, renamed over the old one (and the directory fsynced), so a crash leaves the old file
//! or the new one, never half of one. A file that cannot be read back is an error at start,
//! never silently replaced.
//!
//! Every pool's table is kept, by pool: the default pool's at the top level, as before pools
//! (a file without `pools` is read as the default pool's alone), the named pools' under
//! `pools`. A pool in the file that the configuration no longer has is skipped at start, with
//! a warning, and is gone from the file at the next change.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::{is_valid_id, is_valid_pool_name, BackendConfig, Scheme, DEFAULT_POOL};
use crate::upstream::{BackendState, BackendTable};

/// The format's version, the first key of the file: 1 holds the default pool alone (every file
/// before pools, and every file written without named pools, so an older lb-sync reads it);
/// 2 adds `pools`, which an older lb-sync refuses by its version rather than misread.
const VERSION: u32 = 1;
/// The version of a file with named pools.
const VERSION_WITH_POOLS: u32 = 2;

/// One backend in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedBackend {
    /// Its id.
    pub id: String,
    /// Host as configured.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight.
    pub weight: u32,
    /// `https` for an HTTPS backend; left out for `http` (and absent from older files).
    #[serde(default, skip_serializing_if = "Scheme::is_http")]
    pub scheme: Scheme,
    /// Enabled, disabled or draining.
    pub state: BackendState,
}

/// One pool's table in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPool {
    /// Backends numbered so far (`backend<N>`), so a restart never reuses an id.
    pub numbered: usize,
    /// The backends, in table order.
    pub backends: Vec<SavedBackend>,
}

/// The whole file: the default pool's table at the top level (where it was before pools), the
/// named pools' under `pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Format version (1, or 2 with named pools).
    pub version: u32,
    /// The default pool's backends numbered so far.
    pub numbered: usize,
    /// The default pool's backends, in table order.
    pub backends: Vec<SavedBackend>,
    /// Each named pool's table, by name (none in a version 1 file).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, SavedPool>,
}

impl SavedPool {
    /// The table as it is now.
    ///
    /// ```
    /// use lb_sync::config::BackendConfig;
    /// use lb_sync::ops::SavedPool;
    /// use lb_sync::upstream::BackendTable;
    /// let backends = [("a".to_string(), BackendConfig::new("127.0.0.1", 9001, 2))];
    /// let table = BackendTable::new("round_robin".parse().unwrap(), &backends, Default::default()).unwrap();
    /// table.drain("a").unwrap();
    /// let saved = SavedPool::of(&table);
    /// assert_eq!((saved.backends[0].weight, saved.backends[0].state.as_str()), (2, "draining"));
    /// ```
    pub fn of(table: &BackendTable) -> SavedPool {
        let snapshot = table.snapshot();
        SavedPool {
            numbered: table.numbered(),
            backends: snapshot
                .backends
                .iter()
                .map(|b| SavedBackend {
                    id: b.id.clone(),
                    host: b.host.clone(),
                    port: b.port,
                    weight: b.weight(),
                    scheme: b.scheme,
                    state: BackendState::of(b),
                })
                .collect(),
        }
    }

    /// The backends as `(id, config)`, to build a table from.
    pub fn backend_configs(&self) -> Vec<(String, BackendConfig)> {
        self.backends
            .iter()
            .map(|b| {
                (
                    b.id.clone(),
                    BackendConfig {
                        id: Some(b.id.clone()),
                        scheme: b.scheme,
                        ..BackendConfig::new(&b.host, b.port, b.weight)
                    },
                )
            })
            .collect()
    }

    /// Puts each backend of `table` in its saved state and keeps the id numbering.
    pub fn apply_states(&self, table: &BackendTable) {
        table.set_numbered_at_least(self.numbered);
        for saved in &self.backends {
            let _ = match saved.state {
                BackendState::Enabled => continue,
                BackendState::Disabled => table.set_enabled(&saved.id, false),
                BackendState::Draining => table.drain(&saved.id),
            };
        }
    }

    fn check(&self) -> Result<(), String> {
        let mut ids: Vec<&str> = Vec::new();
        for b in &self.backends {
            if !is_valid_id(&b.id) {
                return Err(format!("backend id '{}' is not allowed", b.id));
            }
            if ids.contains(&b.id.as_str()) {
                return Err(format!("backend id '{}' appears twice", b.id));
            }
            if b.port == 0 || b.weight == 0 || b.host.trim().is_empty() {
                return Err(format!("backend '{}': host, port 1-65535 and weight >= 1 are required", b.id));
            }
            ids.push(&b.id);
        }
        Ok(())
    }
}

impl SavedState {
    /// The tables as they are now, each pool's by name (`default`'s at the top level).
    pub fn of<'a>(tables: impl IntoIterator<Item = (&'a str, &'a BackendTable)>) -> SavedState {
        let mut default = SavedPool::default();
        let mut pools = BTreeMap::new();
        for (name, table) in tables {
            if name == DEFAULT_POOL {
                default = SavedPool::of(table);
            } else {
                pools.insert(name.to_string(), SavedPool::of(table));
            }
        }
        let version = if pools.is_empty() { VERSION } else { VERSION_WITH_POOLS };
        SavedState { version, numbered: default.numbered, backends: default.backends, pools }
    }

    /// Pool `name`'s saved table, if the file has one (`default`'s is the top level's, which
    /// every file has).
    pub fn pool(&self, name: &str) -> Option<SavedPool> {
        if name == DEFAULT_POOL {
            return Some(SavedPool { numbered: self.numbered, backends: self.backends.clone() });
        }
        self.pools.get(name).cloned()
    }

    fn check(&self) -> Result<(), String> {
        if self.version != VERSION && self.version != VERSION_WITH_POOLS {
            return Err(format!(
                "version {} (this lb-sync reads versions {VERSION} and {VERSION_WITH_POOLS})",
                self.version
            ));
        }
        SavedPool { numbered: self.numbered, backends: self.backends.clone() }.check()?;
        for (name, pool) in &self.pools {
            if !is_valid_pool_name(name) {
                return Err(format!("pool name '{name}' is not allowed"));
            }
            pool.check().map_err(|why| format!("pool '{name}': {why}"))?;
        }
        Ok(())
    }
}

/// Why a state file could not be read back.
#[derive(Debug)]
pub enum StateFileError {
    /// It exists but cannot be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// It is not a state file this program wrote: bad JSON, unknown keys, bad values.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for StateFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateFileError::Unreadable { path, error } => write!(f, "cannot read state file {}: {error}", path.display()),
            StateFileError::Corrupt { path, why } => write!(
                f,
                "state file {} is corrupt ({why}); it was left as it is: repair it, or move it away to start from the configured backends",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateFileError {}

/// The state file of a running balancer: one writer at a time.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    writing: Mutex<()>,
}

impl StateFile {
    /// The file at `path` (nothing is read or written yet).
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into(), writing: Mutex::new(()) }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file: `None` when it does not exist yet.
    pub fn load(&self) -> Result<Option<SavedState>, StateFileError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StateFileError::Unreadable { path: self.path.clone(), error }),
        };
        let corrupt = |why: String| StateFileError::Corrupt { path: self.path.clone(), why };
        let state: SavedState = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        state.check().map_err(corrupt)?;
        Ok(Some(state))
    }

    /// Writes every pool's table as it is now (`tables`: each pool's name and table; a pool
    /// no longer configured is no longer written). Changes are serialized, and each write
    /// reads the tables after taking the lock, so the file always ends with the latest state.
    pub fn save<'a>(&self, tables: impl IntoIterator<Item = (&'a str, &'a BackendTable)>) -> io::Result<()> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = serde_json::to_vec_pretty(&SavedState::of(tables)).map_err(io::Error::other)?;
        text.push(b'\n');
        write_atomically(&self.path, &text)
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "state file has no name"))?;
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    // The rename itself is durable only once the directory is.
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::AlgorithmKind;

    fn table() -> BackendTable {
        BackendTable::new(
            AlgorithmKind::RoundRobin,
            &[
                ("a".into(), BackendConfig::new("127.0.0.1", 9001, 1)),
                ("b".into(), BackendConfig::new("127.0.0.1", 9002, 2)),
            ],
            Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_saved_table_reads_back_with_every_change() {
        let path = std::env::temp_dir().join(format!("lb-sync-state-unit-{}.json", std::process::id()));
        let _ = fs::remove_file(&path);
        let file = StateFile::new(&path);
        assert!(file.load().unwrap().is_none(), "no file yet");
        let table = table();
        table.set_enabled("a", false).unwrap();
        table.drain("b").unwrap();
        table.set_weight("b", 7).unwrap();
        let added = table.add(&BackendConfig::new("127.0.0.1", 9003, 3)).unwrap();
        file.save([(DEFAULT_POOL, &table)]).unwrap();
        let saved = file.load().unwrap().unwrap();
        assert_eq!(saved, SavedState::of([(DEFAULT_POOL, &table)]));
        assert_eq!(saved.version, 1, "no named pool: the format older lb-syncs read");
        let default = saved.pool(DEFAULT_POOL).unwrap();
        let restored =
            BackendTable::new(AlgorithmKind::RoundRobin, &default.backend_configs(), Default::default()).unwrap();
        default.apply_states(&restored);
        assert_eq!(SavedState::of([(DEFAULT_POOL, &restored)]), saved);
        assert_eq!(restored.add(&BackendConfig::new("127.0.0.1", 9004, 1)).unwrap().id, "backend4");
        assert_eq!(added.id, "backend3");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_is_left_alone() {
        let path = std::env::temp_dir().join(format!("lb-sync-state-corrupt-{}.json", std::process::id()));
        fs::write(&path, "{\"version\": 1, \"backends\": [").unwrap();
        let error = StateFile::new(&path).load().unwrap_err().to_string();
        assert!(error.contains("is corrupt") && error.contains(&path.display().to_string()), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"version\": 1, \"backends\": [");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn each_pool_is_saved_and_read_back_by_name() {
        let path = std::env::temp_dir().join(format!("lb-sync-state-pools-{}.json", std::process::id()));
        let file = StateFile::new(&path);
        let (default, api) = (table(), table());
        api.drain("b").unwrap();
        api.add(&BackendConfig::new("127.0.0.1", 9003, 1)).unwrap();
        file.save([(DEFAULT_POOL, &default), ("api", &api)]).unwrap();
        let saved = file.load().unwrap().unwrap();
        assert_eq!(saved.version, 2);
        assert_eq!(saved.pool("api").unwrap(), SavedPool::of(&api));
        assert_eq!(saved.pool(DEFAULT_POOL).unwrap(), SavedPool::of(&default));
        assert!(saved.pool("web").is_none());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"pools\": {\n    \"api\": {"), "{text}");
        for (bad, why) in [
            (r#"{"version": 3, "numbered": 0, "backends": []}"#, "version 3"),
            (
                r#"{"version": 2, "numbered": 0, "backends": [], "pools": {"a b": {"numbered": 0, "backends": []}}}"#,
                "pool name 'a b'",
            ),
            (
                r#"{"version": 2, "numbered": 0, "backends": [], "pools": {"api": {"numbered": 0, "backends": [{"id": "x", "host": "h", "port": 0, "weight": 1, "state": "enabled"}]}}}"#,
                "pool 'api': backend 'x': host, port",
            ),
        ] {
            fs::write(&path, bad).unwrap();
            let error = file.load().unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        fs::remove_file(&path).unwrap();
    }
}
