//! One txt2img / img2img generation, in the order Forge runs it: wait for
//! the queue lock, apply `override_settings`, load the model if needed,
//! sample step by step (interruptible, skippable, possibly out of memory),
//! journal it, restore the overridden options, answer.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::backend::{Load, LoadReport, UnknownCheckpoint};
use crate::error::ApiError;
use crate::init_images;
use crate::journal::Source;
use crate::memory::OutOfMemory;
use crate::request::{GenerationRequest, Route};
use crate::response::{self, GenerationResponse, Produced};
use crate::state::SimState;
use crate::timing::{self, Clock, Pass};

/// Runs a validated generation request to its answer. Runs to the end even
/// if the client goes away (the caller spawns it), as Forge does.
pub async fn generate(
    state: SimState,
    request: GenerationRequest,
) -> Result<GenerationResponse, ApiError> {
    let route = request.route;
    let task_id = request
        .string("force_task_id")
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| create_task_id(route, &state));
    if route == Route::Img2Img {
        let mask = request.get("mask");
        if mask.as_str().is_some_and(|m| !m.is_empty()) {
            init_images::check(&mask)?;
        }
    }

    let _queue = state.queue().lock().await;
    if route == Route::Img2Img {
        // By reference: the images may be tens of MiB.
        let images = request
            .parameters()
            .get("init_images")
            .and_then(Value::as_array);
        for image in images.into_iter().flatten() {
            init_images::check(image)?;
        }
    }

    let passes = timing::passes(&request);
    let run = Run {
        n_iter: request.int("n_iter").clamp(1, 10_000) as u32,
        batch_size: request.int("batch_size").clamp(1, 10_000) as u32,
        task_id: &task_id,
        passes: &passes,
    };
    state.job().begin(
        &format!("scripts_{}", route.as_str()),
        &task_id,
        i64::from(run.n_iter) * passes.len() as i64,
    );
    let _job = JobGuard(&state);
    let sampled = with_overrides(&state, &request, &run).await?;
    answer(&state, &request, sampled).await
}

/// What one generation runs: its passes, iterations and batch.
struct Run<'a> {
    n_iter: u32,
    batch_size: u32,
    task_id: &'a str,
    passes: &'a [Pass],
}

/// `processing.process_images`: the `override_settings` applied for the generation and,
/// when `override_settings_restore_afterwards`, restored after it.
async fn with_overrides(
    state: &SimState,
    request: &GenerationRequest,
    run: &Run<'_>,
) -> Result<Sampled, ApiError> {
    let overrides = request
        .get("override_settings")
        .as_object()
        .cloned()
        .unwrap_or_default();
    let stored: Map<String, Value> = {
        let backend = state.backend();
        overrides
            .keys()
            // Only keys already in `opts.data` are restored.
            .filter_map(|key| Some((key.clone(), backend.options().stored(key)?.clone())))
            .collect()
    };
    let result = match state.set_config(&overrides, UnknownCheckpoint::Drop, Source::Override) {
        Err(error) => Err(error),
        Ok(()) => sample(state, request, run).await,
    };
    if request.bool("override_settings_restore_afterwards") && !stored.is_empty() {
        if let Err(error) = state.set_config(&stored, UnknownCheckpoint::Reject, Source::Restore) {
            tracing::warn!("restoring overridden options failed: {error}");
        }
    }
    result
}

/// `text2imgapi`'s answer: the images (and a grid when saved), seeds fixed, the info.
async fn answer(
    state: &SimState,
    request: &GenerationRequest,
    sampled: Sampled,
) -> Result<GenerationResponse, ApiError> {
    let seed = fixed_seed(request.int("seed"), state);
    let subseed = fixed_seed(request.int("subseed"), state);
    let (job_timestamp, clip_skip, return_grid) = {
        let backend = state.backend();
        let options = backend.options();
        (
            state.job().job_timestamp().to_owned(),
            options
                .get("CLIP_stop_at_last_layers")
                .cloned()
                .unwrap_or(json!(1)),
            options
                .get("return_grid")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        )
    };
    let count = sampled.images;
    let grid = if request.bool("save_images") && return_grid && count >= 2 {
        let (rows, cols) = response::grid_shape(count);
        let (width, height) = sampled.size;
        Some(
            state
                .images()
                .get(
                    width.saturating_mul(cols as u32),
                    height.saturating_mul(rows as u32),
                )
                .await,
        )
    } else {
        None
    };
    Ok(response::build(
        request,
        Produced {
            checkpoint: &sampled.load.checkpoint,
            count,
            image: sampled.image,
            grid,
            seed,
            subseed,
            job_timestamp,
            clip_skip,
        },
    ))
}

