//! Media URLs and object keys. An upload of user `uid` of app `appid` with SHA-256 `h` stored as
//! extension `ext` is
//!
//! * URL path (below the app API prefix): `/<kind>/<appid>/<uid>/<h>.<ext>` (`kind` = `images`,
//!   `audios` or `files`; any kind's path reaches the same object);
//! * object key: `<appid>/<uid>/<h>.<ext>`;
//! * a thumbnail, `…/<h>.<ext>@<w>w_<h>h_<c>c[.<ext2>]`: key `<appid>/<uid>/thumbs/<h>_<w>x<h>_<c>.<ext3>`.
//!
//! Everything a user uploaded lives under `<appid>/<uid>/`, so deleting a user's media is one prefix
//! deletion and their quota is one prefix's size. The same bytes uploaded again by the same user map
//! to the same key and are stored once.

use crate::imaging::{thumb_ext, ThumbSpec};
use crate::types::{self, Kind, MediaType};

/// A stored upload (or one of its thumbnails) named by a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: Kind,
    pub appid: i64,
    pub uid: i64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub media_type: &'static MediaType,
    pub thumb: Option<ThumbSpec>,
}

fn positive(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&v| v > 0)
}

impl MediaRef {
    /// A stored original.
    pub fn new(
        kind: Kind,
        appid: i64,
        uid: i64,
        sha256: String,
        t: &'static MediaType,
    ) -> MediaRef {
        MediaRef {
            kind,
            appid,
            uid,
            sha256,
            media_type: t,
            thumb: None,
        }
    }

    /// Parses `<kind>/<appid>/<uid>/<name>` (the URL path below the prefix, without the leading `/`).
    pub fn parse(path: &str) -> Option<MediaRef> {
        let mut parts = path.split('/');
        let kind = Kind::from_segment(parts.next()?)?;
        let appid = positive(parts.next()?)?;
        let uid = positive(parts.next()?)?;
        let name = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let (base, thumb) = match name.split_once('@') {
            Some((base, spec)) => {
                // An optional extension after the spec (`@128w_128h_1c.jpg`) is cosmetic.
                let spec = spec.split_once('.').map_or(spec, |(s, _)| s);
                (base, Some(ThumbSpec::parse(spec)?))
            }
            None => (name, None),
        };
        let (sha, ext) = base.split_once('.')?;
        if sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        Some(MediaRef {
            kind,
            appid,
            uid,
            sha256: sha.to_string(),
            media_type: types::by_ext(ext)?,
            thumb,
        })
    }

    /// `<appid>/<uid>`: the prefix of everything this user uploaded.
    pub fn user_prefix(appid: i64, uid: i64) -> String {
        format!("{appid}/{uid}")
    }

    /// The original's object key.
    pub fn object_key(&self) -> String {
        format!(
            "{}/{}/{}.{}",
            self.appid, self.uid, self.sha256, self.media_type.ext
        )
    }

    /// The thumbnail's object key and content type, when this names a thumbnail.
    pub fn thumb_key(&self) -> Option<(String, &'static MediaType)> {
        let spec = self.thumb?;
        let ext = thumb_ext(self.media_type.ext);
        Some((
            format!(
                "{}/{}/thumbs/{}_{}x{}_{}.{}",
                self.appid,
                self.uid,
                self.sha256,
                spec.width,
                spec.height,
                u8::from(spec.crop),
                ext
            ),
            types::by_ext(ext)?,
        ))
    }

    /// The URL path below the prefix: `/<kind>/<appid>/<uid>/<sha256>.<ext>[@spec]`.
    pub fn src(&self) -> String {
        let mut s = format!(
            "/{}/{}/{}/{}.{}",
            self.kind.segment(),
            self.appid,
            self.uid,
            self.sha256,
            self.media_type.ext
        );
        if let Some(t) = self.thumb {
            s.push('@');
            s.push_str(&t.suffix());
        }
        s
    }

    /// The same media named as thumbnail `spec`.
    pub fn with_thumb(&self, spec: ThumbSpec) -> MediaRef {
        MediaRef {
            thumb: Some(spec),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn round_trips() {
        let r = MediaRef::parse(&format!("images/7/1001/{H}.png")).expect("parses");
        assert_eq!((r.appid, r.uid, r.kind), (7, 1001, Kind::Image));
        assert_eq!(r.object_key(), format!("7/1001/{H}.png"));
        assert_eq!(r.src(), format!("/images/7/1001/{H}.png"));
        let t = MediaRef::parse(&format!("images/7/1001/{H}.jpg@128w_128h_1c.jpg")).expect("thumb");
        let (key, ty) = t.thumb_key().expect("thumb key");
        assert_eq!(key, format!("7/1001/thumbs/{H}_128x128_1.jpg"));
        assert_eq!(ty.mime, "image/jpeg");
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            format!("images/7/1001/{H}"),
            format!("images/0/1001/{H}.png"),
            format!("images/7/-1/{H}.png"),
            format!("images/7/1001/{H}.exe"),
            format!("images/7/1001/../{H}.png"),
            format!("videos/7/1001/{H}.png"),
            format!("images/7/1001/{H}.png/x"),
            "images/7/1001/abc.png".to_string(),
            format!("images/7/1001/{}.png", H.to_uppercase()),
            format!("images/7/1001/{H}.png@2w_2h_9c"),
        ] {
            assert_eq!(MediaRef::parse(&bad), None, "{bad}");
        }
    }
}
