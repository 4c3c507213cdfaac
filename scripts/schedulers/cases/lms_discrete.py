from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "LMSDiscreteScheduler"
CASES = [
    case(C, "default", {}),
    case(C, "published_1100", {**LINEAR, "num_train_timesteps": 1100}),
    case(C, "sd", SD),
    # Cosine betas put sigma(999) at ~2e4, where diffusers' own f32 result is ill-conditioned: start lower.
    case(C, "cosine_leading", {**COSINE, "timestep_spacing": "leading", "steps_offset": 1}),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred", {**SD, "prediction_type": "sample"}),
    case(C, "linspace_13", SD, steps=13),
    case(C, "leading_offset_25", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=25),
    case(C, "trailing_7", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "steps_1", SD, steps=1),
    # (linspace with 2 steps jumps from sigma 14.6 to 0.03: too ill-conditioned in f32 for 1e-5)
    case(C, "steps_2", {**SD, "timestep_spacing": "trailing"}, steps=2),
    case(C, "steps_3_leading", {**SD, "timestep_spacing": "leading"}, steps=3),
    case(C, "steps_4", {**LINEAR, "timestep_spacing": "trailing"}, steps=4),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_trailing_7", {**SD, "use_karras_sigmas": True, "timestep_spacing": "trailing"}, steps=7),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True}, steps=12),
    case(C, "beta", {**SD, "use_beta_sigmas": True}),
    case(C, "beta_v", {**LINEAR, "use_beta_sigmas": True, "prediction_type": "v_prediction"}, steps=6),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=25),
    case(C, "from_euler_config_sigma_range", {**SD, "use_exponential_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
         source_class="EulerDiscreteScheduler"),
    case(C, "from_euler_config_karras_range", {**SD, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
         source_class="EulerDiscreteScheduler"),
    # diffusers' from_config drops the source's default-valued fields (`_use_default_values`),
    # so the shared fields are named explicitly.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, source_class="DDIMScheduler"),
    # diffusers' per-call `step(..., order=k)`.
    case(C, "step_order_2", SD, steps=12, step_kwargs={"order": 2}),
    case(C, "step_order_1", SD, steps=9, step_kwargs={"order": 1}),
    case(C, "from_ddim_config_defaults", {**SD, "steps_offset": 1}, source_class="DDIMScheduler"),
]
