//! How long a generation takes in simulated time (model load, the sampling
//! passes and their steps) and how simulated time maps to wall time.

use std::time::{Duration, Instant};

use crate::request::{GenerationRequest, Route};

use crate::backend::Load;
use crate::config::SimConfig;

/// Fixed cost of reading a checkpoint file (building the model, opening the file).
pub const DISK_LOAD_BASE_MS: f64 = 1000.0;
/// Fixed cost of moving the models off the card and back (`unload_all_models`, then
/// `load_models_gpu`).
pub const RAM_LOAD_BASE_MS: f64 = 250.0;

/// Simulated time the generation spends getting its model onto the card: a checkpoint read
/// from its file costs `DISK_LOAD_BASE_MS` plus `--disk-load-ms-per-mib` per MiB; weights
/// moved back from RAM (after a memory refresh or an unload) cost `RAM_LOAD_BASE_MS` plus
/// `--ram-load-ms-per-mib` per MiB, the file is not read again.
pub fn load_ms(load: Load, weights_mib: u64, config: &SimConfig) -> f64 {
    let mib = weights_mib as f64;
    match load {
        Load::None => 0.0,
        Load::FromRam => RAM_LOAD_BASE_MS + config.ram_load_ms_per_mib * mib,
        Load::FromDisk => DISK_LOAD_BASE_MS + config.disk_load_ms_per_mib * mib,
    }
}

/// One sampling pass of a generation iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub width: u32,
    pub height: u32,
    /// Steps actually sampled (what `/progress` shows as `sampling_steps`).
    pub steps: u32,
}

/// The passes of one iteration: the first at the requested size, and for
/// txt2img with `enable_hr` the hires pass at the upscaled size. img2img
/// samples only `int(min(denoising_strength, 0.999) * steps) + 1` steps, as
/// A1111's `setup_img2img_steps` does.
pub fn passes(request: &GenerationRequest) -> Vec<Pass> {
    let width = latent_side(request.int("width"));
    let height = latent_side(request.int("height"));
    let steps = request.int("steps").max(1);
    let first_steps = match request.route {
        Route::Txt2Img => steps,
        Route::Img2Img => {
            let strength = request.float("denoising_strength").clamp(0.0, 0.999);
            (strength * steps as f64) as i64 + 1
        }
    };
    let mut passes = vec![Pass {
        width,
        height,
        steps: clamp_u32(first_steps),
    }];
    if request.route == Route::Txt2Img && request.bool("enable_hr") {
        let (hr_width, hr_height) = hires_size(
            width,
            height,
            request.float("hr_scale"),
            request.int("hr_resize_x"),
            request.int("hr_resize_y"),
        );
        let hr_steps = match request.int("hr_second_pass_steps") {
            n if n > 0 => n,
            _ => steps,
        };
        passes.push(Pass {
            width: hr_width,
            height: hr_height,
            steps: clamp_u32(hr_steps),
        });
    }
    passes
}

/// The output size: the last pass's.
pub fn output_size(passes: &[Pass]) -> (u32, u32) {
    passes
        .last()
        .map_or((512, 512), |pass| (pass.width, pass.height))
}

/// A1111's hires target: `hr_scale` times the size, or `hr_resize_x/y`
/// (one of them keeps the aspect ratio).
fn hires_size(width: u32, height: u32, scale: f64, resize_x: i64, resize_y: i64) -> (u32, u32) {
    let (w, h) = (i64::from(width), i64::from(height));
    let (x, y) = match (resize_x.max(0), resize_y.max(0)) {
        (0, 0) => (
            (width as f64 * scale) as i64,
            (height as f64 * scale) as i64,
        ),
        (x, 0) => (x, x * h / w),
        (0, y) => (y * w / h, y),
        (x, y) => (x, y),
    };
    (latent_side(x), latent_side(y))
}

/// Images come out of the VAE at a multiple of 8 pixels.
fn latent_side(pixels: i64) -> u32 {
    clamp_u32(pixels / 8 * 8).clamp(8, 16384)
}

