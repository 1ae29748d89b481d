//! Loading any role's configuration: a TOML file, `BANTER_<SECTION>__<KEY>` environment variables and
//! command-line options, merged in that order of precedence (later wins), with the source of every value
//! kept ([`Sources`]) and every problem reported at once ([`ConfigError`]), each with its file and line,
//! environment variable or option, and a "did you mean" for near-miss keys and values.
//!
//! Environment values are read as the type of the key they set (`BANTER_SERVER__TCP=63000` is the string
//! `"63000"`, `BANTER_SERVER__MAX_INFLIGHT=7` the integer 7). A `BANTER_*` variable that names no key is
//! an error, including one-underscore typos such as `BANTER_SERVER_TCP`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// `BANTER_*` variables that are not configuration keys (read by options of the command line or by
/// the test suites), so they are not reported as unknown keys.
pub const NON_CONFIG_VARS: &[&str] = &[
    "BANTER_IMS_SECRET",
    "BANTER_API_SECRET",
    "BANTER_BIN",
    "BANTER_KEEP_TEST_DIR",
    "BANTER_STORE_CRASH_CHILD_DIR",
    "BANTER_STORE_CRASH_ROUND",
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// A line of the configuration file.
    File { path: PathBuf, line: usize },
    /// An environment variable.
    Env(String),
    /// A command-line option.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(flag) => write!(f, "option {flag}"),
        }
    }
}

/// The source of every value that did not come from the defaults, by dotted key (`server.tcp`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    /// Where `key` (or the closest enclosing key that was set) came from.
    pub fn of(&self, key: &str) -> Source {
        let mut k = key;
        loop {
            if let Some(s) = self.0.get(k) {
                return s.clone();
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return Source::Default,
            }
        }
    }

    fn set(&mut self, key: String, source: Source) {
        self.0.insert(key, source);
    }
}

/// One problem of a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub source: Source,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Default => f.write_str(&self.message),
            s => write!(f, "{s}: {}", self.message),
        }
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        if n > 1 {
            writeln!(f, "{n} configuration problems:")?;
        }
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if n > 1 {
                f.write_str("  ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A value set on the command line: `key` is dotted (`server.tcp`), `flag` the option's name.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
    pub flag: String,
}

impl Override {
    /// A string-valued option.
    pub fn string(key: &str, flag: &str, value: impl Into<String>) -> Override {
        Override {
            key: key.into(),
            value: toml::Value::String(value.into()),
            flag: flag.into(),
        }
    }
}

/// A loaded configuration and where its values came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub value: T,
    pub sources: Sources,
}

/// Loads a `T` from `file` (or nothing), `env` (`BANTER_*` entries) and `overrides`. `validate` adds
/// semantic problems; each of its messages should start with the dotted key it is about, so the
/// problem can name that key's source.
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[Override],
    validate: impl FnOnce(&T) -> Vec<String>,
) -> Result<Loaded<T>, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let (text, name) = match file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.to_path_buf()),
            Err(e) => {
                return Err(ConfigError(vec![Problem {
                    source: Source::Default,
                    message: format!("cannot read config file {}: {e}", p.display()),
                }]))
            }
        },
        None => (String::new(), PathBuf::from("<config>")),
    };
    load_str(&text, &name, env, overrides, validate)
}

