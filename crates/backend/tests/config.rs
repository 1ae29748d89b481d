//! The option structs as `banter.toml` sections: defaults, string-keyed app secrets, unknown keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use backend::{EmbeddedOptions, JwtOptions, RedisOptions};

#[test]
fn defaults() {
    let e = EmbeddedOptions::default();
    assert_eq!(e.flush_interval_ms, 200);
    assert_eq!(e.path, PathBuf::from("data/backend.sqlite3"));
    assert_eq!(e.jwt, JwtOptions::default());
    let r = RedisOptions::default();
    assert_eq!(r.flush_interval_ms, 200);
    assert_eq!(r.url, "redis://127.0.0.1:6379/0");
    // An empty section is the default.
    assert_eq!(toml::from_str::<EmbeddedOptions>("").expect("parse"), e);
    assert_eq!(toml::from_str::<RedisOptions>("").expect("parse"), r);
}

#[test]
fn app_secrets_from_string_keys() {
    let text = r#"
        url = "redis://:pw@10.0.0.1:6380/2"
        flush_interval_ms = 50

        [jwt]
        secret = "global"

        [jwt.app_secrets]
        "7" = "seven"
        "12" = "twelve"
    "#;
    let r: RedisOptions = toml::from_str(text).expect("parse");
    assert_eq!(r.url, "redis://:pw@10.0.0.1:6380/2");
    assert_eq!(r.flush_interval_ms, 50);
    assert_eq!(r.jwt.secret.as_deref(), Some("global"));
    assert_eq!(
        r.jwt.app_secrets,
        BTreeMap::from([(7, "seven".to_owned()), (12, "twelve".to_owned())])
    );

    // Debug output does not leak secrets.
    let debug = format!("{r:?}");
    assert!(
        !debug.contains("seven") && !debug.contains("global"),
        "{debug}"
    );

    // Round trip through TOML keeps everything.
    let printed = toml::to_string(&r).expect("print");
    assert!(
        printed.contains("\"7\" = \"seven\"") || printed.contains("7 = \"seven\""),
        "{printed}"
    );
    assert_eq!(
        toml::from_str::<RedisOptions>(&printed).expect("reparse"),
        r
    );
    // The default prints and reparses too (no secret line).
    let printed = toml::to_string(&EmbeddedOptions::default()).expect("print");
    assert!(!printed.contains("secret ="), "{printed}");
    assert_eq!(
        toml::from_str::<EmbeddedOptions>(&printed).expect("reparse"),
        EmbeddedOptions::default()
    );
}

#[test]
fn rejects_unknown_keys_and_bad_appids() {
    let err = toml::from_str::<EmbeddedOptions>("pathh = \"x\"").expect_err("unknown key");
    assert!(err.to_string().contains("pathh"), "{err}");
    let err = toml::from_str::<RedisOptions>("[jwt]\nsecrett = \"x\"").expect_err("unknown key");
    assert!(err.to_string().contains("secrett"), "{err}");
    let err = toml::from_str::<JwtOptions>("[app_secrets]\nseven = \"x\"").expect_err("bad appid");
    assert!(err.to_string().contains("seven"), "{err}");
}
