//! Forge's `shared.state` (the running job, its step counters and the
//! interrupt / skip flags) and `GET /sdapi/v1/progress` computed from it the
//! way Forge computes it (modules/api/api.py `progressapi`,
//! modules/shared_state.py `State`).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The job currently running, as Forge tracks it. Like Forge, the counters
/// keep their last values after a job ends; only `job` and `job_count` reset.
#[derive(Debug)]
pub struct JobState {
    skipped: bool,
    interrupted: bool,
    job: String,
    /// `-1` from `begin` until processing knows the count, as in Forge.
    job_count: i64,
    /// What `job_count` becomes once the job's first pass starts.
    pending_job_count: i64,
    job_timestamp: String,
    job_no: i64,
    sampling_step: i64,
    sampling_steps: i64,
    /// A sampling pass has begun and taken a step, and its `nextjob` is due.
    pass_open: bool,
    time_start: Instant,
    /// The live preview (base64 PNG), refreshed every
    /// `show_progress_every_n_steps` steps.
    current_image: Option<Arc<str>>,
    current_image_sampling_step: i64,
}

impl Default for JobState {
    fn default() -> Self {
        JobState {
            skipped: false,
            interrupted: false,
            job: String::new(),
            job_count: 0,
            pending_job_count: 0,
            job_timestamp: "0".into(),
            job_no: 0,
            sampling_step: 0,
            sampling_steps: 0,
            pass_open: false,
            time_start: Instant::now(),
            current_image: None,
            current_image_sampling_step: 0,
        }
    }
}

impl JobState {
    /// `state.begin(job)`: resets the job's counters and flags, but not
    /// `sampling_steps`, which keeps the last job's value until this job's
    /// first pass starts (`launch_sampling` sets it, after the model is
    /// loaded). `job_count` is `-1` until then (processing.py sets it to
    /// `n_iter`, doubled with hires, once the model is loaded); it becomes
    /// `job_count` at the first [`start_pass`](Self::start_pass).
    ///
    /// The task id is Forge's `start_task(task_id)`, which only the web UI's
    /// `/internal/progress` reports; `/sdapi/v1/progress` has no
    /// `current_task` (`ProgressResponse` has no such field, so pydantic drops
    /// the one `progressapi` passes).
    pub fn begin(&mut self, job: &str, _task_id: &str, job_count: i64) {
        *self = JobState {
            job: job.into(),
            job_count: -1,
            pending_job_count: job_count,
            job_timestamp: timestamp_now(),
            sampling_steps: self.sampling_steps,
            ..JobState::default()
        };
    }

    /// `state.end()`, after the last pass's `state.nextjob()` (processing.py
    /// calls it at the end of every iteration, interrupted or not; a pass
    /// that failed before its first step, out of memory, never gets there).
    pub fn end(&mut self) {
        if self.pass_open {
            self.nextjob();
        }
        self.job.clear();
        self.job_count = 0;
    }

    /// `state.nextjob()`.
    fn nextjob(&mut self) {
        self.job_no += 1;
        self.sampling_step = 0;
        self.current_image_sampling_step = 0;
        self.pass_open = false;
    }

    /// Names the iteration (`Batch 2 out of 3`), as Forge does for n_iter > 1.
    pub fn set_job(&mut self, job: String) {
        self.job = job;
    }

    /// A sampling pass starts (`state.nextjob()` before it, except the first;
    /// then `launch_sampling` sets `sampling_steps`).
    pub fn start_pass(&mut self, job_no: i64, sampling_steps: i64) {
        if self.job_count == -1 {
            self.job_count = self.pending_job_count;
        }
        self.job_no = job_no;
        self.sampling_steps = sampling_steps;
        self.sampling_step = 0;
        self.current_image_sampling_step = 0;
        self.pass_open = false;
    }

