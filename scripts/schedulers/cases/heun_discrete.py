from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "HeunDiscreteScheduler"
CASES = [
    case(C, "default", {}),
    case(C, "sd", SD),
    case(C, "linear", LINEAR),
    # Cosine betas reach sigma ~2e4 at t = 999, where diffusers' own float32 loop is off by
    # ~5e-5 from float64 (cancellation in the first step): start below it.
    case(C, "cosine_leading", {**COSINE, "timestep_spacing": "leading"}),
    case(C, "exp_betas", {"beta_schedule": "exp"}, steps=8),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    # (not linspace: its last timestep 0 makes the dummy model's x0 exactly 0 and the result ~1e-15)
    case(C, "sample_pred", {**SD, "prediction_type": "sample", "timestep_spacing": "trailing"}),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=25),
    case(C, "leading", {**LINEAR, "timestep_spacing": "leading"}, steps=7),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "trailing_3", {**SD, "timestep_spacing": "trailing"}, steps=3),
    case(C, "clip", {**LINEAR, "clip_sample": True}),
    case(C, "clip_range", {**SD, "clip_sample": True, "clip_sample_range": 0.5, "prediction_type": "v_prediction"}),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_v", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, steps=7),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True}),
    case(C, "beta_sigmas", {**SD, "use_beta_sigmas": True}, steps=9),
    case(C, "karras_leading", {**LINEAR, "use_karras_sigmas": True, "timestep_spacing": "leading"}, steps=5),
    case(C, "one_step", SD, steps=1),
    case(C, "two_steps", SD, steps=2),
    case(C, "steps_25", LINEAR, steps=25),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=13),
    case(C, "train_1100_published", {"num_train_timesteps": 1100, **LINEAR}),
    case(C, "custom_timesteps", SD, set_timesteps={"timesteps": [999, 850, 700, 500, 301, 150, 20]}),
    case(C, "custom_timesteps_frac", LINEAR, set_timesteps={"timesteps": [900.5, 600.25, 333.0, 10.75]}),
    # diffusers' from_config drops the source's *default* values (`_use_default_values`), so
    # every field that should carry over is passed explicitly.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "leading", "clip_sample": False, "steps_offset": 1}, source_class="DDIMScheduler"),
    case(C, "from_ddim_config_v", {**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": True}, source_class="DDIMScheduler", steps=6),
]
