//! Media types: the table of content types banter stores, sniffing of an upload's first bytes, and
//! the check of a client's claimed `Content-Type` against what the bytes are.
//!
//! Every stored object is named `<sha256>.<ext>`; the extension comes from this table and is the only
//! record of the content type, so a download's `Content-Type` is always one of these (never a value a
//! client chose). Bytes the table does not know are stored as `bin` (`application/octet-stream`),
//! which only `POST /files` accepts.

/// What an upload endpoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `POST /images`: PNG, JPEG, GIF, WebP or BMP.
    Image,
    /// `POST /audios`: voice clips (AMR, AAC, M4A, MP3, Ogg/Opus, WAV, FLAC, WebM).
    Audio,
    /// `POST /files`: anything.
    File,
}

impl Kind {
    /// The URL path segment of this kind (`images`, `audios`, `files`).
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Image => "images",
            Kind::Audio => "audios",
            Kind::File => "files",
        }
    }

    /// The kind of a URL path segment.
    pub fn from_segment(s: &str) -> Option<Kind> {
        match s {
            "images" => Some(Kind::Image),
            "audios" => Some(Kind::Audio),
            "files" => Some(Kind::File),
            _ => None,
        }
    }
}

/// Broad family of a stored type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Image,
    Audio,
    Video,
    Other,
}

/// One known content type.
#[derive(Debug, PartialEq, Eq)]
pub struct MediaType {
    /// Canonical MIME type, sent as `Content-Type` on download.
    pub mime: &'static str,
    /// File-name extension of stored objects of this type (unique in the table).
    pub ext: &'static str,
    pub family: Family,
    /// Other names clients use for the same type.
    pub aliases: &'static [&'static str],
}

const fn t(
    mime: &'static str,
    ext: &'static str,
    family: Family,
    aliases: &'static [&'static str],
) -> MediaType {
    MediaType {
        mime,
        ext,
        family,
        aliases,
    }
}

/// Every type banter stores under its own extension.
pub static TYPES: &[MediaType] = &[
    t("image/png", "png", Family::Image, &["image/x-png"]),
    t(
        "image/jpeg",
        "jpg",
        Family::Image,
        &["image/jpg", "image/pjpeg"],
    ),
    t("image/gif", "gif", Family::Image, &[]),
    t("image/webp", "webp", Family::Image, &[]),
    t(
        "image/bmp",
        "bmp",
        Family::Image,
        &["image/x-ms-bmp", "image/x-bmp"],
    ),
    t("audio/amr", "amr", Family::Audio, &["audio/x-amr"]),
    t(
        "audio/aac",
        "aac",
        Family::Audio,
        &["audio/x-aac", "audio/aacp"],
    ),
    t(
        "audio/mp4",
        "m4a",
        Family::Audio,
        &["audio/m4a", "audio/x-m4a"],
    ),
    t(
        "audio/mpeg",
        "mp3",
        Family::Audio,
        &["audio/mp3", "audio/mpeg3"],
    ),
    t(
        "audio/ogg",
        "ogg",
        Family::Audio,
        &["audio/opus", "application/ogg"],
    ),
    t(
        "audio/wav",
        "wav",
        Family::Audio,
        &["audio/x-wav", "audio/wave", "audio/vnd.wave"],
    ),
    t("audio/flac", "flac", Family::Audio, &["audio/x-flac"]),
    t("video/webm", "webm", Family::Video, &["audio/webm"]),
    t("video/mp4", "mp4", Family::Video, &["video/x-m4v"]),
    t("video/quicktime", "mov", Family::Video, &[]),
    t("video/x-matroska", "mkv", Family::Video, &[]),
    t("video/3gpp", "3gp", Family::Video, &["audio/3gpp"]),
    t("application/pdf", "pdf", Family::Other, &[]),
    t(
        "application/zip",
        "zip",
        Family::Other,
        &["application/x-zip-compressed"],
    ),
    t(
        "application/gzip",
        "gz",
        Family::Other,
        &["application/x-gzip"],
    ),
    t(
        "application/octet-stream",
        "bin",
        Family::Other,
        &["binary/octet-stream"],
    ),
];

/// `application/octet-stream`: bytes no sniffer recognises (files only).
pub fn octet_stream() -> &'static MediaType {
    by_ext("bin").unwrap_or(&TYPES[TYPES.len() - 1])
}

/// The type stored under extension `ext`.
pub fn by_ext(ext: &str) -> Option<&'static MediaType> {
    TYPES.iter().find(|m| m.ext == ext)
}

/// The type a MIME name (canonical or alias, any case, parameters ignored) stands for.
pub fn by_mime(mime: &str) -> Option<&'static MediaType> {
    let m = essence(mime);
    TYPES
        .iter()
        .find(|t| t.mime == m || t.aliases.iter().any(|a| *a == m))
}

/// `type/subtype` of a Content-Type header value, lower-cased, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Claimed types that say nothing about the content (what SDKs send when they do not know):
/// iOS posts voice clips and files as `application/plain`, Android's encrypted uploads send none.
pub fn is_generic(content_type: &str) -> bool {
    matches!(
        essence(content_type).as_str(),
        "" | "application/octet-stream"
            | "binary/octet-stream"
            | "application/plain"
            | "application/unknown"
            | "application/x-www-form-urlencoded"
    )
}

