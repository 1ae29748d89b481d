//! The local-disk backend through the `Media` façade: spooling, the type check, commit and
//! deduplication, ranged reads, thumbnails, usage and deletion, and spools that are abandoned.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;

use futures_util::TryStreamExt;
use media::{IngestError, Kind, Media, MediaConfig, MediaRef, ThumbSpec};

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 3]));
    let mut buf = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut buf, image::ImageFormat::Png)
        .expect("png");
    buf.into_inner()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn read(media: &Media, key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let stream = media
        .storage()
        .get(key, range)
        .await
        .expect("get")
        .expect("exists");
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("read");
    chunks.concat()
}

#[tokio::test]
async fn spool_commit_dedupe_read_thumbnail_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let media = Media::open(&MediaConfig::default(), dir.path()).expect("open");
    let data = png(300, 150);
    let mut stored = Vec::new();
    for _ in 0..2 {
        let mut spool = media.spool(Kind::Image).await.expect("spool");
        for chunk in data.chunks(1000) {
            spool.write(chunk).await.expect("write");
        }
        let done = spool.finish().await.expect("finish");
        stored.push(
            media
                .ingest(7, 1, Kind::Image, "image/png", done)
                .await
                .expect("ingest"),
        );
    }
    assert!(
        stored[0].created && !stored[1].created,
        "second copy not written"
    );
    assert_eq!(stored[0].media, stored[1].media);
    assert_eq!(stored[0].dimensions, Some((300, 150)));
    let key = stored[0].media.object_key();
    assert_eq!(read(&media, &key, 0..data.len() as u64).await, data);
    assert_eq!(read(&media, &key, 10..20).await, &data[10..20]);
    assert_eq!(count_files(&dir.path().join("media/objects")), 1);
    assert_eq!(
        count_files(&dir.path().join("media/tmp")),
        0,
        "spools consumed"
    );

    let thumb = stored[0].media.with_thumb(ThumbSpec::BUBBLE);
    let (tkey, ttype, info) = media.locate(&thumb).await.expect("locate").expect("made");
    assert_eq!(ttype.mime, "image/png");
    let bytes = read(&media, &tkey, 0..info.size).await;
    let img = image::load_from_memory(&bytes).expect("thumbnail decodes");
    assert_eq!((img.width(), img.height()), (256, 128));

    let usage = media.usage(7, 1).await.expect("usage");
    assert_eq!(usage, data.len() as u64 + info.size);
    let removed = media.delete_user(7, 1).await.expect("delete");
    assert_eq!((removed.objects, removed.bytes), (2, usage));
    assert_eq!(media.usage(7, 1).await.expect("usage"), 0);
    assert!(media
        .locate(&stored[0].media)
        .await
        .expect("locate")
        .is_none());
}

#[tokio::test]
async fn refused_and_abandoned_uploads_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = MediaConfig {
        max_audio_bytes: 10_000,
        ..MediaConfig::default()
    };
    let media = Media::open(&cfg, dir.path()).expect("open");
    let tmp = dir.path().join("media/tmp");
    // Over the limit.
    let mut spool = media.spool(Kind::Audio).await.expect("spool");
    assert!(spool.write(&[0u8; 6_000]).await.is_ok());
    assert!(matches!(
        spool.write(&[0u8; 6_000]).await,
        Err(media::SpoolError::TooLarge { limit: 10_000 })
    ));
    drop(spool);
    // Abandoned half-way.
    let mut spool = media.spool(Kind::File).await.expect("spool");
    spool.write(b"partial").await.expect("write");
    assert_eq!(count_files(&tmp), 1);
    drop(spool);
    // Lying about its type.
    let mut spool = media.spool(Kind::Image).await.expect("spool");
    spool.write(b"#!AMR\nnot an image").await.expect("write");
    let done = spool.finish().await.expect("finish");
    assert!(matches!(
        media.ingest(7, 2, Kind::Image, "image/png", done).await,
        Err(IngestError::Type(_))
    ));
    assert_eq!(count_files(&tmp), 0);
    assert_eq!(count_files(&dir.path().join("media/objects")), 0);
    // A spool file a crashed process left behind is removed when the storage opens again.
    std::fs::write(tmp.join("upload-1-00.part"), b"left over").expect("leftover");
    drop(media);
    let _reopened = Media::open(&cfg, dir.path()).expect("reopen");
    assert_eq!(count_files(&tmp), 0);
    assert!(MediaRef::parse("images/7/2/x.png").is_none());
}