    /// Sampling step `step` (1-based) finished. Forge's sampler callback
    /// stores the step's 0-based index (sd_samplers_common.py
    /// `callback_state`: `state.sampling_step = d['i']`), so the counter shows
    /// `step - 1` and the last step of 20 leaves 19. Every `preview_every`
    /// steps the live preview is refreshed with `preview`.
    pub fn step(&mut self, step: i64, preview_every: Option<i64>, preview: &Arc<str>) {
        self.sampling_step = step - 1;
        self.pass_open = true;
        if let Some(every) = preview_every {
            if every > 0 && self.sampling_step - self.current_image_sampling_step >= every {
                self.current_image = Some(preview.clone());
                self.current_image_sampling_step = self.sampling_step;
            }
        }
    }

    /// A job that ends before its first pass: img2img's processing failing
    /// on its init images (`begin`, then `end` from the `finally`), or
    /// `interrogate`.
    pub fn begin_and_end(&mut self, job: &str) {
        self.begin(job, "", 0);
        self.end();
    }

    /// `POST /sdapi/v1/extra-single-image`: modules/postprocessing.py
    /// `run_postprocessing` runs `begin("extras")`, `job_count = 1`, one
    /// `nextjob()` per image, then `end()`.
    pub fn extras(&mut self) {
        self.begin("extras", "", 1);
        self.job_count = 1;
        self.nextjob();
        self.end();
    }

    /// `POST /sdapi/v1/interrupt`.
    pub fn interrupt(&mut self) {
        self.interrupted = true;
    }

    /// `POST /sdapi/v1/skip`.
    pub fn skip(&mut self) {
        self.skipped = true;
    }

    /// When the last job began (`"0"` before the first).
    pub fn job_timestamp(&self) -> &str {
        &self.job_timestamp
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    pub fn skipped(&self) -> bool {
        self.skipped
    }

    /// Forge clears the skip flag at the start of the next iteration.
    pub fn clear_skip(&mut self) {
        self.skipped = false;
    }

    /// `GET /sdapi/v1/progress`, as Forge's `progressapi` computes it.
    pub fn progress(&self, now: Instant, skip_current_image: bool) -> Progress {
        let state = StateDict {
            skipped: self.skipped,
            interrupted: self.interrupted,
            stopping_generation: false,
            job: self.job.clone(),
            job_count: self.job_count,
            job_timestamp: self.job_timestamp.clone(),
            job_no: self.job_no,
            sampling_step: self.sampling_step,
            sampling_steps: self.sampling_steps,
        };
        if self.job_count == 0 {
            return Progress {
                progress: 0.0,
                eta_relative: 0.0,
                state,
                current_image: None,
                textinfo: None,
            };
        }
        // With `job_count` -1 (loading) this is 0.01 + 1/-1 * 0/steps = 0.01.
        let job_count = self.job_count as f64;
        let mut progress = 0.01;
        if self.job_count > 0 {
            progress += self.job_no as f64 / job_count;
        }
        if self.sampling_steps > 0 {
            progress += 1.0 / job_count * self.sampling_step as f64 / self.sampling_steps as f64;
        }
        let elapsed = now.saturating_duration_since(self.time_start).as_secs_f64();
        let eta_relative = elapsed / progress - elapsed;
        Progress {
            progress: progress.min(1.0),
            eta_relative,
            state,
            current_image: self.current_image.clone().filter(|_| !skip_current_image),
            textinfo: None,
        }
    }
}

/// The body of `GET /sdapi/v1/progress` (`ProgressResponse`), fields in
/// Forge's order.
#[derive(Debug, Serialize)]
pub struct Progress {
    pub progress: f64,
    pub eta_relative: f64,
    pub state: StateDict,
    #[serde(serialize_with = "serialize_opt_str")]
    pub current_image: Option<Arc<str>>,
    pub textinfo: Option<String>,
}

/// `shared.state.dict()`.
#[derive(Debug, Serialize)]
pub struct StateDict {
    pub skipped: bool,
    pub interrupted: bool,
    pub stopping_generation: bool,
    pub job: String,
    pub job_count: i64,
    pub job_timestamp: String,
    pub job_no: i64,
    pub sampling_step: i64,
    pub sampling_steps: i64,
}

fn serialize_opt_str<S: serde::Serializer>(
    value: &Option<Arc<str>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => s.serialize_str(text),
        None => s.serialize_none(),
    }
}

