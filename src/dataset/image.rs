//! Images stay encoded (JPEG, PNG, ...) from the shard to the encoder that needs them: decoding
//! is the expensive part of reading, and text encoders never need it.

use bytes::Bytes;
use image::{DynamicImage, ImageBuffer, ImageFormat, ImageReader, Limits, Pixel};
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
/// corrupt header would otherwise allocate gigabytes). A 16-bit PNG becomes 8 bits a channel as
/// Pillow opens it ([`high_bytes`]). Transparency stays as alpha, a PNG's transparent colour
/// (`tRNS`) included, for the preprocessing to composite as transformers' `convert_to_rgb` does.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, UnreadableImage> {
    Ok(high_bytes(reader(bytes)?.decode()?))
}

/// A 16-bit image at 8 bits a channel, each value's high byte, as Pillow reads 16-bit RGB, RGBA
/// and grey-with-alpha PNGs. (16-bit grey without alpha Pillow opens as `I;16` and clips to 255
/// when converting, most of an image turning white; its high bytes are kept here too.)
fn high_bytes(image: DynamicImage) -> DynamicImage {
    fn high<P: Pixel<Subpixel = u16>, Q: Pixel<Subpixel = u8>>(
        image: ImageBuffer<P, Vec<u16>>,
    ) -> ImageBuffer<Q, Vec<u8>> {
        let (width, height) = image.dimensions();
        let bytes = image
            .into_raw()
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect();
        ImageBuffer::from_raw(width, height, bytes).expect("as many channels")
    }
    match image {
        DynamicImage::ImageLuma16(image) => DynamicImage::ImageLuma8(high(image)),
        DynamicImage::ImageLumaA16(image) => DynamicImage::ImageLumaA8(high(image)),
        DynamicImage::ImageRgb16(image) => DynamicImage::ImageRgb8(high(image)),
        DynamicImage::ImageRgba16(image) => DynamicImage::ImageRgba8(high(image)),
        image => image,
    }
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

#[cfg(test)]
mod tests {
    use image::{ImageFormat, Rgb, Rgba};

    use super::*;

    fn png(image: DynamicImage) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn sixteen_bit_pngs_keep_their_high_bytes_as_pillow_reads_them() {
        // 25,850 is 100 x 256 + 250: 100 by its high byte, 101 rounded.
        let values = [255u16, 25_850, 51_400, 65_535];
        let rgb = ImageBuffer::from_fn(4, 1, |x, _| Rgb([values[x as usize]; 3]));
        let decoded = decode_image(&png(DynamicImage::ImageRgb16(rgb))).unwrap();
        let decoded = decoded.as_rgb8().expect("8 bits a channel");
        let reds: Vec<u8> = decoded.pixels().map(|p| p.0[0]).collect();
        assert_eq!(reds, [0, 100, 200, 255]);

        let rgba = ImageBuffer::from_fn(4, 1, |x, _| Rgba([values[x as usize], 0, 0, 25_850]));
        let decoded = decode_image(&png(DynamicImage::ImageRgba16(rgba))).unwrap();
        let pixel = decoded.as_rgba8().expect("alpha kept").get_pixel(1, 0).0;
        assert_eq!(pixel, [100, 0, 0, 100]);
    }
}
