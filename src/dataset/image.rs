//! Images stay encoded (JPEG, PNG, ...) from the shard to the encoder that needs them: decoding
//! is the expensive part of reading, and text encoders never need it.

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// An encoded image file, cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedImage(pub Bytes);

impl EncodedImage {
    /// The file format, guessed from the first bytes.
    pub fn format(&self) -> Option<ImageFormat> {
        image::guess_format(&self.0).ok()
    }

    /// Width and height from the header alone, without decoding the pixels.
    pub fn dimensions(&self) -> Result<(u32, u32), UnreadableImage> {
        Ok(reader(&self.0)?.into_dimensions()?)
    }

    /// Decodes the whole image.
    pub fn decode(&self) -> Result<DynamicImage, UnreadableImage> {
        decode_image(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why an encoded image does not decode: the reason a row's image is skipped.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableImage {
    #[error("empty file")]
    Empty,
    #[error("not an image format saeshare reads (JPEG, PNG, GIF, WebP, BMP)")]
    UnknownFormat,
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] image::ImageError),
}

/// Decodes an encoded image, refusing sizes no dataset image has (a decompression bomb or a
/// corrupt header would otherwise allocate gigabytes).
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, UnreadableImage> {
    Ok(reader(bytes)?.decode()?)
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, UnreadableImage> {
    if bytes.is_empty() {
        return Err(UnreadableImage::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    if reader.format().is_none() {
        return Err(UnreadableImage::UnknownFormat);
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(1 << 14);
    limits.max_image_height = Some(1 << 14);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    Ok(reader)
}