/// Bytes sniffed from the start of an upload (16 KiB is plenty for every signature used).
pub const SNIFF_LEN: usize = 16 * 1024;

/// What the first bytes of an upload are, when the table knows it.
pub fn sniff(head: &[u8]) -> Option<&'static MediaType> {
    if head.starts_with(b"#!AMR") {
        return by_ext("amr");
    }
    let found = infer::get(head)?;
    let mime = found.mime_type();
    if mime == "video/3gpp" || mime == "video/3gpp2" {
        return by_ext("3gp");
    }
    by_mime(mime)
}

/// Why an upload's content is refused (answered 415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeMismatch {
    #[error("the body is not {claimed} (its content is {actual})")]
    Lie {
        claimed: String,
        actual: &'static str,
    },
    #[error("{what} is not accepted here: {expected}")]
    WrongKind {
        what: String,
        expected: &'static str,
    },
}

fn describe(sniffed: Option<&'static MediaType>) -> &'static str {
    sniffed.map_or("of an unrecognised type", |t| t.mime)
}

/// Decides what an upload of `kind` whose client claimed `claimed` and whose first bytes sniff as
/// `sniffed` is stored as, or why it is refused:
/// * a claimed type the table knows must be what the bytes are (`image/png` must be a PNG);
/// * `images` accepts only images, `audios` only audio (a WebM or 3GP container counts as audio);
/// * `files` accepts anything; bytes nothing recognises are `application/octet-stream`.
pub fn resolve(
    kind: Kind,
    claimed: &str,
    sniffed: Option<&'static MediaType>,
) -> Result<&'static MediaType, TypeMismatch> {
    if !is_generic(claimed) {
        match by_mime(claimed) {
            Some(c) if Some(c) != sniffed && c.ext != "bin" => {
                return Err(TypeMismatch::Lie {
                    claimed: essence(claimed),
                    actual: describe(sniffed),
                })
            }
            Some(_) => {}
            None if kind != Kind::File => {
                return Err(TypeMismatch::WrongKind {
                    what: format!("content type {}", essence(claimed)),
                    expected: expected(kind),
                })
            }
            None => {}
        }
    }
    let ok = match (kind, sniffed) {
        (Kind::Image, Some(t)) => t.family == Family::Image,
        (Kind::Audio, Some(t)) => {
            t.family == Family::Audio || matches!(t.ext, "webm" | "3gp" | "mp4")
        }
        (Kind::File, _) => true,
        (_, None) => false,
    };
    if !ok {
        return Err(TypeMismatch::WrongKind {
            what: format!("content {}", describe(sniffed)),
            expected: expected(kind),
        });
    }
    Ok(sniffed.unwrap_or_else(octet_stream))
}

fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::Image => "an image (PNG, JPEG, GIF, WebP or BMP)",
        Kind::Audio => "audio (AMR, AAC, M4A, MP3, Ogg/Opus, WAV, FLAC, WebM or 3GP)",
        Kind::File => "any file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const AMR: &[u8] = b"#!AMR\n\x3c\x91";

    #[test]
    fn extensions_are_unique() {
        for (i, a) in TYPES.iter().enumerate() {
            for b in &TYPES[i + 1..] {
                assert_ne!(a.ext, b.ext);
                assert_ne!(a.mime, b.mime);
            }
        }
    }

    #[test]
    fn claimed_type_must_match_content() {
        let png = sniff(PNG);
        assert_eq!(png.map(|t| t.ext), Some("png"));
        assert_eq!(
            resolve(Kind::Image, "image/png", png).map(|t| t.ext),
            Ok("png")
        );
        assert!(matches!(
            resolve(Kind::Image, "image/jpeg", png),
            Err(TypeMismatch::Lie { .. })
        ));
        assert!(matches!(
            resolve(
                Kind::Image,
                "image/png",
                sniff(b"hello world, not an image")
            ),
            Err(TypeMismatch::Lie { .. })
        ));
        assert!(matches!(
            resolve(Kind::File, "image/png", sniff(b"plain text")),
            Err(TypeMismatch::Lie { .. })
        ));
    }

    #[test]
    fn generic_claims_take_the_sniffed_type() {
        let amr = sniff(AMR);
        assert_eq!(amr.map(|t| t.mime), Some("audio/amr"));
        assert_eq!(
            resolve(Kind::Audio, "application/plain", amr).map(|t| t.ext),
            Ok("amr")
        );
        assert_eq!(
            resolve(Kind::Audio, "audio/amr", amr).map(|t| t.ext),
            Ok("amr")
        );
        assert!(resolve(Kind::Audio, "", sniff(PNG)).is_err());
        assert!(resolve(Kind::Image, "", amr).is_err());
        assert_eq!(
            resolve(Kind::File, "", sniff(b"just bytes")).map(|t| t.ext),
            Ok("bin")
        );
        assert_eq!(
            resolve(Kind::File, "text/plain", sniff(b"just bytes")).map(|t| t.ext),
            Ok("bin")
        );
        assert!(resolve(Kind::Image, "text/plain", sniff(PNG)).is_err());
    }

    #[test]
    fn aliases_and_parameters() {
        assert_eq!(by_mime("Image/JPG; q=1").map(|t| t.ext), Some("jpg"));
        assert_eq!(by_mime("audio/x-m4a").map(|t| t.ext), Some("m4a"));
        assert!(is_generic("application/octet-stream; charset=binary"));
    }
}
