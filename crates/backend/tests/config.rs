//! The option structs as `banter.toml` sections: defaults, string-keyed app secrets, unknown keys.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::path::PathBuf;

use backend::{
    EmbeddedGroupOptions, EmbeddedOptions, JwtOptions, MysqlGroupOptions, RedisOptions,
    RedisPushOptions, WebhookOptions,
};

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

#[test]
fn group_and_push_sections() {
    let e = EmbeddedGroupOptions::default();
    assert_eq!(e.cache_groups, 100_000);
    assert_eq!(e.max_members, 100_000);
    let m = MysqlGroupOptions::default();
    assert_eq!((m.cache_groups, m.max_members), (100_000, 100_000));
    let r = RedisPushOptions::default();
    assert_eq!(
        (r.queue_capacity, r.batch, r.max_receivers_per_job),
        (100_000, 1000, 1000)
    );
    let w = WebhookOptions::default();
    assert_eq!(
        (w.queue_capacity, w.batch, w.max_receivers_per_job),
        (100_000, 100, 1000)
    );
    assert!(w.secret.is_none() && w.max_attempts > 0 && w.timeout_ms > 0);
    // Empty sections are the defaults, and the defaults print and reparse.
    assert_eq!(
        toml::from_str::<EmbeddedGroupOptions>("").expect("parse"),
        e
    );
    assert_eq!(toml::from_str::<MysqlGroupOptions>("").expect("parse"), m);
    assert_eq!(toml::from_str::<RedisPushOptions>("").expect("parse"), r);
    assert_eq!(toml::from_str::<WebhookOptions>("").expect("parse"), w);
    for printed in [
        toml::to_string(&e).expect("print"),
        toml::to_string(&m).expect("print"),
        toml::to_string(&r).expect("print"),
        toml::to_string(&w).expect("print"),
    ] {
        assert!(!printed.is_empty());
    }
    assert_eq!(
        toml::from_str::<WebhookOptions>(&toml::to_string(&w).expect("print")).expect("reparse"),
        w
    );

    let w: WebhookOptions = toml::from_str(
        "url = \"http://push:9000/hook\"\nsecret = \"hush\"\nmax_attempts = 7\nbatch = 10",
    )
    .expect("parse");
    assert_eq!(
        (w.url.as_str(), w.max_attempts, w.batch),
        ("http://push:9000/hook", 7, 10)
    );
    assert!(!format!("{w:?}").contains("hush"), "the secret is redacted");
    let m: MysqlGroupOptions = toml::from_str(
        "url = \"mysql://u:p@db/gobelieve\"\nredis_url = \"redis://r:6379/1\"\nmax_members = 5000",
    )
    .expect("parse");
    assert_eq!(m.max_members, 5000);
    assert_eq!(m.redis_url, "redis://r:6379/1");

    let err = toml::from_str::<EmbeddedGroupOptions>("max_member = 3").expect_err("unknown key");
    assert!(err.to_string().contains("max_member"), "{err}");
    assert!(toml::from_str::<RedisPushOptions>("queue = 3").is_err());
    assert!(toml::from_str::<WebhookOptions>("secrets = \"x\"").is_err());
    assert!(toml::from_str::<MysqlGroupOptions>("redis = \"x\"").is_err());
}