/// [`load`] on a file's text; `name` is how problems name the file.
pub fn load_str<T>(
    text: &str,
    name: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[Override],
    validate: impl FnOnce(&T) -> Vec<String>,
) -> Result<Loaded<T>, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut problems = Vec::new();
    let mut sources = Sources::default();
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            return Err(ConfigError(vec![Problem {
                source: Source::File {
                    path: name.to_path_buf(),
                    line,
                },
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    if let Ok(doc) = toml::de::DeTable::parse(text) {
        record_lines(doc.get_ref(), "", text, name, &mut sources);
    }
    let schema = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    // Raw environment values, to retry a key that is absent from the defaults (an optional one) as a
    // string when its typed reading was refused.
    let mut raw_env: BTreeMap<String, String> = BTreeMap::new();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("BANTER_") && !NON_CONFIG_VARS.contains(&k.as_str()))
        .collect();
    env.sort();
    for (var, raw) in env {
        let source = Source::Env(var.clone());
        let Some(path) = env_path(&var) else {
            problems.push(Problem {
                source,
                message: "not a configuration key (BANTER_<SECTION>__<KEY>, with two underscores between the parts)".into(),
            });
            continue;
        };
        let value = match lookup(&schema, &path) {
            Some(default) => match typed(default, &raw) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem {
                        source,
                        message: format!("{}: {e}", path.join(".")),
                    });
                    continue;
                }
            },
            None => {
                raw_env.insert(path.join("."), raw.clone());
                guess(&raw)
            }
        };
        match set_path(&mut table, &path, value) {
            Ok(()) => sources.set(path.join("."), source),
            Err(e) => problems.push(Problem { source, message: e }),
        }
    }
    for o in overrides {
        let path: Vec<String> = o.key.split('.').map(str::to_owned).collect();
        let source = Source::Flag(o.flag.clone());
        match set_path(&mut table, &path, o.value.clone()) {
            Ok(()) => sources.set(o.key.clone(), source),
            Err(e) => problems.push(Problem { source, message: e }),
        }
    }
    // Deserialize; a key that is refused is reported and removed (it then takes its default, every
    // section being `#[serde(default)]`), and the rest is read again, so every problem is found.
    let mut value = None;
    for _ in 0..256 {
        let de = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(e) => {
                let mut key = key_path(e.path());
                let inner = e.into_inner();
                let message = inner.message().to_string();
                if let Some(field) = backticked(&message, "unknown field `") {
                    if key.last().map(String::as_str) != Some(field.as_str()) {
                        key.push(field);
                    }
                }
                let dotted = key.join(".");
                if let Some(raw) = raw_env.remove(&dotted) {
                    if message.starts_with("invalid type") {
                        let _ = set_path(&mut table, &key, toml::Value::String(raw));
                        continue;
                    }
                }
                let source = sources.of(&dotted);
                problems.push(Problem {
                    message: describe(&dotted, &message, &source, &schema),
                    source,
                });
                if key.is_empty() || !remove_path(&mut table, &key) {
                    break;
                }
            }
        }
    }
    if let Some(v) = &value {
        for message in validate(v) {
            let source = message
                .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
                .find(|w| {
                    w.contains('.')
                        && w.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                })
                .map(|k| sources.of(k))
                .unwrap_or(Source::Default);
            problems.push(Problem { source, message });
        }
    }
    match value {
        Some(value) if problems.is_empty() => Ok(Loaded { value, sources }),
        _ => Err(ConfigError(problems)),
    }
}

/// The message of a refused key, with a "did you mean" for a near miss.
fn describe(key: &str, message: &str, source: &Source, schema: &toml::Table) -> String {
    if let Some(field) = backticked(message, "unknown field `") {
        let mut out = format!("unknown key `{key}`");
        if let Source::Env(var) = source {
            if let Some(fix) = env_suggestion(var, schema) {
                out.push_str(&format!(" (did you mean {fix}?)"));
                return out;
            }
        }
        if let Some(best) = closest(&field, &expected(message)) {
            let parent = key
                .rsplit_once('.')
                .map(|(p, _)| format!("{p}."))
                .unwrap_or_default();
            out.push_str(&format!(" (did you mean `{parent}{best}`?)"));
        } else if let Some(exp) = message.split_once(", expected ") {
            out.push_str(&format!("; expected {}", exp.1));
        }
        return out;
    }
    if let Some(variant) = backticked(message, "unknown variant `") {
        let allowed = expected(message);
        let mut out = format!(
            "{key}: {variant:?} is not one of {}",
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(best) = closest(&variant, &allowed) {
            out.push_str(&format!(" (did you mean {best:?}?)"));
        }
        return out;
    }
    if key.is_empty() {
        message.to_string()
    } else {
        format!("{key}: {message}")
    }
}

/// The text between `prefix` and the next backtick.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// The backticked names after "expected" in a serde message.
fn expected(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected") else {
        return Vec::new();
    };
    list.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// The candidate closest to `word`, when it is close enough to be a typo.
fn closest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(word, c), c))
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

/// A variable with one `_` where two were meant (`BANTER_SERVER_TCP`): the spelling that names a key.
fn env_suggestion(var: &str, schema: &toml::Table) -> Option<String> {
    let rest = var.strip_prefix("BANTER_")?;
    let bytes: Vec<usize> = rest.match_indices('_').map(|(i, _)| i).collect();
    for i in bytes {
        let candidate = format!("BANTER_{}_{}", &rest[..i], &rest[i..]);
        if candidate.contains("___") {
            continue;
        }
        if let Some(path) = env_path(&candidate) {
            if lookup(schema, &path).is_some() {
                return Some(candidate);
            }
        }
    }
    None
}

/// `BANTER_AUTH__JWT__SECRET` → `["auth", "jwt", "secret"]`.
fn env_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix("BANTER_")?;
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    (!path
        .iter()
        .any(|p| p.is_empty() || p.starts_with('_') || p.ends_with('_')))
    .then_some(path)
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        toml::Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}

