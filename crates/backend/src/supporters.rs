//! Customer-service supporters (the staff behind a store, `GET /supporters?store_id=` of the app API)
//! managed with the admin API. The app API adds the ones listed in the configuration.
//!
//! * Embedded: table `supporters` (store_id, seller_id, appid, name, appname).
//! * Redis: hash `banter_supporters_<store_id>`, field seller id → JSON `{"appid","name","appname"}`
//!   (GoBelieve keeps sellers in its own MySQL database, which banter does not read).

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::embedded::Embedded;
use crate::redis_backend::RedisBackend;
use crate::BackendError;

/// One supporter of a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supporter {
    /// The store (customer-service desk) the supporter answers for.
    pub store_id: i64,
    /// The supporter's uid.
    pub seller_id: i64,
    /// The supporter's app (usually the customer-service app, `server.kefu_appid`).
    pub appid: i64,
    #[serde(default)]
    pub name: String,
    /// Name of the supporter's app, shown by the SDK.
    #[serde(default)]
    pub appname: String,
}

/// Most supporters one store may have.
pub const MAX_SUPPORTERS_PER_STORE: usize = 1000;

pub(crate) fn check(store_id: i64, list: &[Supporter]) -> Result<(), BackendError> {
    if store_id <= 0 {
        return Err(BackendError::InvalidArgument(
            "`store_id` must be > 0".into(),
        ));
    }
    if list.len() > MAX_SUPPORTERS_PER_STORE {
        return Err(BackendError::InvalidArgument(format!(
            "at most {MAX_SUPPORTERS_PER_STORE} supporters per store"
        )));
    }
    for s in list {
        if s.store_id != store_id || s.seller_id <= 0 || s.appid <= 0 {
            return Err(BackendError::InvalidArgument(
                "each supporter needs the request's store_id and a seller_id and appid > 0".into(),
            ));
        }
        if s.name.len() > 256 || s.appname.len() > 256 {
            return Err(BackendError::InvalidArgument(
                "supporter names are at most 256 bytes".into(),
            ));
        }
    }
    Ok(())
}

impl Embedded {
    pub(crate) async fn set_supporters(
        &self,
        store_id: i64,
        list: &[Supporter],
    ) -> Result<(), BackendError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM supporters WHERE store_id = ?1")
            .bind(store_id)
            .execute(&mut *tx)
            .await?;
        for s in list {
            sqlx::query(
                "INSERT INTO supporters (store_id, seller_id, appid, name, appname) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (store_id, seller_id) DO UPDATE SET appid = excluded.appid,
                   name = excluded.name, appname = excluded.appname",
            )
            .bind(store_id)
            .bind(s.seller_id)
            .bind(s.appid)
            .bind(&s.name)
            .bind(&s.appname)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn supporters(&self, store_id: i64) -> Result<Vec<Supporter>, BackendError> {
        let rows = sqlx::query(
            "SELECT seller_id, appid, name, appname FROM supporters WHERE store_id = ?1 ORDER BY seller_id",
        )
        .bind(store_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Supporter {
                    store_id,
                    seller_id: row.try_get("seller_id")?,
                    appid: row.try_get("appid")?,
                    name: row.try_get("name")?,
                    appname: row.try_get("appname")?,
                })
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSupporter {
    appid: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    appname: String,
}

fn key(store_id: i64) -> String {
    format!("banter_supporters_{store_id}")
}

impl RedisBackend {
    pub(crate) async fn set_supporters(
        &self,
        store_id: i64,
        list: &[Supporter],
    ) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        pipe.atomic().del(key(store_id)).ignore();
        for s in list {
            let v = serde_json::to_string(&StoredSupporter {
                appid: s.appid,
                name: s.name.clone(),
                appname: s.appname.clone(),
            })
            .map_err(|e| BackendError::Internal(format!("encoding a supporter: {e}")))?;
            pipe.hset(key(store_id), s.seller_id, v).ignore();
        }
        pipe.query_async::<()>(&mut self.connection()).await?;
        Ok(())
    }

    pub(crate) async fn supporters(&self, store_id: i64) -> Result<Vec<Supporter>, BackendError> {
        let all: Vec<(String, String)> = self.connection().hgetall(key(store_id)).await?;
        let mut out = Vec::with_capacity(all.len());
        for (seller, v) in all {
            let seller_id = seller.trim().parse::<i64>().map_err(|_| {
                BackendError::Corrupt(format!(
                    "{} has a non-integer field {seller:?}",
                    key(store_id)
                ))
            })?;
            let s: StoredSupporter = serde_json::from_str(&v).map_err(|e| {
                BackendError::Corrupt(format!("{} field {seller}: {e}", key(store_id)))
            })?;
            out.push(Supporter {
                store_id,
                seller_id,
                appid: s.appid,
                name: s.name,
                appname: s.appname,
            });
        }
        out.sort_by_key(|s| s.seller_id);
        Ok(out)
    }
}
