//! Migration from GoBelieve: its `ims` storage format ([`format`]), a bounded-memory reader of
//! its data directories that reports and skips what it cannot read ([`reader`]), a writer and
//! generator of such directories from the format description ([`writer`], [`gen`]), the import
//! into a banter store ([`import`]) and the persisted translation of GoBelieve sync keys that
//! the store applies on a client's first sync ([`keymap`]), with the import's checkpoint ([`state`]). Procedure: `docs/migration.md`.

pub mod format;
pub mod gen;
pub mod import;
pub mod keymap;
pub mod reader;
pub mod state;
pub mod writer;

pub use import::{import, ImportError, ImportOptions, ImportReport, Progress};
pub use keymap::KeyMap;
pub use reader::{GbEntry, GbQueue, Item, Pos, Problem, ProblemKind, Source};