/// Reads `raw` as the type of `default`.
fn typed(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    match default {
        V::String(_) => Ok(V::String(raw.to_string())),
        V::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(V::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        V::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(V::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        V::Boolean(_) => match raw.trim() {
            "true" | "1" => Ok(V::Boolean(true)),
            "false" | "0" => Ok(V::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        V::Array(items) => {
            let t = raw.trim();
            if t.starts_with('[') {
                return match guess(t) {
                    V::Array(a) => Ok(V::Array(a)),
                    _ => Err(format!("expected a TOML array, got {raw:?}")),
                };
            }
            let element = items.first().cloned().unwrap_or(V::String(String::new()));
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| typed(&element, s))
                .collect::<Result<Vec<_>, _>>()
                .map(V::Array)
        }
        V::Table(_) => Err("is a section: set its keys (…__KEY)".into()),
        V::Datetime(_) => Ok(guess(raw)),
    }
}

/// A value of unknown type: TOML when it parses as a value, else the plain string.
fn guess(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Sets `table[path[0]][path[1]]…` to `value`, creating tables on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => match table
            .entry(first.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => set_path(t, rest, value),
            _ => Err(format!("`{first}` is not a section")),
        },
    }
}

fn remove_path(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(toml::Value::Table(t)) => remove_path(t, rest),
            _ => false,
        },
    }
}

/// The map keys of a serde path, up to the first sequence index.
fn key_path(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    let mut out = Vec::new();
    for seg in path.iter() {
        match seg {
            Segment::Map { key } => out.push(key.clone()),
            Segment::Enum { .. } => {}
            Segment::Seq { .. } | Segment::Unknown => break,
        }
    }
    out
}

/// Records the line of every key of the file.
fn record_lines(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    text: &str,
    file: &Path,
    sources: &mut Sources,
) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        sources.set(
            key.clone(),
            Source::File {
                path: file.to_path_buf(),
                line: line_of(text, k.span().start),
            },
        );
        if let Some(t) = v.get_ref().as_table() {
            record_lines(t, &key, text, file, sources);
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        server: DemoServer,
        name: String,
    }

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct DemoServer {
        tcp: String,
        port: u16,
        secret: Option<String>,
        list: Vec<String>,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn every_problem_with_its_line() {
        let text = "name = \"x\"\n[server]\nprot = 1\ntcp = 5\nport = \"high\"\n";
        let e =
            load_str::<Demo>(text, Path::new("a.toml"), Vec::new(), &[], |_| vec![]).unwrap_err();
        let s = e.to_string();
        assert_eq!(e.0.len(), 3, "{s}");
        assert!(
            s.contains("a.toml:3: unknown key `server.prot` (did you mean `server.port`?)"),
            "{s}"
        );
        assert!(
            s.contains("a.toml:4: server.tcp: invalid type: integer `5`"),
            "{s}"
        );
        assert!(s.contains("a.toml:5: server.port: invalid type"), "{s}");
    }

    #[test]
    fn env_values_take_the_type_of_their_key() {
        let l = load_str::<Demo>(
            "",
            Path::new("a.toml"),
            env(&[
                ("BANTER_SERVER__TCP", "63000"),
                ("BANTER_SERVER__PORT", "7"),
                ("BANTER_SERVER__SECRET", "123"),
                ("BANTER_SERVER__LIST", "a, b"),
                ("BANTER_NAME", "n"),
                ("OTHER", "x"),
            ]),
            &[],
            |_| vec![],
        )
        .unwrap();
        assert_eq!(l.value.server.tcp, "63000");
        assert_eq!(l.value.server.port, 7);
        assert_eq!(l.value.server.secret.as_deref(), Some("123"));
        assert_eq!(l.value.server.list, vec!["a", "b"]);
        assert_eq!(
            l.sources.of("server.tcp"),
            Source::Env("BANTER_SERVER__TCP".into())
        );
    }

    #[test]
    fn unknown_env_vars_are_errors() {
        let e = load_str::<Demo>(
            "",
            Path::new("a.toml"),
            env(&[("BANTER_SERVER_TCP", "1"), ("BANTER_SERVER__PORT", "x")]),
            &[],
            |_| vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("environment variable BANTER_SERVER_TCP: unknown key `server_tcp` (did you mean BANTER_SERVER__TCP?)"), "{e}");
        assert!(
            e.contains(
                "environment variable BANTER_SERVER__PORT: server.port: expected an integer"
            ),
            "{e}"
        );
    }

    #[test]
    fn overrides_win_and_are_named() {
        let l = load_str::<Demo>(
            "[server]\ntcp = \"a\"\n",
            Path::new("a.toml"),
            env(&[("BANTER_SERVER__TCP", "b")]),
            &[Override::string("server.tcp", "--tcp", "c")],
            |d| vec![format!("server.tcp is {}", d.server.tcp)],
        )
        .unwrap_err();
        assert_eq!(l.to_string(), "option --tcp: server.tcp is c");
    }
}