/// `datetime.now().strftime("%Y%m%d%H%M%S")`, in UTC.
fn timestamp_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn idle_progress_is_zero_with_nulls_and_no_current_task() {
        let state = JobState::default();
        let body = serde_json::to_value(state.progress(Instant::now(), false)).unwrap();
        assert_eq!(body["progress"], json!(0.0));
        assert_eq!(body["eta_relative"], json!(0.0));
        assert_eq!(body["current_image"], json!(null));
        assert_eq!(body["textinfo"], json!(null));
        assert!(body.get("current_task").is_none());
        assert_eq!(body["state"]["job_count"], json!(0));
        assert_eq!(body["state"]["job_timestamp"], json!("0"));
    }

    #[test]
    fn progress_counts_jobs_and_steps_like_forge() {
        let mut state = JobState::default();
        state.begin("scripts_txt2img", "task(txt2img-ABC1234)", 2);
        state.start_pass(1, 20);
        let preview: Arc<str> = Arc::from("png");
        for step in 1..=11 {
            state.step(step, Some(10), &preview);
        }
        let now = state.time_start + Duration::from_secs(3);
        let p = state.progress(now, false);
        // 0.01 + 1/2 + 1/2 * 10/20: eleven steps done, the last index is 10.
        assert_eq!(p.state.sampling_step, 10);
        assert!((p.progress - 0.76).abs() < 1e-9);
        assert!((p.eta_relative - (3.0 / 0.76 - 3.0)).abs() < 1e-9);
        assert_eq!(p.current_image.as_deref(), Some("png"));
        assert!(state.progress(now, true).current_image.is_none());
    }

    #[test]
    fn while_loading_the_count_is_minus_one_and_the_last_steps_stay() {
        let mut state = JobState::default();
        state.begin("scripts_txt2img", "t", 1);
        state.start_pass(0, 6);
        state.step(6, None, &Arc::from(""));
        state.end();
        state.begin("scripts_txt2img", "t", 2);
        let p = state.progress(Instant::now(), false);
        assert_eq!(p.state.job_count, -1);
        assert_eq!(p.state.sampling_steps, 6);
        assert_eq!(p.state.job_no, 0);
        assert!((p.progress - 0.01).abs() < 1e-9);
        state.start_pass(0, 20);
        assert_eq!(state.progress(Instant::now(), false).state.job_count, 2);
    }

    #[test]
    fn end_leaves_job_no_at_the_count_and_the_step_at_zero() {
        let mut state = JobState::default();
        state.begin("scripts_txt2img", "t", 2);
        for job_no in 0..2 {
            state.start_pass(job_no, 20);
            for step in 1..=20 {
                state.step(step, None, &Arc::from(""));
            }
        }
        assert_eq!(
            state.progress(Instant::now(), false).state.sampling_step,
            19
        );
        state.end();
        let p = state.progress(Instant::now(), false);
        assert_eq!(p.progress, 0.0);
        assert_eq!(p.state.job, "");
        assert_eq!(p.state.job_count, 0);
        assert_eq!(p.state.job_no, 2);
        assert_eq!(p.state.sampling_step, 0);
        assert_eq!(p.state.sampling_steps, 20);
        assert_eq!(p.state.job_timestamp.len(), 14);
    }

    #[test]
    fn a_pass_that_failed_before_its_first_step_gets_no_nextjob() {
        let mut state = JobState::default();
        state.begin("scripts_txt2img", "t", 1);
        state.start_pass(0, 20);
        state.end();
        assert_eq!(state.progress(Instant::now(), false).state.job_no, 0);
    }

    #[test]
    fn extras_count_one_job() {
        let mut state = JobState::default();
        state.extras();
        let p = state.progress(Instant::now(), false);
        assert_eq!((p.state.job_no, p.state.job_count), (1, 0));
        assert_eq!(p.state.job, "");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