/// What the sampling loop produced.
struct Sampled {
    load: LoadReport,
    images: usize,
    image: Arc<str>,
    size: (u32, u32),
}

#[derive(Debug)]
enum Outcome {
    Ok,
    Interrupted,
    OutOfMemory(OutOfMemory),
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Interrupted => "interrupted",
            Outcome::OutOfMemory(_) => "oom",
        }
    }
}

/// Loads the model if needed and runs the sampling passes of every iteration against the
/// simulated clock, then journals the generation.
async fn sample(
    state: &SimState,
    request: &GenerationRequest,
    run: &Run<'_>,
) -> Result<Sampled, ApiError> {
    // Made (once per size) before the clock starts: encoding is the simulator's cost, not
    // part of the simulated generation.
    let size = timing::output_size(run.passes);
    let image = state.images().get(size.0, size.1).await;
    let load = state.backend().load_for_generation()?;
    let started_ms = state.now_ms();
    let mut clock = Clock::start(state.config().time_scale);
    load_model(state, &load, &mut clock).await;
    let (iterations, outcome) = sampling(state, &load, run, &image, &mut clock).await;
    journal(
        state,
        request,
        run,
        &Ran {
            load: &load,
            clock: &clock,
            started_ms,
            outcome: &outcome,
            iterations,
        },
    );
    match outcome {
        Outcome::OutOfMemory(oom) => Err(ApiError::Exception {
            error: "OutOfMemoryError",
            message: oom.message(),
        }),
        Outcome::Ok | Outcome::Interrupted => Ok(Sampled {
            load,
            images: iterations * run.batch_size as usize,
            image,
            size,
        }),
    }
}

/// The model onto the card: nothing, back from RAM, or from its file, logged with Forge's
/// own lines (`processing.manage_model_and_prompt_cache`, `sd_models.forge_model_reload`),
/// so a log reader sees the same.
async fn load_model(state: &SimState, load: &LoadReport, clock: &mut Clock) {
    match load.load {
        Load::None => {}
        Load::FromRam => tracing::info!(
            "[Unload] Trying to free all memory for cuda:0 with 0 models keep loaded ... Done."
        ),
        Load::FromDisk => tracing::info!(
            "Loading Model: {{'checkpoint_info': {{'filename': '{}'}}}} ({} MiB, {:.0} MiB on the GPU)",
            load.checkpoint.filename,
            load.checkpoint.weights_mib,
            load.placement.gpu_weights_mib
        ),
    }
    clock
        .advance(timing::load_ms(
            load.load,
            load.checkpoint.weights_mib,
            state.config(),
        ))
        .await;
}

/// How often the progress gets a preview image (`show_progress_every_n_steps`), if at all.
fn preview_every(state: &SimState) -> Option<i64> {
    let backend = state.backend();
    let options = backend.options();
    let enabled = options
        .get("live_previews_enable")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let every = options
        .number("show_progress_every_n_steps")
        .unwrap_or(10.0) as i64;
    (enabled && every > 0).then_some(every)
}

/// Every iteration's passes, step by step; an interrupt ends them all, a skip the
/// iteration, running out of memory the generation. Answers the iterations run.
async fn sampling(
    state: &SimState,
    load: &LoadReport,
    run: &Run<'_>,
    image: &Arc<str>,
    clock: &mut Clock,
) -> (usize, Outcome) {
    let preview_every = preview_every(state);
    let family = load.checkpoint.family;
    let mut iterations = 0usize;
    for n in 0..run.n_iter {
        {
            let mut job = state.job();
            if n > 0 && job.interrupted() {
                return (iterations, Outcome::Interrupted);
            }
            job.clear_skip();
            if run.n_iter > 1 {
                job.set_job(format!("Batch {} out of {}", n + 1, run.n_iter));
            }
        }
        iterations += 1;
        for (index, pass) in run.passes.iter().enumerate() {
            let job_no = n as usize * run.passes.len() + index;
            state.job().start_pass(job_no as i64, i64::from(pass.steps));
            let need = family.compute_need_mib(pass.width, pass.height, run.batch_size);
            if let Err(oom) = state.backend().begin_pass(&load.placement, need) {
                return (iterations, Outcome::OutOfMemory(oom));
            }
            let step_ms = family.step_ms(
                pass.width,
                pass.height,
                run.batch_size,
                load.placement.slowdown,
            );
            let stopped = steps(state, pass, step_ms, preview_every, image, clock).await;
            state.backend().end_pass();
            match stopped {
                Stopped::Interrupted => return (iterations, Outcome::Interrupted),
                Stopped::Skipped => break,
                Stopped::No => {}
            }
        }
    }
    (iterations, Outcome::Ok)
}