fn clamp_u32(n: i64) -> u32 {
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

/// Simulated time for one generation: advancing it sleeps until the scaled
/// wall-clock instant, so many short steps do not accumulate timer slack.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    scale: f64,
    simulated_ms: f64,
}

impl Clock {
    pub fn start(scale: f64) -> Clock {
        Clock {
            start: Instant::now(),
            scale,
            simulated_ms: 0.0,
        }
    }

    /// Lets `ms` of simulated time pass.
    pub async fn advance(&mut self, ms: f64) {
        self.simulated_ms += ms.max(0.0);
        let wall = Duration::from_secs_f64(self.simulated_ms * self.scale / 1000.0);
        tokio::time::sleep_until((self.start + wall).into()).await;
    }

    /// Unscaled simulated time so far.
    pub fn simulated_ms(&self) -> f64 {
        self.simulated_ms
    }

    /// Wall time since the start.
    pub fn wall_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(route: Route, body: serde_json::Value) -> GenerationRequest {
        GenerationRequest::validate(route, body).unwrap()
    }

    #[test]
    fn a_file_load_costs_a_second_plus_two_ms_per_mib() {
        let config = SimConfig::default();
        assert_eq!(load_ms(Load::FromDisk, 2000, &config), 5000.0);
        assert_eq!(load_ms(Load::FromDisk, 11500, &config), 24000.0);
    }

    #[test]
    fn weights_back_from_ram_cost_far_less_than_a_file_load() {
        let config = SimConfig::default();
        assert_eq!(load_ms(Load::FromRam, 2000, &config), 750.0);
        assert_eq!(load_ms(Load::FromRam, 11500, &config), 3125.0);
        assert_eq!(load_ms(Load::None, 11500, &config), 0.0);
    }

    #[test]
    fn txt2img_is_one_pass_at_the_requested_size() {
        let passes = passes(&request(
            Route::Txt2Img,
            json!({"width": 768, "height": 512, "steps": 20}),
        ));
        assert_eq!(
            passes,
            [Pass {
                width: 768,
                height: 512,
                steps: 20
            }]
        );
    }

    #[test]
    fn sizes_round_down_to_multiples_of_eight() {
        let passes = passes(&request(Route::Txt2Img, json!({"width": 500, "height": 3})));
        assert_eq!((passes[0].width, passes[0].height), (496, 8));
    }

    #[test]
    fn hires_adds_a_pass_at_the_scaled_size() {
        let passes = passes(&request(
            Route::Txt2Img,
            json!({"width": 512, "height": 512, "steps": 20, "enable_hr": true, "hr_scale": 2}),
        ));
        assert_eq!(
            passes[1],
            Pass {
                width: 1024,
                height: 1024,
                steps: 20
            }
        );
        assert_eq!(output_size(&passes), (1024, 1024));
    }

    #[test]
    fn hires_resize_keeps_aspect_when_one_side_is_given() {
        let passes = passes(&request(
            Route::Txt2Img,
            json!({"width": 512, "height": 768, "enable_hr": true, "hr_resize_x": 1024, "hr_second_pass_steps": 10}),
        ));
        assert_eq!(
            passes[1],
            Pass {
                width: 1024,
                height: 1536,
                steps: 10
            }
        );
    }

    #[test]
    fn img2img_samples_a_denoising_share_of_the_steps() {
        let passes = passes(&request(Route::Img2Img, json!({"steps": 50})));
        assert_eq!(passes[0].steps, 38);
        let full = passes_for(json!({"steps": 20, "denoising_strength": 1.0}));
        assert_eq!(full, 20);
    }

    fn passes_for(body: serde_json::Value) -> u32 {
        passes(&request(Route::Img2Img, body))[0].steps
    }

    #[tokio::test]
    async fn clock_sleeps_the_scaled_time() {
        let mut clock = Clock::start(0.01);
        clock.advance(2000.0).await;
        assert_eq!(clock.simulated_ms(), 2000.0);
        assert!(clock.wall_ms() >= 20.0);
    }
}
