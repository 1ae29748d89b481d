//! Image dimensions (read from the header only) and thumbnails, with the `image` crate. Both are
//! CPU work: callers run them on the blocking pool. Decoding is bounded by the configured pixel limit,
//! so a small file claiming huge dimensions (a decompression bomb) is refused before any allocation.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// A thumbnail request: `<url>@<w>w_<h>h_<c>c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThumbSpec {
    pub width: u32,
    pub height: u32,
    /// `1c`: fill the box exactly, cropping the centre; `0c`: fit inside it, keeping the aspect.
    pub crop: bool,
}

impl ThumbSpec {
    /// What the SDKs display in a chat bubble (`@256w_256h_0c`).
    pub const BUBBLE: ThumbSpec = ThumbSpec {
        width: 256,
        height: 256,
        crop: false,
    };

    /// Parses `<w>w_<h>h_<c>c`.
    pub fn parse(s: &str) -> Option<ThumbSpec> {
        let (w, rest) = s.split_once("w_")?;
        let (h, c) = rest.split_once("h_")?;
        let crop = match c {
            "0c" => false,
            "1c" => true,
            _ => return None,
        };
        let num = |v: &str| -> Option<u32> {
            if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v.parse().ok()
        };
        Some(ThumbSpec {
            width: num(w)?,
            height: num(h)?,
            crop,
        })
    }

    /// `<w>w_<h>h_<c>c`.
    pub fn suffix(&self) -> String {
        format!("{}w_{}h_{}c", self.width, self.height, u8::from(self.crop))
    }
}

/// Why an image is refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageProblem {
    #[error("the image is not readable: {0}")]
    Unreadable(String),
    #[error("the image is {width}x{height} pixels, more than the limit of {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
}

fn limits(max_pixels: u64) -> Limits {
    let mut l = Limits::default();
    let edge = u32::try_from(max_pixels.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
    l.max_image_width = Some(edge);
    l.max_image_height = Some(edge);
    // RGBA at 8 bits (16 for some PNGs) plus the decoder's working buffers.
    l.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    l
}

fn check_pixels(width: u32, height: u32, limit: u64) -> Result<(), ImageProblem> {
    if u64::from(width) * u64::from(height) > limit {
        return Err(ImageProblem::TooManyPixels {
            width,
            height,
            limit,
        });
    }
    Ok(())
}

/// Width and height of the image file at `path` (header only), checked against `max_pixels`.
pub fn dimensions(path: &Path, max_pixels: u64) -> Result<(u32, u32), ImageProblem> {
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| ImageProblem::Unreadable(e.to_string()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ImageProblem::Unreadable(e.to_string()))?;
    if w == 0 || h == 0 {
        return Err(ImageProblem::Unreadable("zero width or height".into()));
    }
    check_pixels(w, h, max_pixels)?;
    Ok((w, h))
}

/// The extension of a thumbnail of an image stored as `src_ext`: JPEG stays JPEG, everything else
/// (which may have transparency) becomes PNG.
pub fn thumb_ext(src_ext: &str) -> &'static str {
    if src_ext == "jpg" {
        "jpg"
    } else {
        "png"
    }
}

/// A thumbnail of `data` for `spec`, encoded as [`thumb_ext`] of `src_ext`. Never upscales: an image
/// smaller than the box keeps its size (cropped to the box's aspect for `1c`).
pub fn thumbnail(
    data: &[u8],
    src_ext: &str,
    spec: ThumbSpec,
    max_pixels: u64,
) -> Result<Vec<u8>, ImageProblem> {
    let mut reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| ImageProblem::Unreadable(e.to_string()))?;
    reader.limits(limits(max_pixels));
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ImageProblem::Unreadable(e.to_string()))?;
    check_pixels(w, h, max_pixels)?;
    let mut reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| ImageProblem::Unreadable(e.to_string()))?;
    reader.limits(limits(max_pixels));
    let img = reader
        .decode()
        .map_err(|e| ImageProblem::Unreadable(e.to_string()))?;
    let out = resize(img, spec);
    let mut buf = Cursor::new(Vec::new());
    let res = if thumb_ext(src_ext) == "jpg" {
        DynamicImage::ImageRgb8(out.to_rgb8()).write_to(&mut buf, ImageFormat::Jpeg)
    } else {
        out.write_to(&mut buf, ImageFormat::Png)
    };
    res.map_err(|e| ImageProblem::Unreadable(format!("encoding the thumbnail: {e}")))?;
    Ok(buf.into_inner())
}

fn resize(img: DynamicImage, spec: ThumbSpec) -> DynamicImage {
    let (iw, ih) = (img.width(), img.height());
    let (bw, bh) = (spec.width.max(1), spec.height.max(1));
    if spec.crop {
        // Shrink the box (keeping its aspect) until it fits the image, then fill it.
        let f = (f64::from(iw) / f64::from(bw))
            .min(f64::from(ih) / f64::from(bh))
            .min(1.0);
        let w = ((f64::from(bw) * f).round() as u32).max(1);
        let h = ((f64::from(bh) * f).round() as u32).max(1);
        img.resize_to_fill(w, h, FilterType::Triangle)
    } else if iw <= bw && ih <= bh {
        img
    } else {
        img.resize(bw, bh, FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 7, 255])
        });
        let mut buf = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut buf, ImageFormat::Png)
            .expect("encode");
        buf.into_inner()
    }

    fn dims(data: &[u8]) -> (u32, u32) {
        image::load_from_memory(data)
            .expect("decode")
            .to_rgba8()
            .dimensions()
    }

    #[test]
    fn parses_suffixes() {
        assert_eq!(
            ThumbSpec::parse("128w_64h_1c"),
            Some(ThumbSpec {
                width: 128,
                height: 64,
                crop: true
            })
        );
        assert_eq!(ThumbSpec::parse("256w_256h_0c"), Some(ThumbSpec::BUBBLE));
        for bad in [
            "",
            "w_h_0c",
            "12w_12h_2c",
            "-1w_3h_0c",
            "1w_3h",
            "99999999w_1h_0c",
        ] {
            assert_eq!(ThumbSpec::parse(bad), None, "{bad}");
        }
        assert_eq!(ThumbSpec::BUBBLE.suffix(), "256w_256h_0c");
    }

    #[test]
    fn fits_and_fills() {
        let src = png(600, 300);
        let fit = thumbnail(&src, "png", ThumbSpec::BUBBLE, 1 << 30).expect("fit");
        assert_eq!(dims(&fit), (256, 128));
        let spec = ThumbSpec {
            width: 128,
            height: 128,
            crop: true,
        };
        let fill = thumbnail(&src, "png", spec, 1 << 30).expect("fill");
        assert_eq!(dims(&fill), (128, 128));
        let small = thumbnail(&png(40, 20), "png", ThumbSpec::BUBBLE, 1 << 30).expect("small");
        assert_eq!(dims(&small), (40, 20));
    }

    #[test]
    fn refuses_oversized_and_garbage() {
        let src = png(100, 100);
        assert!(matches!(
            thumbnail(&src, "png", ThumbSpec::BUBBLE, 5000),
            Err(ImageProblem::TooManyPixels { .. })
        ));
        assert!(matches!(
            thumbnail(
                b"\x89PNG\r\n\x1a\nnot really",
                "png",
                ThumbSpec::BUBBLE,
                1 << 30
            ),
            Err(ImageProblem::Unreadable(_))
        ));
    }
}