/// Why a pass ended before its last step.
enum Stopped {
    No,
    Interrupted,
    Skipped,
}

/// One pass's steps against the clock, each reported to the progress.
async fn steps(
    state: &SimState,
    pass: &Pass,
    step_ms: f64,
    preview_every: Option<i64>,
    image: &Arc<str>,
    clock: &mut Clock,
) -> Stopped {
    for step in 1..=pass.steps {
        clock.advance(step_ms).await;
        let mut job = state.job();
        job.step(i64::from(step), preview_every, image);
        if job.interrupted() {
            return Stopped::Interrupted;
        }
        if job.skipped() {
            return Stopped::Skipped;
        }
    }
    Stopped::No
}

/// What a generation did, for its journal entry.
struct Ran<'a> {
    load: &'a LoadReport,
    clock: &'a Clock,
    started_ms: f64,
    outcome: &'a Outcome,
    iterations: usize,
}

/// The generation's journal entry, and Forge-like log line.
fn journal(state: &SimState, request: &GenerationRequest, run: &Run<'_>, ran: &Ran<'_>) {
    let Ran {
        load,
        clock,
        started_ms,
        outcome,
        iterations,
    } = ran;
    let mut entry = Map::new();
    let fields = [
        ("kind", json!("generation")),
        ("route", json!(request.route.as_str())),
        ("checkpoint", json!(load.checkpoint.name)),
        ("family", json!(load.checkpoint.family.as_str())),
        ("weights_mib", json!(load.checkpoint.weights_mib)),
        ("forge_inference_memory", json!(load.inference_mib)),
        ("gpu_weights_mib", json!(load.gpu_weights_setting_mib)),
        (
            "gpu_weights_loaded_mib",
            json!(load.placement.gpu_weights_mib),
        ),
        ("reloaded", json!(load.load != Load::None)),
        ("load", json!(load.load.as_str())),
        ("duration_ms", json!(clock.simulated_ms())),
        ("wall_ms", json!(clock.wall_ms())),
        ("started_ms", json!(started_ms)),
        ("ended_ms", json!(state.now_ms())),
        ("outcome", json!(outcome.as_str())),
        ("low_vram", json!(load.low_vram)),
        ("slowdown", json!(load.placement.slowdown)),
        ("width", json!(request.int("width"))),
        ("height", json!(request.int("height"))),
        ("enable_hr", json!(run.passes.len() > 1)),
        ("batch_size", json!(run.batch_size)),
        ("n_iter", json!(run.n_iter)),
        ("steps", json!(request.int("steps"))),
        ("images", json!(iterations * run.batch_size as usize)),
        ("task_id", json!(run.task_id)),
    ];
    for (key, value) in fields {
        entry.insert(key.into(), value);
    }
    state.journal_mut().push(entry);
    tracing::info!(
        "{} {} on {}: {} after {:.0} ms simulated ({:.0} ms wall)",
        request.route.as_str(),
        run.task_id,
        load.checkpoint.name,
        outcome.as_str(),
        clock.simulated_ms(),
        clock.wall_ms()
    );
}

/// Ends the job (`state.end()`) however the generation stops.
struct JobGuard<'a>(&'a SimState);

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.0.job().end();
        self.0.backend().end_pass();
    }
}

/// Forge's `create_task_id`: `task(txt2img-XXXXXXX)`.
fn create_task_id(route: Route, state: &SimState) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let suffix: String = (0..7)
        .map(|_| ALPHABET[(state.random() % ALPHABET.len() as u64) as usize] as char)
        .collect();
    format!("task({}-{suffix})", route.as_str())
}

/// `get_fixed_seed`: -1 (or any negative) means a random seed.
fn fixed_seed(seed: i64, state: &SimState) -> i64 {
    if seed < 0 {
        (state.random() % 4_294_967_294) as i64
    } else {
        seed
    }
}
