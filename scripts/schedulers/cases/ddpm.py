from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "DDPMScheduler"
SMALL = [1, 1, 1, 2]
CASES = [
    case(C, "default", {}),
    case(C, "sd", SD),
    case(C, "cosine", COSINE),
    case(C, "sigmoid", {"beta_schedule": "sigmoid"}),
    case(C, "sigmoid_sd_range", {"beta_schedule": "sigmoid", "beta_start": 0.00085, "beta_end": 0.012}, steps=7),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred", {"prediction_type": "sample"}),
    case(C, "linspace", {**SD, "timestep_spacing": "linspace"}, steps=13),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=15),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "trailing_3", {"timestep_spacing": "trailing"}, steps=3),
    case(C, "no_clip", {**SD, "clip_sample": False}),
    case(C, "clip_range", {"clip_sample": True, "clip_sample_range": 0.5}),
    case(C, "thresholding", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}),
    case(C, "thresholding_v", {**SD, "thresholding": True, "sample_max_value": 2.0, "prediction_type": "v_prediction"}),
    case(C, "zero_snr_trailing_v", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction", "clip_sample": False}),
    case(C, "fixed_small_log", {"variance_type": "fixed_small_log"}),
    case(C, "fixed_large", {**SD, "variance_type": "fixed_large", "clip_sample": False}),
    case(C, "custom_timesteps", {}, set_timesteps={"timesteps": [999, 800, 500, 250, 100, 10, 0]}),
    case(C, "custom_ending_above_zero", SD, set_timesteps={"timesteps": [900, 600, 300, 50]}),
    case(C, "one_step", {}, steps=1),
    case(C, "two_steps", {}, steps=2),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=20),
    # Long schedules run on trained betas: torch.linspace's float32 rounding (which depends on
    # the SIMD width) moves the built-in tables by an ulp, and 1000 steps of `1 - a_t / a_prev`
    # amplify that past the tolerance; exact tables isolate the scheduler's own arithmetic.
    case(C, "full_schedule", {"trained_betas": trained_betas()}, steps=1000, shape=SMALL),
    case(C, "full_schedule_v", {"trained_betas": trained_betas(), "prediction_type": "v_prediction", "clip_sample": False}, steps=1000, shape=SMALL),
    case(C, "train_100_all", {"num_train_timesteps": 100, "variance_type": "fixed_large"}, steps=100, shape=SMALL),
    case(C, "from_ddim_config", SD, source_class="DDIMScheduler"),
]
