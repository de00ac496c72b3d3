//! The images the simulator returns: valid PNGs of the requested size and
//! about `image_bytes` each, made of incompressible noise so that they cost
//! the network what real images cost. One per size, made on first use and
//! kept as base64, so a response only copies it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;

/// Dimensions beyond this are clamped: the simulator never allocates a
/// gigapixel buffer because a request asked for one.
const MAX_SIDE: u32 = 8192;

/// Base64 PNGs by (width, height).
#[derive(Debug)]
pub struct ImageCache {
    target_bytes: usize,
    by_size: Mutex<HashMap<(u32, u32), Arc<str>>>,
}

impl ImageCache {
    pub fn new(target_bytes: usize) -> ImageCache {
        ImageCache {
            target_bytes,
            by_size: Mutex::new(HashMap::new()),
        }
    }

    /// The base64 PNG for this size, encoding it on first use (off the async
    /// threads: a big noise PNG takes milliseconds).
    pub async fn get(&self, width: u32, height: u32) -> Arc<str> {
        let size = (width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE));
        if let Some(found) = self.lookup(size) {
            return found;
        }
        let target = self.target_bytes;
        let encoded = tokio::task::spawn_blocking(move || {
            base64::engine::general_purpose::STANDARD.encode(noise_png(size.0, size.1, target))
        })
        .await
        .unwrap_or_default();
        let encoded: Arc<str> = Arc::from(encoded);
        self.lock().entry(size).or_insert(encoded).clone()
    }

    fn lookup(&self, size: (u32, u32)) -> Option<Arc<str>> {
        self.lock().get(&size).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u32), Arc<str>>> {
        self.by_size
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A deterministic RGB PNG of `width` x `height` of about `target_bytes`:
/// noise for the first pixels (which deflate cannot shrink), black after
/// (which it shrinks to almost nothing). The amount of noise is corrected a
/// few times from the measured size.
pub fn noise_png(width: u32, height: u32, target_bytes: usize) -> Vec<u8> {
    let raw_len = width as usize * height as usize * 3;
    let target = target_bytes as f64;
    let mut noise = target_bytes.min(raw_len);
    let mut png = encode(width, height, noise);
    for _ in 0..4 {
        let error = png.len() as f64 - target;
        if error.abs() <= target * 0.01 + 64.0 {
            break;
        }
        let per_noise_byte = (png.len() as f64 / noise.max(1) as f64).max(0.5);
        let next = (noise as f64 - error / per_noise_byte).clamp(0.0, raw_len as f64) as usize;
        if next == noise {
            break;
        }
        noise = next;
        png = encode(width, height, noise);
    }
    png
}

fn encode(width: u32, height: u32, noise_bytes: usize) -> Vec<u8> {
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let mut rng = SplitMix64(u64::from(width) << 32 | u64::from(height));
    for chunk in pixels[..noise_bytes].chunks_mut(8) {
        let bytes = rng.next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let mut out = Vec::with_capacity(noise_bytes + 1024);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::FilterType::NoFilter);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
    // Writing to a Vec cannot fail; a failure would leave `out` short, which
    // the size check in the tests would catch.
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(&pixels);
    }
    out
}

/// A tiny deterministic generator for the noise.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> (u32, u32) {
        let decoder = png::Decoder::new(png);
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        (info.width, info.height)
    }

    #[test]
    fn png_has_the_requested_size_and_about_the_target_bytes() {
        let png = noise_png(512, 512, 200_000);
        assert_eq!(decode(&png), (512, 512));
        let len = png.len() as f64;
        assert!((len - 200_000.0).abs() / 200_000.0 < 0.05, "{len}");
    }

    #[test]
    fn big_image_small_target_stays_small() {
        let png = noise_png(1024, 1024, 50_000);
        assert_eq!(decode(&png), (1024, 1024));
        assert!(
            (png.len() as f64 - 50_000.0).abs() / 50_000.0 < 0.1,
            "{}",
            png.len()
        );
    }

    #[test]
    fn target_above_raw_size_is_all_noise() {
        let png = noise_png(16, 16, 1_000_000);
        assert_eq!(decode(&png), (16, 16));
        assert!(png.len() < 2000);
    }

    #[test]
    fn images_are_deterministic() {
        assert_eq!(noise_png(64, 64, 5000), noise_png(64, 64, 5000));
    }

    #[tokio::test]
    async fn cache_returns_the_same_image_for_a_size() {
        let cache = ImageCache::new(10_000);
        let a = cache.get(64, 64).await;
        let b = cache.get(64, 64).await;
        assert!(Arc::ptr_eq(&a, &b));
    }
}
